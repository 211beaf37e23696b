"""Throughput, memory and quality measurements; each script writes its results as tables."""
