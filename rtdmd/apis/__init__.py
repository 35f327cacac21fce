"""High-level runs: multi-stage pipelines, sweeps, export, benchmarks, stage evaluation.

Nothing below ``apis`` imports it; it may import everything else.
"""
