"""``python -m streams.cli worker|ingest|console ...`` (the worker process and tests use it)."""

from streams.cli import main

main()
