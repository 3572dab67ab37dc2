"""Orbax checkpoints of a training run: ``<workdir>/checkpoints/<step>/{state, meta}``.

``state`` holds the arrays (step, parameters, BatchNorm statistics, optimizer state); ``meta`` is
JSON: the model, dataset and every training-defining config field, the epoch, the validation
accuracy and ``checksums`` (``{tree path: BLAKE2b-128 of dtype, shape and bytes}`` of every array of
``state``, verified on restore). A step counts only when Orbax finalized it (``complete_steps``).
The latest ``keep`` checkpoints and the best by validation accuracy are kept. Everything else of a
run (EDE schedule position, RNG keys, data order) is a pure function of ``step`` and the config, so
restoring ``state`` resumes a run exactly. Nothing is read through pickle or eval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from irnet_jax import mesh as mesh_lib
from irnet_jax.errors import UserError

# Config fields that may change between a run and its resumption: they do not alter the result.
OPERATIONAL_FIELDS = frozenset(
    {
        "data_dir",
        "download",
        "log_every_steps",
        "save_every_epochs",
        "keep_checkpoints",
        "resume_dir",
        "eval_only",
        "eval_checkpoint",
        "eval_batch_size",
        "num_train_steps",
        "fusion_barriers",
        "binary_conv_products",
        "train_ynn_fusions",
        "cpu_devices",
        "steps_per_call",
        "unroll_steps",
        "xla_flags",
    }
)


# Training fields added after checkpoints were first written: a checkpoint without one was trained
# with this value.
FIELDS_ADDED_LATER = {
    "augment": "default",
    "crop_padding": 4,
    "normalization": "dataset",
    "residual_frac_bits": 0,
    "integer_first_layer": False,
}


class _QuietOrbax(logging.Filter):
    """Drops orbax's INFO chatter (several lines per save) and its warnings that a manager opened
    read-only (to restore) is read-only, from the ``absl`` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and "read only" not in record.getMessage().replace("_", " ")


def quiet_orbax_logs() -> None:
    """Install ``_QuietOrbax`` on the ``absl`` logger (once)."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in absl_logger.filters):
        absl_logger.addFilter(_QuietOrbax())


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model/config."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint's files cannot be read, or its arrays do not match the checksums recorded at save."""


# Orbax writes a step into a temporary folder and renames it to ``<step>`` when every item and this
# file are written: a folder without it (or without an item) is not a checkpoint.
ORBAX_METADATA_FILE = "_CHECKPOINT_METADATA"
ITEMS = ("state", "meta")


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


def complete_steps(workdir: str) -> list[int]:
    """The steps of ``workdir`` that Orbax finalized, oldest first (temporary folders of an interrupted
    save and stray folders are not steps)."""
    root = checkpoint_dir(workdir)
    if not os.path.isdir(root):
        return []
    needed = (ORBAX_METADATA_FILE, *ITEMS)
    return sorted(
        int(name)
        for name in os.listdir(root)
        if name.isdigit() and all(os.path.exists(os.path.join(root, name, f)) for f in needed)
    )


def require_checkpoints(workdir: str) -> list[int]:
    """``complete_steps(workdir)``; ``CheckpointError`` naming the folder when there is none."""
    path = checkpoint_dir(workdir)
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint directory {path} (is {workdir!r} the workdir of a run?)")
    steps = complete_steps(workdir)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {path} (found: {sorted(os.listdir(path))})")
    return steps


def array_digest(array: Any) -> str:
    """BLAKE2b-128 of an array's dtype, shape and bytes (a replicated ``jax.Array``: its local copy)."""
    host = np.ascontiguousarray(mesh_lib.local_copy(array))
    digest = hashlib.blake2b(f"{host.dtype.str}{host.shape}".encode(), digest_size=16)
    digest.update(host.tobytes())
    return digest.hexdigest()


def state_checksums(state: Any) -> dict[str, str]:
    """``{tree path: array_digest}`` of every array of ``state``: recorded in ``meta`` at save."""
    return {jax.tree_util.keystr(path): array_digest(a) for path, a in jax.tree_util.tree_leaves_with_path(state)}


def verify_checksums(state: Any, recorded: Mapping[str, str], where: str) -> None:
    """``DamagedCheckpoint`` naming the first array of ``state`` whose digest differs from ``recorded``."""
    actual = state_checksums(state)
    if set(actual) != set(recorded):
        raise DamagedCheckpoint(f"checkpoint {where} holds other arrays than its recorded checksums list")
    for name, digest in actual.items():
        if recorded[name] != digest:
            raise DamagedCheckpoint(f"checkpoint {where}: array {name} does not match its recorded checksum")


