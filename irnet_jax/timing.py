"""Timing helpers of the benchmarks, and the bounded dispatch window they share with the training loop."""

import collections
import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

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


# The host dispatches at most this many steps ahead of the device; 2 still hide the host's latency.
# Unbounded run-ahead fills XLA:CPU's per-device queue of 32 computations, and with several CPU devices
# a launch blocked on that queue (holding one of the client's 2 threads while the other waits on an
# execution) deadlocked the step's all-reduces (BENCHMARKS.md).
MAX_IN_FLIGHT = 2


class DispatchWindow:
    """At most ``limit`` dispatched, unfinished results: ``add`` blocks on the oldest beyond that."""

    def __init__(self, limit: int = MAX_IN_FLIGHT):
        self.limit = limit
        self._pending: collections.deque = collections.deque()

    def add(self, result: Any) -> None:
        """Track ``result`` (not a donated buffer: it must stay readable until it is waited on)."""
        self._pending.append(result)
        if len(self._pending) > self.limit:
            jax.block_until_ready(self._pending.popleft())

    def drain(self) -> None:
        """Wait for every tracked result."""
        jax.block_until_ready(list(self._pending))
        self._pending.clear()


def pipelined_seconds(fn: Callable[[], Any], steps: int) -> float:
    """Mean wall time per call of ``steps`` calls dispatched ahead of the device through a
    ``DispatchWindow``, as the training loop runs them (the host enqueues call n+1 while the device
    runs call n), blocking on the last result."""
    jax.block_until_ready(fn())
    t = time.perf_counter()
    window = DispatchWindow()
    for _ in range(steps):
        window.add(fn())
    window.drain()
    return (time.perf_counter() - t) / max(steps, 1)


@dataclasses.dataclass
class TrainClock:
    """Wall seconds and steps of training, without compilation (the first call of each size) and evaluations."""

    seconds: float = 0.0
    steps: int = 0
    _since: float | None = None
    _from_step: int = 0

    def start(self, step: int) -> None:
        self._since, self._from_step = time.time(), step

    def stop(self, step: int) -> None:
        if self._since is not None:
            self.seconds += time.time() - self._since
            self.steps += step - self._from_step
            self._since = None

    def images_per_second(self, batch_size: int) -> float | None:
        return self.steps * batch_size / self.seconds if self.seconds else None
