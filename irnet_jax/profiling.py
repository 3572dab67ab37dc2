"""Profiler traces of a jitted step and a summary of the kernels they record.

``record_trace`` runs ``steps`` calls back to back under ``jax.profiler.trace`` (a TensorBoard
profile plus ``perfetto_trace.json.gz``); ``kernel_summary`` reads the Perfetto file and counts the
kernel events on the accelerator's timelines (processes named ``/device:...``: one event per kernel),
or, on a CPU, on XLA's worker threads (where one kernel may run as several parallel tasks, and the
Eigen convolutions record no event). Kernel time well below the step time means a launch- or
host-bound step.
"""

import collections
import glob
import gzip
import json
import os
import re
from collections.abc import Callable
from typing import Any

import jax

from irnet_jax.timing import pipelined_seconds

_CPU_WORKER_THREAD = "tf_XLAEigen"
_CPU_BOOKKEEPING = ("ThunkExecutor", "Rendezvous", "Wait", "end:")


def record_trace(fn: Callable[[], Any], steps: int, log_dir: str) -> str:
    """Trace ``steps`` back-to-back calls of ``fn`` into ``log_dir``; returns the Perfetto trace's path."""
    pattern = os.path.join(log_dir, "**", "perfetto_trace.json.gz")
    before = set(glob.glob(pattern, recursive=True))
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
        pipelined_seconds(fn, steps)
    new = sorted(set(glob.glob(pattern, recursive=True)) - before, key=os.path.getmtime)
    if not new:
        raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {log_dir}")
    return new[-1]


def kernel_summary(trace_path: str, steps: int, steps_per_call: int = 1) -> dict[str, Any]:
    """Kernel events per step, their summed time per step (ms, all devices together), the
    costliest kernel names and kinds (a name less its ``.N`` suffix: ``multiply_add_fusion.408`` is a
    ``multiply_add_fusion``), for a trace written by ``record_trace(fn, steps, ...)``: it holds
    ``steps + 1`` calls (``pipelined_seconds`` completes one call before the back-to-back ones) of
    ``steps_per_call`` train steps each.

    Kernels are the events of the device's stream timelines (threads named ``Stream ...`` of the
    ``/device:...`` processes; every device timeline when none is so named), or on a CPU those of
    XLA's worker threads. ``trace_timelines`` gives events and ms per step of every timeline read.
    """
    with gzip.open(trace_path, "rt", encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    device = {key: name for key, name in threads.items() if processes.get(key[0], "").startswith("/device:")}
    if device:
        streams = {key for key, name in device.items() if name.startswith("Stream")}
        kernel_threads = streams or set(device)
        timelines = device
    else:
        kernel_threads = {key for key, name in threads.items() if name.startswith(_CPU_WORKER_THREAD)}
        timelines = {key: threads[key] for key in kernel_threads}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e and not e["name"].startswith(_CPU_BOOKKEEPING)]
    traced_steps = (steps + 1) * steps_per_call
    per_timeline: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    by_name: collections.Counter = collections.Counter()
    by_kind: collections.Counter = collections.Counter()
    n_kernels, kernel_us = 0, 0.0
    for e in complete:
        key = (e["pid"], e["tid"])
        if key in timelines:
            totals = per_timeline[f"{processes.get(key[0], key[0])} {timelines[key]}"]
            totals[0] += 1 / traced_steps
            totals[1] += e["dur"] / 1e3 / traced_steps
        if key in kernel_threads:
            n_kernels += 1
            kernel_us += e["dur"]
            by_name[e["name"]] += e["dur"]
            by_kind[re.sub(r"\.\d+$", "", e["name"])] += e["dur"]
    return {
        "trace_path": trace_path,
        "trace_kernel_events_per_step": n_kernels / traced_steps,
        "trace_kernel_ms_per_step": kernel_us / 1e3 / traced_steps,
        "trace_top_kernels": [(name, round(us / 1e3 / traced_steps, 3)) for name, us in by_name.most_common(8)],
        "trace_top_kernel_kinds": [(kind, round(us / 1e3 / traced_steps, 3)) for kind, us in by_kind.most_common(12)],
        "trace_timelines": {name: [round(n, 1), round(ms, 3)] for name, (n, ms) in sorted(per_timeline.items())},
    }
