"""Benchmarks for numbanorm: ``python -m benchmarks.bench --help``."""
