"""Benchmarks: see run.py."""
