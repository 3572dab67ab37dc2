"""The jitted step functions of data-parallel training: train step, S train steps per call, eval step.

Each train step reads its batch by index from the device-resident uint8 training set, augments it
(key ``fold_in(key, state.step)``), runs forward and backward with the step's EDE ``(k, t)`` (array
arguments: no recompilation as they change) and applies the optimizer. The state is donated.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from clu import metrics as clu_metrics
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from irnet_jax import binarization as bz
from irnet_jax import data as data_lib
from irnet_jax import mesh as mesh_lib
from irnet_jax import models, runtime
from irnet_jax.train_state import TrainState, compute_dtype, input_normalization

Array = jax.Array


@struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    accuracy: clu_metrics.Average.from_output("accuracy")


def cross_entropy(logits: Array, labels: Array, num_classes: int, label_smoothing: float = 0.0) -> Array:
    """Mean softmax cross-entropy in float32. ``logits: [B, K]``, ``labels: [B] int``."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _train_step_fn(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, mesh: Mesh
) -> Callable:
    """The pure (not jitted) train step of ``make_train_step``."""
    info = data_lib.get_dataset_info(config.dataset)
    dtype = compute_dtype(config)
    batch_sharding = NamedSharding(mesh, P("data"))

    def step(
        state: TrainState, images: Array, labels: Array, batch_idx: Array, ede: bz.EstimatorParams, key: Array
    ) -> tuple[TrainState, TrainMetrics]:
        x = jax.lax.with_sharding_constraint(images[batch_idx], batch_sharding)
        y = labels[batch_idx]
        x = data_lib.preprocess(
            x,
            info,
            jax.random.fold_in(key, state.step),
            dtype,
            config.input_encoding,
            config.encoding_levels,
            config.augment,
            config.crop_padding,
            input_normalization(config),
        )

        def loss_fn(params, batch_stats):
            model = nnx.merge(graphdef, params, batch_stats, copy=True)
            logits = model(x, ede)
            loss = cross_entropy(logits, y, info.num_classes, config.label_smoothing)
            return loss, (logits, nnx.state(model, nnx.BatchStat))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
        return new_state, TrainMetrics.single_from_model_output(loss=loss, accuracy=accuracy)

    return step


def _jit_step(fn: Callable, config: ml_collections.ConfigDict, mesh: Mesh, batch_spec: P) -> Callable:
    """``fn(state, images, labels, batch_idx, ede, key)`` jitted: state donated, ``batch_idx`` sharded
    as ``batch_spec``, everything else replicated."""
    rep = mesh_lib.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=(rep, rep, rep, NamedSharding(mesh, batch_spec), rep, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
        compiler_options=runtime.compiler_options(config, "train"),
    )


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, mesh: Mesh
) -> Callable:
    """``step(state, images, labels, batch_idx, ede, key) -> (state, TrainMetrics)``, jitted.

    ``images: [N, H, W, C] uint8`` and ``labels: [N]`` are the device-resident training set,
    ``batch_idx: [B] int32`` (sharded over ``data``) selects the batch, ``ede`` holds (k, t).
    """
    return _jit_step(_train_step_fn(graphdef, tx, config, mesh), config, mesh, P("data"))