def set_aside(workdir: str, step: int) -> str:
    """Move the unreadable step out of ``checkpoints/`` (to ``checkpoints_unreadable/<step>-<time>``), so
    the run can save that step again; nothing is deleted. Returns the new path."""
    target = os.path.join(os.path.abspath(workdir), "checkpoints_unreadable", f"{step}-{int(time.time())}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(os.path.join(checkpoint_dir(workdir), str(step)), target)
    return target


def training_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config fields that define the training run (all but ``OPERATIONAL_FIELDS``), JSON-ready."""
    d = json.loads(config.to_json())
    return {k: v for k, v in sorted(d.items()) if k not in OPERATIONAL_FIELDS}


def check_compatible(saved: Mapping[str, Any], config: ml_collections.ConfigDict, where: str) -> None:
    """Raise ``CheckpointError`` naming every training field where ``saved`` and ``config`` differ."""
    current = training_fields(config)
    saved = {**{k: v for k, v in FIELDS_ADDED_LATER.items() if k in current}, **saved}
    keys = sorted(set(saved) | set(current))
    diff = [
        f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs config {current.get(k, '<absent>')!r}"
        for k in keys
        if saved.get(k, "<absent>") != current.get(k, "<absent>")
    ]
    if diff:
        raise CheckpointError(
            f"checkpoint in {where} was trained with another config ({'; '.join(diff)}); "
            f"resume with the same config or start a new workdir"
        )


def open_manager(
    workdir: str, keep: int = 3, read_only: bool = False, track_best: bool = True
) -> ocp.CheckpointManager:
    """A CheckpointManager keeping the latest ``keep`` steps and (``track_best``: a run with a
    validation split) the best by ``val_accuracy``."""
    latest = pp.LatestN(n=max(keep, 1))
    best = pp.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1, keep_checkpoints_without_metrics=False)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=pp.AnyPreservationPolicy([latest, best] if track_best else [latest]),
        best_fn=(lambda m: m["val_accuracy"]) if track_best else None,
        best_mode="max",
        read_only=read_only,
        create=not read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "meta"))


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, meta: Mapping[str, Any], val_accuracy: float | None
) -> None:
    """Save ``state`` (a pytree of arrays) and ``meta`` (JSON, plus the arrays' ``checksums``) at
    ``step``; blocks until written."""
    meta = {**meta, "checksums": state_checksums(state)}
    metrics = None if val_accuracy is None else {"val_accuracy": float(val_accuracy)}
    manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))),
        metrics=metrics,
        force=True,
    )
    manager.wait_until_finished()


def find_step(workdir: str, which: str = "latest") -> int:
    """The ``latest`` or ``best`` (validation accuracy) saved step in ``workdir``; ``best`` is the latest
    when no checkpoint has a validation accuracy (a run without a validation split)."""
    if which not in ("latest", "best"):
        raise ValueError(f"eval_checkpoint must be 'latest' or 'best', got {which!r}")
    steps = require_checkpoints(workdir)
    best = open_manager(workdir, read_only=True).best_step() if which == "best" else None
    # "latest", or no checkpoint has a validation accuracy (validation_size=0)
    return best if best in steps else steps[-1]


def read_meta(workdir: str, step: int) -> dict[str, Any]:
    """The JSON metadata saved with ``step``; ``CheckpointError`` when missing or unreadable."""
    manager = open_manager(workdir, read_only=True)
    try:
        return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds for a damaged file
        raise DamagedCheckpoint(
            f"checkpoint {checkpoint_dir(workdir)}/{step} metadata is unreadable "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def restore_state(workdir: str, step: int, abstract_state: Any, checksums: Mapping[str, str] | None = None) -> Any:
    """Restore the arrays of ``step`` into the structure, shapes and shardings of ``abstract_state``;
    with ``checksums`` (``meta["checksums"]``; absent in checkpoints written before they were recorded)
    every array is verified against them. ``DamagedCheckpoint`` when unreadable or not matching."""
    manager = open_manager(workdir, read_only=True)
    where = f"{checkpoint_dir(workdir)}/{step}"
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else ""
        raise DamagedCheckpoint(
            f"checkpoint {where} cannot be restored into this model ({type(e).__name__}: {first[:300]})"
        ) from e
    if checksums is not None:
        verify_checksums(restored.state, checksums, where)
    return restored.state
