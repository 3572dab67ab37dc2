"""The device mesh and data placement of data-parallel training.

One ``data`` mesh axis over every device (of every host). Parameters, optimizer state and the uint8
dataset are replicated; each step's batch indices are sharded over ``data``, so each device gathers,
augments and runs its slice, and ``jax.jit`` (GSPMD) inserts the gradient all-reduce. BatchNorm
statistics are global-batch ones (the mean over the sharded batch axis is a cross-device reduction).
This is what ``pmap`` + ``lax.pmean`` gave, written the way JAX recommends now that ``pmap`` runs on
``jit(shard_map)``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irnet_jax import data as data_lib

Array = jax.Array


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh, axis ``data``, over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of an array held whole by every device of ``mesh``."""
    return NamedSharding(mesh, P())


def put_replicated(array: np.ndarray, mesh: Mesh) -> Array:
    """A host array (identical on every process) as a global array replicated on every device."""
    return jax.make_array_from_callback(array.shape, replicated(mesh), lambda idx: array[idx])


def local_copy(array) -> np.ndarray:
    """A replicated (global) array's value on this process: its first local shard, as NumPy."""
    if isinstance(array, jax.Array):
        array = array.addressable_shards[0].data
    return np.asarray(array)


def put_batch(array: np.ndarray, mesh: Mesh, axis: int = 0) -> Array:
    """A global host array (identical on every process) sharded along ``axis`` over ``data``."""
    sharding = NamedSharding(mesh, P(*(None,) * axis, "data"))
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def put_split(split: data_lib.Split, mesh: Mesh) -> tuple[Array, Array]:
    """A dataset split as device-resident ``(images [N, H, W, C] uint8, labels [N])``, replicated."""
    return put_replicated(split.images, mesh), put_replicated(split.labels, mesh)
