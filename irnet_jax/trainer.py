"""Training loop: ``train_and_evaluate(config, workdir)``, callable from ``train.py`` or a notebook.

Data parallelism: one ``data`` mesh axis over every device (of every host). Parameters, optimizer
state and the uint8 dataset are replicated; each step's batch indices are sharded over ``data``, so
each device gathers, augments and runs its slice, and ``jax.jit`` (GSPMD) inserts the gradient
all-reduce. BatchNorm statistics are global-batch ones (the mean over the sharded batch axis is
a cross-device reduction). This is what the card's "pmapped step" asks for, written the way JAX
recommends now that ``pmap`` runs on ``jit(shard_map)``.

Everything that varies along a run is a function of the integer ``step``: the data order
(``data.epoch_permutation(seed, epoch)``), the augmentation key (``fold_in(seed, step)``), the learning
rate (optax schedule of the optimizer's step count) and the EDE ``(k, t)``, fed to the step as
arrays. So a checkpoint of (step, params, batch_stats, opt_state) resumes a run exactly.
"""

import dataclasses
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from irnet_jax import binarization as bz
from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib
from irnet_jax import encoding
from irnet_jax import models
from irnet_jax.metric_writers import MetricWriter
from irnet_jax.summary import format_summary, summarize
from irnet_jax.timing import DispatchWindow

Array = jax.Array


