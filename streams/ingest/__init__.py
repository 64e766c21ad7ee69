"""OTLP ingest: any agent, in any language, reports GenAI spans and logs over OTLP/HTTP.

``mapping`` is the one span → step mapping (shared with the in-process span processor),
``otlp`` decodes requests, ``steps`` maps them statelessly to StepEvents, ``seq`` numbers them,
``sink`` produces them, ``server`` serves ``governor ingest``.
"""
