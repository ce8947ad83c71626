"""Benchmarks (`python bench/pipeline.py`, ...) and the reliability suite (`bench.reliability`)."""
