"""PII detection with presidio-analyzer: the scanner the worker (and optionally the client) runs."""
