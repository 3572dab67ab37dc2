"""The model built from a config, the train state every caller creates the same way, and loading a trained model.

``create_train_state(config, mesh, steps_per_epoch)`` is the one set-up of (model, optimizer, state)
used by the trainer, the benchmark, the export and the tests; ``load_model(workdir, which)`` rebuilds a
trained run's model from its ``config.json`` and checkpoint (export, evaluation).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib
from irnet_jax import encoding, models, optim, runtime
from irnet_jax import mesh as mesh_lib

Array = jax.Array


class TrainState(NamedTuple):
    """Everything a checkpoint holds. ``params``/``batch_stats`` are ``nnx.State`` pytrees."""

    step: Array  # int32 scalar
    params: Any
    batch_stats: Any
    opt_state: Any


class TrainSetup(NamedTuple):
    """What ``create_train_state`` returns: the model's graph, its state, and the optimizer."""

    graphdef: nnx.GraphDef
    state: TrainState
    tx: optax.GradientTransformation
    learning_rate: optax.Schedule


def compute_dtype(config: ml_collections.ConfigDict):
    """bfloat16 when ``half_precision`` (the original's ``--half``), else float32."""
    return jnp.bfloat16 if config.half_precision else jnp.float32


# Model options read from config fields of the same name (the rest of ``models.Quantization`` is derived).
QUANTIZATION_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(models.Quantization)
    if f.name not in ("dtype", "materialize_residuals", "binary_conv_products", "pixel_mean", "pixel_std")
)


def normalizes_itself(config: ml_collections.ConfigDict) -> bool:
    """Whether the model takes pixels and normalizes them itself: a fixed-point residual stream or an
    integer first layer, whose eval mode is an integer conv of the pixels."""
    return bool(config.get("residual_frac_bits", 0) or config.get("integer_first_layer", False))


def input_normalization(config: ml_collections.ConfigDict) -> str:
    """What the data pipeline hands the model: ``"pixels"`` (0..255 floats, ``normalizes_itself``) or
    ``config.normalization``."""
    return data_lib.PIXELS if normalizes_itself(config) else config.normalization


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """``(H, W, C)`` the model sees: the dataset's, with ``C`` multiplied by the input encoding's planes."""
    h, w, c = data_lib.get_dataset_info(config.dataset).image_shape
    return h, w, encoding.encoded_channels(c, config.input_encoding, config.encoding_levels)


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs, dtype: Any = None) -> nnx.Module:
    """The configured model for the configured dataset (errors list valid model/dataset names), with
    the backend policy's speed options (``runtime``: the same parameters and numbers); computing in
    ``dtype`` if given (e.g. float64 under ``jax.enable_x64``), else in ``compute_dtype(config)``."""
    info = data_lib.get_dataset_info(config.dataset)
    options = {name: config[name] for name in QUANTIZATION_FIELDS}
    if normalizes_itself(config):
        options["pixel_mean"], options["pixel_std"] = data_lib.normalization_stats(info, config.normalization)
    return models.create_model(
        config.model,
        input_shape=model_input_shape(config),
        num_classes=info.num_classes,
        rngs=rngs,
        dtype=dtype or compute_dtype(config),
        materialize_residuals=runtime.use_fusion_barriers(config),
        binary_conv_products=runtime.binary_conv_products(config),
        **options,
        **config.model_kwargs.to_dict(),
    )


def create_train_state(
    config: ml_collections.ConfigDict, mesh: Mesh | None = None, steps_per_epoch: int = 1
) -> TrainSetup:
    """Initialise the model with ``config.seed`` and the optimizer of a run with ``steps_per_epoch``
    steps per epoch (it sets the schedule's length, not the state's shapes); the state is replicated
    over ``mesh`` when given."""
    optimizer = optim.create_optimizer(config, max(steps_per_epoch, 1))
    model = build_model(config, nnx.Rngs(params=config.seed))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, optimizer.tx.init(params))
    if mesh is not None:
        state = jax.device_put(state, mesh_lib.replicated(mesh))
    return TrainSetup(graphdef, state, optimizer.tx, optimizer.learning_rate)


def restore_train_state(
    config: ml_collections.ConfigDict,
    source_dir: str,
    which: str,
    abstract: TrainState,
    mesh: Mesh,
    step: int | None = None,
) -> tuple[TrainState, dict]:
    """The ``which`` ("latest"/"best") checkpoint of ``source_dir`` (or the given ``step``) replicated
    over ``mesh``, verified against its recorded checksums, and its metadata. ``CheckpointError`` when
    missing or trained with another config, ``DamagedCheckpoint`` when unreadable or damaged."""
    step = ckpt.find_step(source_dir, which) if step is None else step
    meta = ckpt.read_meta(source_dir, step)
    ckpt.check_compatible(meta.get("config", {}), config, source_dir)
    sharding = mesh_lib.replicated(mesh)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    return ckpt.restore_state(source_dir, step, target, meta.get("checksums")), meta


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a training run wrote to ``<workdir>/config.json`` (JSON: no code is executed)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"{workdir!r} has no config.json: pass the workdir of a training run")
    with open(path, encoding="utf-8") as f:
        fields = json.load(f)
    # A run written before a training field existed was trained with that field's old value.
    return ml_collections.ConfigDict({**ckpt.FIELDS_ADDED_LATER, **fields})


def load_model(workdir: str, which: str = "best") -> tuple[nnx.Module, ml_collections.ConfigDict, int]:
    """The model of a trained run's workdir (its ``config.json`` and ``best``/``latest`` checkpoint),
    rebuilt in float32 (the same parameters; bfloat16 only changes the compute dtype) and eval mode;
    returns ``(model, config, step)``."""
    ckpt.quiet_orbax_logs()
    trained = read_run_config(workdir)
    config = trained.copy_and_resolve_references()
    config.half_precision = False
    config.fusion_barriers = "off"
    mesh = mesh_lib.make_mesh(jax.devices()[:1])
    setup = create_train_state(config, mesh)
    state, _ = restore_train_state(trained, workdir, which, setup.state, mesh)
    model = nnx.merge(setup.graphdef, state.params, state.batch_stats)
    model.eval()
    return model, config, int(state.step)


def eval_graphdef(config: ml_collections.ConfigDict) -> nnx.GraphDef:
    """The graph of the configured model in evaluation mode (BatchNorm running statistics), for the eval
    step; it takes the train state's ``params`` and ``batch_stats``."""
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(params=config.seed)))
    return nnx.graphdef(nnx.view(model, use_running_average=True))
