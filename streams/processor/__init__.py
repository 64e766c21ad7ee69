"""The worker's processing machinery apart from its logic: fault classes and supervision,
validation at ingest, health, lag. The pure logic stays in ``streams.pipeline``."""
