"""Governor: governance and operations for fleets of AI agents, as a Kafka stream processor."""

__version__ = "0.1.0"
