"""Timing helper shared by the benchmarks."""

import collections
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


def pipelined_seconds(fn: Callable[[], Any], steps: int, max_in_flight: int = 2) -> float:
    """Mean wall time per call of ``steps`` calls dispatched ahead of the device, as a training loop
    runs them (the host enqueues call n+1 while the device runs call n), at most ``max_in_flight``
    unfinished calls at a time (as ``trainer.MAX_STEPS_IN_FLIGHT``), blocking on the last result."""
    jax.block_until_ready(fn())
    t = time.perf_counter()
    pending: collections.deque = collections.deque()
    for _ in range(steps):
        pending.append(fn())
        if len(pending) > max_in_flight:
            jax.block_until_ready(pending.popleft())
    jax.block_until_ready(list(pending))
    return (time.perf_counter() - t) / max(steps, 1)
