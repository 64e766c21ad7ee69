"""Benchmarks: they print numbers, they are not timed tests."""
