"""Pure functions of the pipeline: no I/O, trivial to test."""