class _QuietOrbax(logging.Filter):
    """Drops orbax's INFO chatter (several lines per save) and its warnings that a manager opened
    read-only (to restore) is read-only, from the ``absl`` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and "read only" not in record.getMessage().replace("_", " ")


def quiet_orbax_logs() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in absl_logger.filters):
        absl_logger.addFilter(_QuietOrbax())


class TrainState(NamedTuple):
    """Everything a checkpoint holds. ``params``/``batch_stats`` are ``nnx.State`` pytrees."""

    step: Array  # int32 scalar
    params: Any
    batch_stats: Any
    opt_state: Any


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    accuracy: clu_metrics.Average.from_output("accuracy")


# --------------------------------------------------------------------------------------- set-up


def compute_dtype(config: ml_collections.ConfigDict):
    """bfloat16 when ``half_precision`` (the original's ``--half``), else float32."""
    return jnp.bfloat16 if config.half_precision else jnp.float32


# Model options read from config fields of the same name (the rest of ``models.Quantization`` is derived).
QUANTIZATION_FIELDS = tuple(f.name for f in dataclasses.fields(models.Quantization)
                            if f.name not in ("dtype", "materialize_residuals"))


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """``(H, W, C)`` the model sees: the dataset's, with ``C`` multiplied by the input encoding's planes."""
    h, w, c = data_lib.get_dataset_info(config.dataset).image_shape
    return h, w, encoding.encoded_channels(c, config.input_encoding, config.encoding_levels)


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    """The configured model for the configured dataset (errors list valid model/dataset names)."""
    info = data_lib.get_dataset_info(config.dataset)
    options = {name: config[name] for name in QUANTIZATION_FIELDS}
    return models.create_model(
        config.model, input_shape=model_input_shape(config), num_classes=info.num_classes, rngs=rngs,
        dtype=compute_dtype(config), materialize_residuals=use_fusion_barriers(config),
        **options, **config.model_kwargs.to_dict(),
    )


AUTO_ON_OFF = ("auto", "on", "off")


def _on_or_auto_on_cpu(config: ml_collections.ConfigDict, field: str) -> bool:
    """An ``AUTO_ON_OFF`` field: "on", or "auto" on the CPU backend."""
    value = config[field]
    if value not in AUTO_ON_OFF:
        raise ValueError(f"{field} must be one of {list(AUTO_ON_OFF)}, got {value!r}")
    return value == "on" or (value == "auto" and jax.default_backend() == "cpu")


def use_fusion_barriers(config: ml_collections.ConfigDict) -> bool:
    """Whether the residual stream is materialized (``fusion_barriers``: "auto" = on the CPU backend only)."""
    return _on_or_auto_on_cpu(config, "fusion_barriers")


CPU_STEPS_PER_CALL = 4
GPU_STEPS_PER_CALL = 8


def steps_per_call(config: ml_collections.ConfigDict) -> int:
    """Train steps per device call: ``config.steps_per_call``, or for -1 ("auto") 4 on the CPU backend,
    8 on GPU and 1 elsewhere (TPU: not measured yet). XLA:CPU maps a fresh temporary buffer for every
    call (ResNet-20, batch 128: 189 MiB per device, ~97,000 page faults and ~0.17 s of system CPU time
    per call); 4 steps share one (ResNet-20 trains 1.25-1.46x faster). On a GPU a small net's step is
    launch-bound (ResNet-20, batch 128, H100: ~600 kernels, 1.9 ms of kernel time in a 3.2-3.5 ms step);
    8 steps per call train it 1.45x faster, 1.6x with convolutions in the CUDA graphs (BENCHMARKS.md)."""
    if config.steps_per_call == -1:
        return {"cpu": CPU_STEPS_PER_CALL, "gpu": GPU_STEPS_PER_CALL}.get(jax.default_backend(), 1)
    if config.steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1 or -1 (auto), got {config.steps_per_call}")
    return config.steps_per_call


def use_unrolled_steps(config: ml_collections.ConfigDict) -> bool:
    """Whether ``make_multi_step`` unrolls its loop (``unroll_steps``: "auto" = on the CPU backend only,
    where XLA:CPU runs the convolutions of a loop body on a generic path about 10x slower, BENCHMARKS.md)."""
    return _on_or_auto_on_cpu(config, "unroll_steps")


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, str] | None:
    """XLA options for the train/eval steps: keep the models' optimization barriers when they are used."""
    return {"xla_disable_hlo_passes": "cse_barrier_expander"} if use_fusion_barriers(config) else None


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0 at ``num_epochs``.

    With ``lr_per_epoch`` the schedule is evaluated at the start of the current epoch (IR-Net steps
    its cosine once per epoch).
    """
    total = max(int(config.num_epochs * steps_per_epoch), 1)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    base = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup, max(total, warmup + 1), 0.0)
    if warmup == 0:
        base = optax.cosine_decay_schedule(config.learning_rate, total)
    if not config.lr_per_epoch:
        return base
    return lambda step: base((step // steps_per_epoch) * steps_per_epoch)


OPTIMIZERS = ("sgd", "adam", "adamw")


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum (IR-Net; weight decay added to the gradient as in PyTorch), Adam (same L2), or AdamW."""
    if config.optimizer == "sgd":
        opt = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    elif config.optimizer == "adam":
        opt = optax.adam(schedule)
    elif config.optimizer == "adamw":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {list(OPTIMIZERS)}")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def estimator_params(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int) -> bz.EstimatorParams:
    """The estimator's ``(k, t)`` at ``step`` (host-side float32 scalars, fed to the jitted step)."""
    total = int(config.num_epochs * steps_per_epoch)
    p = bz.schedule_progress(step, steps_per_epoch, total, config.ede_per_epoch)
    return bz.estimator_schedule(config.estimator, p, config.t_min, config.t_max)


def configure_cpu_devices(count: int) -> bool:
    """Split the CPU platform into ``count`` JAX devices (``count <= 0``: keep JAX's default of one).

    XLA:CPU runs each elementwise kernel on one thread; with one device per core, the data-parallel
    step gives every core its own shard's kernels. JAX accepts this only before it starts its
    backends (``train.py`` and the benchmark call it first thing). Returns whether the CPU platform
    now has ``count`` devices (False when JAX had already started with another count).
    """
    if count <= 0:
        return True
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # backends already initialized
        return len(jax.devices("cpu")) == count
    return True


def xla_flag_names(flags: str) -> dict[str, str]:
    """``{"--name": "--name=value"}`` for each flag of an XLA flag string (the last one of a name wins)."""
    return {flag.split("=", 1)[0]: flag for flag in flags.split()}


