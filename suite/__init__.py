"""Benchmark suite and reproducibility harness for communication-efficient distributed SGD."""

__version__ = "0.1.0"
