"""Benchmarks: each prints a ratio against a named peer."""