def configure_xla_flags(extra: str) -> bool:
    """Append ``extra`` (e.g. ``"--xla_gpu_enable_command_buffer=+CONVOLUTION"``) to ``$XLA_FLAGS``;
    a flag whose name ``$XLA_FLAGS`` already sets keeps the environment's value (see
    ``xla_flags_overridden``), so the config's defaults never override a user's environment.

    XLA reads ``$XLA_FLAGS`` once, when JAX starts its backends: ``train.py`` and the benchmark call
    this first thing (an unknown flag then stops the process with XLA's own message). Returns whether
    the flags take effect (False when JAX had already started; nothing is changed then).
    """
    env = os.environ.get("XLA_FLAGS", "")
    env_names = xla_flag_names(env)
    new = [flag for name, flag in xla_flag_names(extra).items() if name not in env_names]
    if not new:  # nothing to add (also when train.py applied them before the trainer is called)
        return True
    if _backends_started():
        return False
    os.environ["XLA_FLAGS"] = " ".join([env.strip(), *new]).strip()
    return True


def xla_flags_overridden(extra: str) -> list[tuple[str, str]]:
    """(flag of ``extra``, flag of ``$XLA_FLAGS``) for each name the environment sets to another value."""
    env = xla_flag_names(os.environ.get("XLA_FLAGS", ""))
    return [(flag, env[name]) for name, flag in xla_flag_names(extra).items() if name in env and env[name] != flag]


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API gone: assume started, never claim flags took effect
        return True


# XLA flags of ``xla_flags="auto"``: convolutions join the CUDA graphs XLA records ("command buffers";
# its defaults leave them out, so each of ResNet-20's ~60 convolutions per step split the graphs). With
# 8 steps per call, ResNet-20 at batch 128 on an H100 trained 1.10x faster (1.24x dispatched back to back,
# BENCHMARKS.md). A GPU-only flag: the other backends ignore it.
AUTO_XLA_FLAGS = "--xla_gpu_enable_command_buffer=+CONVOLUTION"


def xla_flags(config: ml_collections.ConfigDict) -> str:
    """The XLA flags a run adds to ``$XLA_FLAGS``: ``config.xla_flags``, ``AUTO_XLA_FLAGS`` for "auto"."""
    return AUTO_XLA_FLAGS if config.xla_flags == "auto" else config.xla_flags


def configure_runtime(config: ml_collections.ConfigDict) -> list[str]:
    """Apply the fields that must be set before JAX starts (``xla_flags``, ``cpu_devices``); returns a
    warning for each one that could not be applied: JAX had already started, or (for flags the config
    names, not "auto"'s) ``$XLA_FLAGS`` sets another value."""
    flags, explicit = xla_flags(config), config.xla_flags != "auto"
    warnings = [f"xla_flags: {mine} not applied, $XLA_FLAGS sets {theirs}"
                for mine, theirs in xla_flags_overridden(flags) if explicit]
    if not configure_xla_flags(flags) and explicit:
        warnings.append(f"xla_flags={config.xla_flags!r} not applied: JAX had already started (set them "
                        f"before JAX runs anything, e.g. via train.py, or in $XLA_FLAGS)")
    if not configure_cpu_devices(config.cpu_devices) and jax.default_backend() == "cpu":
        warnings.append(f"cpu_devices={config.cpu_devices} not applied: JAX had already started with "
                        f"{len(jax.devices('cpu'))} CPU device(s) (set it before JAX runs anything, e.g. via "
                        f"train.py)")
    return warnings


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh, axis ``data``, over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def put_replicated(array: np.ndarray, mesh: Mesh) -> Array:
    """A host array (identical on every process) as a global array replicated on every device."""
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def put_batch(array: np.ndarray, mesh: Mesh, axis: int = 0) -> Array:
    """A global host array (identical on every process) sharded along ``axis`` over ``data``."""
    sharding = NamedSharding(mesh, P(*(None,) * axis, "data"))
    return jax.make_array_from_callback(array.shape, sharding, lambda idx: array[idx])


