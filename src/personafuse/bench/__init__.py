"""Benchmarks: decode throughput, TTFT parts, persona switching, memory, training step time; ratios vs base."""

from personafuse.bench.config import DECODE_MODES, BenchConfig
from personafuse.bench.runner import run_bench

__all__ = ["DECODE_MODES", "BenchConfig", "run_bench"]