def make_multi_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, config: ml_collections.ConfigDict, mesh: Mesh
) -> Callable:
    """``steps(state, images, labels, batch_idx, ede, key) -> (state, TrainMetrics)``, jitted: ``S``
    consecutive train steps in one call, ``S = batch_idx.shape[0]``.

    ``batch_idx: [S, B] int32`` (``B`` sharded over ``data``), ``ede``: ``EstimatorParams`` of ``[S]``
    arrays (step ``s`` uses row ``s``). The same computation as S calls of ``make_train_step``'s step
    (augmentation keys, learning rates and EDE follow ``state.step``); the metrics cover all S steps
    (their ``Average`` totals and counts add). The host then dispatches once per S steps and per-call
    costs are shared (``runtime.steps_per_call``). S = 1 runs the step as is; S > 1 a ``lax.scan`` over
    the steps, unrolled per ``runtime.use_unrolled_steps`` (a longer program to compile). Each distinct
    S compiles once (an epoch's shorter tail call too).
    """
    step = _train_step_fn(graphdef, tx, config, mesh)
    unroll = runtime.use_unrolled_steps(config)

    def steps(
        state: TrainState, images: Array, labels: Array, batch_idx: Array, ede: bz.EstimatorParams, key: Array
    ) -> tuple[TrainState, TrainMetrics]:
        if batch_idx.shape[0] == 1:
            return step(state, images, labels, batch_idx[0], jax.tree.map(lambda a: a[0], ede), key)

        def body(state, per_step):
            idx, ede_s = per_step
            return step(state, images, labels, idx, ede_s, key)

        state, metrics = jax.lax.scan(body, state, (batch_idx, ede), unroll=unroll)
        return state, jax.tree.map(lambda a: jnp.sum(a, axis=0), metrics)

    return _jit_step(steps, config, mesh, P(None, "data"))


@dataclasses.dataclass(frozen=True)
class EvalStep:
    """``run(params, batch_stats, integers, images, labels, idx, mask) -> [loss_sum, correct, count]``
    (jitted) and ``integers(params, batch_stats)``: what ``run`` takes as ``integers``, the model's
    eval-mode fixed-point integers (``models.eval_integers``, derived on the host, replicated) or None."""

    run: Callable
    integers: Callable


def make_eval_step(graphdef_eval: nnx.GraphDef, config: ml_collections.ConfigDict, mesh: Mesh) -> EvalStep:
    """The eval step: ``idx: [B]`` indexes the device-resident split (padded to a full batch), ``mask:
    [B]`` is 1 for real examples. The model runs in eval mode (BatchNorm running statistics)."""
    info = data_lib.get_dataset_info(config.dataset)
    dtype = compute_dtype(config)
    batch_sharding = NamedSharding(mesh, P("data"))

    def eval_step(params, batch_stats, integers, images, labels, idx, mask):
        x = jax.lax.with_sharding_constraint(images[idx], batch_sharding)
        x = data_lib.preprocess(
            x,
            info,
            None,
            dtype,
            config.input_encoding,
            config.encoding_levels,
            normalization=input_normalization(config),
        )
        y = labels[idx]
        model = nnx.merge(graphdef_eval, params, batch_stats, copy=True)
        logits = models.eval_logits(model, x, integers).astype(jnp.float32)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return jnp.stack([jnp.sum(nll * mask), jnp.sum(correct * mask), jnp.sum(mask)])

    def integers(params, batch_stats):
        ints = models.eval_integers(nnx.merge(graphdef_eval, params, batch_stats, copy=True))
        return None if ints is None else jax.tree.map(lambda v: mesh_lib.put_replicated(v, mesh), ints)

    rep = mesh_lib.replicated(mesh)
    run = jax.jit(
        eval_step,
        in_shardings=(rep,) * 5 + (batch_sharding,) * 2,
        out_shardings=rep,
        compiler_options=runtime.compiler_options(config, "eval"),
    )
    return EvalStep(run, integers)


def evaluate(
    eval_step: EvalStep, state: TrainState, split: tuple[Array, Array], batch_size: int, mesh: Mesh
) -> dict[str, float]:
    """Loss and accuracy of ``state`` on a device-resident ``(images, labels)`` split."""
    images, labels = split
    n = int(labels.shape[0])
    integers = eval_step.integers(state.params, state.batch_stats)
    totals = np.zeros(3)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0).astype(np.int32)
        totals += np.asarray(
            eval_step.run(
                state.params,
                state.batch_stats,
                integers,
                images,
                labels,
                mesh_lib.put_batch(idx, mesh),
                mesh_lib.put_batch(mask, mesh),
            )
        )
    return {"loss": totals[0] / totals[2], "accuracy": totals[1] / totals[2]}
