"""Timing helper shared by the benchmarks."""

import statistics
import time
from typing import Any, Callable

import jax


def median_seconds(fn: Callable[[], Any], steps: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` (blocked until its result is ready) over ``steps`` calls after
    ``warmup`` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pipelined_seconds(fn: Callable[[], Any], steps: int) -> float:
    """Mean wall time per call of ``steps`` calls dispatched back to back, blocking only on the last
    result (as a training loop runs: the host enqueues step n+1 while the device runs step n)."""
    jax.block_until_ready(fn())
    t = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / max(steps, 1)