def init_train_state(config: ml_collections.ConfigDict, tx: optax.GradientTransformation, mesh: Mesh | None = None
                     ) -> tuple[nnx.GraphDef, TrainState]:
    """Initialise the model with ``config.seed`` and the optimizer; returns (graphdef, state), the
    state replicated over ``mesh`` when given."""
    model = build_model(config, nnx.Rngs(params=config.seed))
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    state = TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))
    if mesh is not None:
        state = jax.device_put(state, NamedSharding(mesh, P()))
    return graphdef, state


# --------------------------------------------------------------------------------- step functions


def cross_entropy(logits: Array, labels: Array, num_classes: int, label_smoothing: float = 0.0) -> Array:
    """Mean softmax cross-entropy in float32. ``logits: [B, K]``, ``labels: [B] int``."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) if label_smoothing \
        else jax.nn.one_hot(labels, num_classes)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _train_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                   mesh: Mesh) -> Callable:
    """The pure (not jitted) train step of ``make_train_step``."""
    info = data_lib.get_dataset_info(config.dataset)
    dtype = compute_dtype(config)
    batch_sharding = NamedSharding(mesh, P("data"))

    def step(state: TrainState, images: Array, labels: Array, batch_idx: Array, ede: bz.EstimatorParams,
             key: Array) -> tuple[TrainState, TrainMetrics]:
        x = jax.lax.with_sharding_constraint(images[batch_idx], batch_sharding)
        y = labels[batch_idx]
        x = data_lib.preprocess(x, info, jax.random.fold_in(key, state.step), dtype, config.input_encoding,
                                config.encoding_levels, config.augment, config.crop_padding)

        def loss_fn(params, batch_stats):
            model = nnx.merge(graphdef, params, batch_stats, copy=True)
            logits = model(x, ede)
            loss = cross_entropy(logits, y, info.num_classes, config.label_smoothing)
            return loss, (logits, nnx.state(model, nnx.BatchStat))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
        return new_state, TrainMetrics.single_from_model_output(loss=loss, accuracy=accuracy)

    return step


def _jit_step(fn: Callable, config: ml_collections.ConfigDict, mesh: Mesh, batch_spec: P) -> Callable:
    """``fn(state, images, labels, batch_idx, ede, key)`` jitted: state donated, ``batch_idx`` sharded
    as ``batch_spec``, everything else replicated."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(fn, in_shardings=(replicated, replicated, replicated, NamedSharding(mesh, batch_spec),
                                     replicated, replicated),
                   out_shardings=(replicated, replicated), donate_argnums=(0,),
                   compiler_options=compiler_options(config))


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    mesh: Mesh) -> Callable:
    """``step(state, images, labels, batch_idx, ede, key) -> (state, TrainMetrics)``, jitted.

    ``images: [N, H, W, C] uint8`` and ``labels: [N]`` are the device-resident training set,
    ``batch_idx: [B] int32`` (sharded over ``data``) selects the batch, ``ede`` holds (k, t).
    """
    return _jit_step(_train_step_fn(graphdef, tx, config, mesh), config, mesh, P("data"))


def make_multi_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
                    mesh: Mesh) -> Callable:
    """``steps(state, images, labels, batch_idx, ede, key) -> (state, TrainMetrics)``, jitted: ``S``
    consecutive train steps in one call, ``S = batch_idx.shape[0]``.

    ``batch_idx: [S, B] int32`` (``B`` sharded over ``data``), ``ede``: ``EstimatorParams`` of ``[S]``
    arrays (step ``s`` uses row ``s``). The same computation as S calls of ``make_train_step``'s step
    (augmentation keys, learning rates and EDE follow ``state.step``); the metrics cover all S steps
    (their ``Average`` totals and counts add). The host then dispatches once per S steps and per-call
    costs are shared: the host's dispatch (small nets on GPU/TPU), XLA:CPU's fresh temporary memory
    (``steps_per_call``). The first call of a new S (an epoch's shorter tail) compiles. S = 1 runs the
    step as is; S > 1 a ``lax.scan`` over the steps, unrolled per ``use_unrolled_steps`` (a longer
    program to compile). Each distinct S compiles once.
    """
    step = _train_step_fn(graphdef, tx, config, mesh)
    unroll = use_unrolled_steps(config)

    def steps(state: TrainState, images: Array, labels: Array, batch_idx: Array, ede: bz.EstimatorParams,
              key: Array) -> tuple[TrainState, TrainMetrics]:
        if batch_idx.shape[0] == 1:
            return step(state, images, labels, batch_idx[0], jax.tree.map(lambda a: a[0], ede), key)

        def body(state, per_step):
            idx, ede_s = per_step
            return step(state, images, labels, idx, ede_s, key)

        state, metrics = jax.lax.scan(body, state, (batch_idx, ede), unroll=unroll)
        return state, jax.tree.map(lambda a: jnp.sum(a, axis=0), metrics)

    return _jit_step(steps, config, mesh, P(None, "data"))


