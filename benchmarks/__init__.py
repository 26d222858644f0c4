"""Benchmarks of opens2s (run as modules from the repository root, e.g. `python -m benchmarks.streaming`)."""
