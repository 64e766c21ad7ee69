"""Thin Faust agents: they move records between topics and call pipeline functions."""