def stack_estimator_params(params: list[bz.EstimatorParams]) -> bz.EstimatorParams:
    """Per-step ``(k, t)`` scalars stacked into ``[S]`` float32 arrays (host-side), for ``make_multi_step``."""
    return bz.EstimatorParams(*(np.asarray(field, np.float32) for field in zip(*params)))


def eval_graphdef(graphdef: nnx.GraphDef, state: TrainState) -> nnx.GraphDef:
    """The model's graph in evaluation mode (BatchNorm running statistics)."""
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    return nnx.graphdef(nnx.view(model, use_running_average=True))


def make_eval_step(graphdef_eval: nnx.GraphDef, config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
    """``eval_step(params, batch_stats, images, labels, idx, mask) -> [loss_sum, correct, count]``.

    ``idx: [B]`` indexes the device-resident split (padded to a full batch), ``mask: [B]`` is 1 for
    real examples. The model runs in eval mode (BatchNorm running statistics).
    """
    info = data_lib.get_dataset_info(config.dataset)
    dtype = compute_dtype(config)
    batch_sharding = NamedSharding(mesh, P("data"))

    def eval_step(params, batch_stats, images, labels, idx, mask):
        x = jax.lax.with_sharding_constraint(images[idx], batch_sharding)
        x = data_lib.preprocess(x, info, None, dtype, config.input_encoding, config.encoding_levels)
        y = labels[idx]
        logits = nnx.merge(graphdef_eval, params, batch_stats, copy=True)(x).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return jnp.stack([jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask)])

    replicated = NamedSharding(mesh, P())
    return jax.jit(eval_step, in_shardings=(replicated,) * 4 + (batch_sharding,) * 2, out_shardings=replicated,
                   compiler_options=compiler_options(config))


def evaluate(eval_step: Callable, state: TrainState, split: tuple[Array, Array], batch_size: int, mesh: Mesh
             ) -> dict[str, float]:
    """Loss and accuracy of ``state`` on a device-resident ``(images, labels)`` split."""
    images, labels = split
    n = int(labels.shape[0])
    totals = np.zeros(3)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0).astype(np.int32)
        totals += np.asarray(eval_step(state.params, state.batch_stats, images, labels,
                                       put_batch(idx, mesh), put_batch(mask, mesh)))
    return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}


# ---------------------------------------------------------------------------------------- the run


@dataclasses.dataclass
class _Preemption:
    """Set by SIGTERM (TPU preemption): the loop saves a checkpoint and returns."""

    requested: bool = False

    def install(self) -> Callable[[], None]:
        try:
            previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))
        except ValueError:  # not the main thread (e.g. some notebook kernels): no preemption handling
            return lambda: None
        return lambda: signal.signal(signal.SIGTERM, previous)


def _validate(config: ml_collections.ConfigDict, n_devices: int) -> None:
    data_lib.resolve_augment(config.augment, data_lib.get_dataset_info(config.dataset))
    if config.crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {config.crop_padding}")
    if config.model not in models.list_models():
        raise ValueError(f"unknown model {config.model!r}; valid: {models.list_models()}")
    if config.batch_size % n_devices or config.eval_batch_size % n_devices:
        raise ValueError(f"batch_size={config.batch_size} and eval_batch_size={config.eval_batch_size} must be "
                         f"multiples of the device count {n_devices}")
    use_unrolled_steps(config)
    steps_per_call(config)
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {list(OPTIMIZERS)}")
    bz.get_estimator(config.estimator)
    if config.eval_checkpoint not in ("best", "latest"):
        raise ValueError(f"eval_checkpoint must be 'best' or 'latest', got {config.eval_checkpoint!r}")


