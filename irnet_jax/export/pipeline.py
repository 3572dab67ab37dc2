"""``export_checkpoint``: a training run's workdir -> a verified export folder (what the command runs)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib
from irnet_jax.errors import ConfigError
from irnet_jax.export.engine import benchmark_engine, engine_predictions, model_predictions
from irnet_jax.export.files import write_export
from irnet_jax.export.folding import fold
from irnet_jax.train_state import load_model

# Golden vectors are written per image and layer (text files): a few images make a test bench.
MAX_GOLDEN_IMAGES = 1000


def check_arguments(out: str, num_images: int, verify: int, bench_batch: int) -> None:
    """``ConfigError`` for an impossible count or an ``out`` that is a file or a non-empty folder."""
    if not 0 <= num_images <= MAX_GOLDEN_IMAGES:
        raise ConfigError(f"num_images={num_images} is not allowed: must be in [0, {MAX_GOLDEN_IMAGES}]")
    if verify < 1:
        raise ConfigError(f"verify={verify} is not allowed: must be >= 1 (test images checked)")
    if bench_batch < 0:
        raise ConfigError(f"bench_batch={bench_batch} is not allowed: must be >= 0 (0: no timing)")
    if not out:
        raise ConfigError("out is empty: name a new folder for the export")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f"out {os.path.abspath(out)} already exists and is not an empty folder: choose a new one")


def checkpoint_bytes(workdir: str, step: int) -> int:
    """Bytes on disk of one checkpoint step of a run."""
    root = os.path.join(ckpt.checkpoint_dir(workdir), str(step))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def export_checkpoint(
    checkpoint: str,
    out: str,
    which: str = "best",
    num_images: int = 4,
    verify: int = 1000,
    data_dir: str = "",
    bench_batch: int = 0,
) -> dict[str, Any]:
    """Fold the ``which`` checkpoint of the run in ``checkpoint``, check the packed engine's predictions
    against the float model's on the first ``verify`` test images, and write the export folder to
    ``out`` with golden vectors of the first ``num_images`` test images; returns the manifest."""
    check_arguments(out, num_images, verify, bench_batch)
    model, config, step = load_model(checkpoint, which)
    folded = fold(model, config)
    test = data_lib.load_tfds_split(config.dataset, "test", data_dir or config.data_dir)
    n = min(verify, len(test.labels))
    engine = engine_predictions(folded, test.images[:n])
    reference = model_predictions(model, config, test.images[:n])
    extra: dict[str, Any] = {
        "verification": {
            "images": n,
            "engine_equals_model": float(np.mean(engine == reference)),
            "engine_test_accuracy": float(np.mean(engine == test.labels[:n])),
            "model_test_accuracy": float(np.mean(reference == test.labels[:n])),
        }
    }
    if bench_batch > 0:
        extra["throughput"] = benchmark_engine(folded, model, config, test.images[:bench_batch])
    source = {"checkpoint": os.path.abspath(checkpoint), "step": step, "which": which}
    return write_export(
        folded,
        out,
        test.images[:num_images],
        test.labels[:num_images],
        source,
        extra,
        {"float_checkpoint_step_dir": checkpoint_bytes(checkpoint, step)},
    )
