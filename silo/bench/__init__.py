"""Benchmarks: scripts that print numbers (``python -m silo.bench --help``)."""