def restore_train_state(config: ml_collections.ConfigDict, source_dir: str, which: str, abstract: TrainState,
                        mesh: Mesh) -> tuple[TrainState, dict]:
    """The ``which`` ("latest"/"best") checkpoint of ``source_dir`` replicated over ``mesh``, and its
    metadata; ``CheckpointError`` when missing, unreadable or trained with another config."""
    step = ckpt.find_step(source_dir, which)
    meta = ckpt.read_meta(source_dir, step)
    ckpt.check_compatible(meta.get("config", {}), config, source_dir)
    replicated = NamedSharding(mesh, P())
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
    return ckpt.restore_state(source_dir, step, target), meta


def load_splits(config: ml_collections.ConfigDict) -> dict[str, data_lib.Split]:
    """The configured dataset's train/validation/test splits; ``train_size > 0`` keeps only that many
    training examples (the first ones of the train split: short experiments)."""
    splits = data_lib.load_dataset(config.dataset, config.data_dir, config.validation_size, config.seed,
                                   config.download)
    if config.train_size > 0:
        train = splits["train"]
        splits["train"] = data_lib.Split(train.images[: config.train_size], train.labels[: config.train_size])
    return splits


def _device_split(split: data_lib.Split, mesh: Mesh) -> tuple[Array, Array]:
    return put_replicated(split.images, mesh), put_replicated(split.labels, mesh)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (or only evaluate, with ``config.eval_only``); returns the summary.

    Writes ``<workdir>/checkpoints``, ``metrics.jsonl``, ``train.log``, ``tensorboard/`` and
    ``summary.json`` (accuracies as fractions in [0, 1]).
    """
    t_start = time.time()
    quiet_orbax_logs()
    runtime_warnings = configure_runtime(config)
    mesh = make_mesh()
    _validate(config, mesh.size)

    if config.eval_only:
        return _evaluate_only(config, workdir, mesh)

    workdir = os.path.abspath(workdir)
    resume_dir = os.path.abspath(config.resume_dir) if config.resume_dir else ""
    if not resume_dir and os.path.isdir(ckpt.checkpoint_dir(workdir)) and os.listdir(ckpt.checkpoint_dir(workdir)):
        raise ckpt.CheckpointError(
            f"workdir {workdir} already holds checkpoints; resume with --config.resume_dir={workdir} "
            f"or choose a new workdir (nothing was changed)")
    if resume_dir:
        ckpt.find_step(resume_dir, "latest")  # fail before loading data when there is nothing to resume

    splits = load_splits(config)
    train_images, train_labels = _device_split(splits["train"], mesh)
    n_train = len(splits["train"].labels)
    steps_per_epoch = n_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {n_train} training examples")
    total_steps = int(config.num_epochs * steps_per_epoch)
    if config.num_train_steps > 0:
        total_steps = min(total_steps, config.num_train_steps)

    schedule = learning_rate_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, schedule)
    graphdef, state = init_train_state(config, tx, mesh)
    meta_best = 0.0
    if resume_dir:
        state, meta = restore_train_state(config, resume_dir, "latest", state, mesh)
        meta_best = float(meta.get("best_val_accuracy", 0.0))
    graphdef_eval = eval_graphdef(graphdef, state)

    writer = MetricWriter(workdir)
    writer.log(f"devices: {mesh.size} x {jax.devices()[0].platform} ({jax.process_count()} process(es)); "
               f"train {n_train}, validation {len(splits['validation'].labels)}, test {len(splits['test'].labels)}")
    for warning in runtime_warnings:
        writer.log(warning)
    writer.log(format_summary(summarize(build_model(config, nnx.Rngs(0)), model_input_shape(config)),
                              f"{config.model} on {config.dataset}"))
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
        f.write(config.to_json(indent=2))

    train_steps = make_multi_step(graphdef, tx, config, mesh)
    call_steps = steps_per_call(config)
    eval_step = make_eval_step(graphdef_eval, config, mesh)
    val_split = _device_split(splits["validation"], mesh)
    test_split = _device_split(splits["test"], mesh)
    base_key = jax.random.key(config.seed)
    manager = ckpt.open_manager(workdir, config.keep_checkpoints)
    preemption = _Preemption()
    uninstall = preemption.install()

    step = int(state.step)
    timed_from_step = None  # the step after the first call: compilation is excluded from throughput
    best_val = meta_best
    last_val: float | None = None
    train_seconds, train_steps_timed = 0.0, 0
    accumulated: TrainMetrics | None = None
    # Jitted: one dispatch per step instead of clu's several eager ops (host latency on GPU/TPU).
    merge_metrics, compute_metrics = jax.jit(TrainMetrics.merge), jax.jit(TrainMetrics.compute)
    in_flight = DispatchWindow()  # bounded run-ahead: unbounded, 2 CPU devices deadlocked (timing.py)
    t_log, step_log = time.time(), step
    preempted = False

    def save(step: int, val_accuracy: float | None) -> None:
        meta = {"config": ckpt.training_fields(config), "model": config.model, "dataset": config.dataset,
                "step": step, "epoch": step / steps_per_epoch, "val_accuracy": val_accuracy,
                "best_val_accuracy": best_val}
        ckpt.save(manager, step, state, meta, val_accuracy)

    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            order = data_lib.epoch_permutation(n_train, config.seed, epoch)
            t_epoch = time.time()
            epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
            while step < epoch_end and not preemption.requested:
                # S steps per call; a call never crosses an epoch's end (its checkpoint and evaluation).
                n_steps = min(call_steps, epoch_end - step)
                first = step % steps_per_epoch
                idx = put_batch(order[first * config.batch_size:(first + n_steps) * config.batch_size]
                                .reshape(n_steps, config.batch_size), mesh, axis=1)
                ede = stack_estimator_params([estimator_params(config, s, steps_per_epoch)
                                              for s in range(step, step + n_steps)])
                state, m = train_steps(state, train_images, train_labels, idx, ede, base_key)
                accumulated = m if accumulated is None else merge_metrics(accumulated, m)
                previous, step = step, step + n_steps
                in_flight.add(m)  # the metrics, not the state: that is donated to the next step
                if timed_from_step is None:
                    jax.block_until_ready(state.step)
                    timed_from_step = step
                    t_epoch, t_log, step_log = time.time(), time.time(), step
                if step // config.log_every_steps > previous // config.log_every_steps or step == total_steps:
                    values = {k: float(v) for k, v in compute_metrics(accumulated).items()}
                    accumulated = None
                    now = time.time()
                    rate = (step - step_log) / max(now - t_log, 1e-9)
                    t_log, step_log = now, step
                    lr = float(schedule(step - 1))
                    t_w, k_w = float(ede.t_w[-1]), float(ede.k_w[-1])
                    writer.write(step, {"train_loss": values["loss"], "train_accuracy": values["accuracy"],
                                        "learning_rate": lr, "ede_t": t_w, "ede_k": k_w,
                                        "steps_per_second": rate, "images_per_second": rate * config.batch_size})
                    eta = (total_steps - step) / max(rate, 1e-9)
                    writer.log(f"epoch {step / steps_per_epoch:7.2f}  step {step:7d}/{total_steps}  "
                               f"loss {values['loss']:.4f}  acc {values['accuracy']:.4f}  lr {lr:.3e}  "
                               f"t {t_w:.3e}  k {k_w:.3e}  {rate:6.2f} steps/s  "
                               f"{rate * config.batch_size:8.1f} img/s  ETA {_hms(eta)}")
            jax.block_until_ready(state.step)
            timed_steps = step - max(timed_from_step or step, epoch * steps_per_epoch)
            if timed_steps > 0:
                train_seconds += time.time() - t_epoch
                train_steps_timed += timed_steps
            if preemption.requested:
                preempted = True
                writer.log(f"SIGTERM at step {step}: saving a checkpoint and exiting")
                save(step, None)
                break
            epoch_done = step % steps_per_epoch == 0
            if epoch_done or step == total_steps:
                val = evaluate(eval_step, state, val_split, config.eval_batch_size, mesh)
                last_val = val["accuracy"]
                best_val = max(best_val, last_val)
                ep = step // steps_per_epoch
                writer.write(step, {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "epoch": ep})
                writer.log(f"epoch {ep:4d} (step {step}): val loss {val['loss']:.4f}  val acc {val['accuracy']:.4f}  "
                           f"best {best_val:.4f}")
                if step == total_steps or (epoch_done and ep % max(config.save_every_epochs, 1) == 0):
                    save(step, last_val)
    finally:
        uninstall()

    summary: dict[str, Any] = {
        "model": config.model, "dataset": config.dataset, "steps": step,
        "epochs_completed": step / steps_per_epoch, "preempted": preempted,
        "best_val_accuracy": best_val, "final_val_accuracy": last_val,
        "train_images_per_second": train_steps_timed * config.batch_size / train_seconds if train_seconds else None,
        "device_count": mesh.size, "backend": jax.default_backend(),
    }
    if not preempted:
        test = evaluate(eval_step, state, test_split, config.eval_batch_size, mesh)
        summary.update(final_test_accuracy=test["accuracy"], final_test_loss=test["loss"])
        best_step = manager.best_step()
        if best_step is not None and best_step != step:
            best_state = ckpt.restore_state(workdir, best_step, jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state))
            summary["best_checkpoint_step"] = best_step
            summary["best_checkpoint_test_accuracy"] = evaluate(
                eval_step, best_state, test_split, config.eval_batch_size, mesh)["accuracy"]
        else:
            summary["best_checkpoint_step"] = step
            summary["best_checkpoint_test_accuracy"] = test["accuracy"]
        writer.write(step, {"test_loss": test["loss"], "test_accuracy": test["accuracy"]})
        writer.log(f"test: loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f} (final model); "
                   f"{summary['best_checkpoint_test_accuracy']:.4f} (best-validation checkpoint, step "
                   f"{summary['best_checkpoint_step']})")
    summary["wall_seconds"] = time.time() - t_start
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
    manager.close()
    writer.close()
    return summary


def _evaluate_only(config: ml_collections.ConfigDict, workdir: str, mesh: Mesh) -> dict[str, Any]:
    """Load the ``eval_checkpoint`` of ``resume_dir`` (or ``workdir``), report validation and test
    loss/accuracy. Writes nothing."""
    quiet_orbax_logs()
    source = os.path.abspath(config.resume_dir or workdir)
    ckpt.find_step(source, config.eval_checkpoint)
    splits = load_splits(config)
    steps_per_epoch = len(splits["train"].labels) // config.batch_size
    tx = make_optimizer(config, learning_rate_schedule(config, max(steps_per_epoch, 1)))
    graphdef, abstract = init_train_state(config, tx)
    state, meta = restore_train_state(config, source, config.eval_checkpoint, abstract, mesh)
    eval_step = make_eval_step(eval_graphdef(graphdef, state), config, mesh)
    val = evaluate(eval_step, state, _device_split(splits["validation"], mesh), config.eval_batch_size, mesh)
    test = evaluate(eval_step, state, _device_split(splits["test"], mesh), config.eval_batch_size, mesh)
    result = {"checkpoint_step": int(state.step), "recorded_val_accuracy": meta.get("val_accuracy"),
              "val_accuracy": val["accuracy"], "val_loss": val["loss"],
              "test_accuracy": test["accuracy"], "test_loss": test["loss"]}
    logging.info("evaluate-only %s step %d: %s", source, result["checkpoint_step"], json.dumps(result))
    print(json.dumps(result))
    return result


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
