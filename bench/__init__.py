"""Benchmarks of `make bench` (not tests: nothing here asserts on time)."""
