"""Benchmark scripts: each prints a table (medians of repeats). Run as ``python -m evals.bench.<name>``."""
