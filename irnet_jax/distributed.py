"""Several JAX processes (one per host) working on one run: ``initialize`` before anything else of JAX.

Each process holds the whole (small) dataset in host memory and on its own devices, and feeds only
its own shard of each global batch: the batch indices are a global array of which each process
builds its local part (``mesh.put_batch``), and every image gather runs on the device that holds
the shard. Only process 0 writes logs, TensorBoard, ``config.json`` and ``summary.json``; Orbax
writes each checkpoint once (process 0 writes the replicated arrays), and a checkpoint saved by N
processes restores under any number of processes (the arrays are replicated, the mesh is rebuilt).

A process that dies stops the others: JAX's coordination service misses its heartbeats for
``heartbeat_timeout_seconds`` and ends every process with an error naming the lost task (no hang);
the run then resumes from its last checkpoint (``--config.resume_dir=auto``).
"""

from __future__ import annotations

import jax

DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 100


def initialize(
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS,
) -> None:
    """``jax.distributed.initialize`` with the values given (``""``/``0``/``-1``: JAX detects them from
    the cluster: TPU pod slice, SLURM, Open MPI, Kubernetes). CPU collectives (only CPU devices use
    them) go through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address or None,
        num_processes=num_processes if num_processes > 0 else None,
        process_id=process_id if process_id >= 0 else None,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
