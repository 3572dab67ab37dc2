"""Orbax checkpoints of a training run: ``<workdir>/checkpoints/<step>/{state, meta}``.

``state`` holds the arrays (step, parameters, BatchNorm statistics, optimizer state); ``meta`` is
JSON: the model, dataset and every training-defining config field, the epoch and the validation
accuracy. The latest ``keep`` checkpoints and the best by validation accuracy are kept. Everything
else of a run (EDE schedule position, RNG keys, data order) is a pure function of ``step`` and the
config, so restoring ``state`` resumes a run exactly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

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
        "cpu_devices",
        "steps_per_call",
        "unroll_steps",
        "xla_flags",
    }
)


# Training fields added after checkpoints were first written: a checkpoint without one was trained
# with this value.
FIELDS_ADDED_LATER = {"augment": "default", "crop_padding": 4, "normalization": "dataset"}


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


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another model/config."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "checkpoints")


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


def open_manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager keeping the latest ``keep`` steps and the best by ``val_accuracy``."""
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(n=max(keep, 1)),
            pp.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1, keep_checkpoints_without_metrics=False),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m["val_accuracy"],
        best_mode="max",
        read_only=read_only,
        create=not read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=("state", "meta"))


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, meta: Mapping[str, Any], val_accuracy: float | None
) -> None:
    """Save ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``; blocks until written."""
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
    path = checkpoint_dir(workdir)
    if not os.path.isdir(path):
        raise CheckpointError(f"no checkpoint directory {path} (is {workdir!r} the workdir of a run?)")
    manager = open_manager(workdir, read_only=True)
    step = manager.best_step() if which == "best" else None
    if step is None:  # "latest", or no checkpoint has a validation accuracy (validation_size=0)
        step = manager.latest_step()
    if step is None:
        raise CheckpointError(f"no checkpoint found in {path}")
    return step


def read_meta(workdir: str, step: int) -> dict[str, Any]:
    """The JSON metadata saved with ``step``; ``CheckpointError`` when missing or unreadable."""
    manager = open_manager(workdir, read_only=True)
    try:
        return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {checkpoint_dir(workdir)}/{step} metadata is unreadable "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e


def restore_state(workdir: str, step: int, abstract_state: Any) -> Any:
    """Restore the arrays of ``step`` into the structure, shapes and shardings of ``abstract_state``."""
    manager = open_manager(workdir, read_only=True)
    try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"checkpoint {checkpoint_dir(workdir)}/{step} cannot be restored into this model "
            f"({type(e).__name__}: {first[:300]})"
        ) from e
    return restored.state
