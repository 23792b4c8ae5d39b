"""Benchmarks of the pack, run as modules from the repository root."""
