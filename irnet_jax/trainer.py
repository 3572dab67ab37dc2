"""The training loop: ``train_and_evaluate(config, workdir)`` and ``evaluate_checkpoint(config, source)``,
callable from ``train.py`` or a notebook.

Everything that varies along a run is a function of the integer ``step``: the data order
(``data.epoch_permutation(seed, epoch)``), the augmentation key (``fold_in(seed, step)``), the learning
rate (optax schedule of the optimizer's step count) and the EDE ``(k, t)``, fed to the step as arrays.
So a checkpoint of (step, params, batch_stats, opt_state) resumes a run exactly. The loop runs
``runtime.steps_per_call`` steps per device call; a call never crosses an epoch's end, and every
periodic action (log, evaluate, save) is decided by ``itstime`` on call boundaries.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib
from irnet_jax import mesh as mesh_lib
from irnet_jax import optim, runtime, validation
from irnet_jax.errors import ConfigError, Diverged
from irnet_jax.metric_writers import MetricWriter
from irnet_jax.preemption import Preemption, handle_sigterm
from irnet_jax.steps import EvalStep, TrainMetrics, evaluate, make_eval_step, make_multi_step
from irnet_jax.summary import format_summary, summarize
from irnet_jax.timing import DispatchWindow, TrainClock
from irnet_jax.train_state import (
    TrainState,
    build_model,
    create_train_state,
    eval_graphdef,
    model_input_shape,
    restore_train_state,
)

Array = jax.Array

# ------------------------------------------------------------------------------------ set-up


def load_splits(config: ml_collections.ConfigDict) -> dict[str, data_lib.Split]:
    """The configured dataset's train/validation/test splits; ``train_size > 0`` keeps only that many
    training examples (the first ones of the train split: short experiments)."""
    try:
        splits = data_lib.load_dataset(
            config.dataset, config.data_dir, config.validation_size, config.seed, config.download
        )
    except ValueError as e:  # validation_size not smaller than the train split
        raise ConfigError(str(e)) from None
    if config.train_size > 0:
        train = splits["train"]
        splits["train"] = data_lib.Split(train.images[: config.train_size], train.labels[: config.train_size])
    return splits


def _start(config: ml_collections.ConfigDict) -> tuple[Mesh, list[str]]:
    """Apply the backend policy, build the mesh, validate the config: ``(mesh, runtime warnings)``."""
    ckpt.quiet_orbax_logs()
    warnings = runtime.configure_runtime(config)
    mesh = mesh_lib.make_mesh()
    validation.validate(config, mesh.size)
    return mesh, warnings


def _check_workdir_path(workdir: str) -> str:
    """``workdir`` as an absolute path; ``ConfigError`` when empty, a file, or not writable."""
    if not workdir:
        raise ConfigError("workdir is empty: name a directory for the run's checkpoints and logs")
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir} is a file, not a directory")
    existing = workdir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"workdir {workdir} cannot be written ({existing} is not writable)")
    return workdir


def _check_workdirs(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """``(workdir, resume_dir)`` as absolute paths (``resume_dir`` "" for a fresh run), before anything
    is loaded or written. ``resume_dir="auto"`` resumes ``workdir`` when it holds a complete checkpoint
    and starts fresh otherwise (a preemption loop runs one command unchanged). Refused: a fresh run into
    a workdir holding checkpoints, a resume from a directory without one, and a resume of one run into
    the workdir of another (two runs' checkpoints and logs would mix)."""
    workdir = _check_workdir_path(workdir)
    here = ckpt.complete_steps(workdir)
    if config.resume_dir == "auto":
        resume_dir = workdir if here else ""
    else:
        resume_dir = os.path.abspath(config.resume_dir) if config.resume_dir else ""
    if not resume_dir and here:
        raise ckpt.CheckpointError(
            f"workdir {workdir} already holds checkpoints (steps {here}); resume with "
            f"--config.resume_dir={workdir} (or auto) or choose a new workdir (nothing was changed)"
        )
    if resume_dir and resume_dir != workdir and here:
        raise ckpt.CheckpointError(
            f"workdir {workdir} holds another run's checkpoints (steps {here}); resuming {resume_dir} "
            f"there would mix two runs: resume in place (--workdir={resume_dir}) or choose a new workdir"
        )
    if resume_dir:
        ckpt.require_checkpoints(resume_dir)
    return workdir, resume_dir


def _restore_newest_intact(
    config: ml_collections.ConfigDict, resume_dir: str, abstract: TrainState, mesh: Mesh
) -> tuple[TrainState, dict, list[str]]:
    """The newest checkpoint of ``resume_dir`` that reads back intact (its arrays match their checksums),
    its metadata, and a log line for each newer one that did not, which is moved aside
    (``ckpt.set_aside``: never deleted). ``CheckpointError`` when none is intact, or when the run was
    trained with another config."""
    skipped = []
    for step in reversed(ckpt.require_checkpoints(resume_dir)):
        try:
            state, meta = restore_train_state(config, resume_dir, "latest", abstract, mesh, step=step)
        except ckpt.DamagedCheckpoint as e:
            if jax.process_index() == 0:
                skipped.append(f"skipped checkpoint step {step}: {e}; moved to {ckpt.set_aside(resume_dir, step)}")
            continue
        return state, meta, skipped
    raise ckpt.CheckpointError(f"no intact checkpoint in {ckpt.checkpoint_dir(resume_dir)}: {'; '.join(skipped)}")


# --------------------------------------------------------------------------------- schedule


def itstime(previous: int, step: int, every: int, total: int) -> bool:
    """Whether a periodic action is due after a call that advanced the run from ``previous`` to ``step``:
    a multiple of ``every`` lies in ``(previous, step]``, or the run's last step was reached."""
    return step == total or (every > 0 and step // every > previous // every)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """How a run's ``total_steps`` divide into epochs and device calls."""

    steps_per_epoch: int
    total_steps: int
    steps_per_call: int
    batch_size: int

    def call_size(self, step: int) -> int:
        """Steps of the call starting at ``step``: ``steps_per_call``, cut at the epoch's (or run's) end."""
        epoch_end = min((step // self.steps_per_epoch + 1) * self.steps_per_epoch, self.total_steps)
        return min(self.steps_per_call, epoch_end - step)

    def batch_indices(self, order: np.ndarray, step: int, n_steps: int) -> np.ndarray:
        """``[n_steps, batch_size]`` indices of steps ``step ..`` in the epoch's permutation ``order``."""
        first = step % self.steps_per_epoch
        return order[first * self.batch_size : (first + n_steps) * self.batch_size].reshape(n_steps, -1)


def make_plan(config: ml_collections.ConfigDict, n_train: int) -> RunPlan:
    validation.check_data_sizes(config, n_train)
    steps_per_epoch = n_train // config.batch_size
    total_steps = int(config.num_epochs * steps_per_epoch)
    if config.num_train_steps > 0:
        total_steps = min(total_steps, config.num_train_steps)
    return RunPlan(steps_per_epoch, total_steps, runtime.steps_per_call(config), config.batch_size)


# ------------------------------------------------------------------------------ loop pieces


@dataclasses.dataclass
class Progress:
    """What the loop has done so far (the rest of its state is the ``TrainState``)."""

    step: int
    best_val: float | None  # None: no validation accuracy yet (or no validation split)
    last_val: float | None = None
    metrics: TrainMetrics | None = None  # accumulated since the last log line, over steps metrics_start..
    metrics_start: int = 0
    log_time: float = dataclasses.field(default_factory=time.time)
    log_step: int = 0
    clock: TrainClock = dataclasses.field(default_factory=TrainClock)
    compiled_sizes: set[int] = dataclasses.field(default_factory=set)  # the call sizes already compiled
    start_step: int = 0  # the step the run (re)started at


@dataclasses.dataclass
class Loop:
    """The fixed parts of a run: what the loop calls, reads and writes."""

    config: ml_collections.ConfigDict
    mesh: Mesh
    plan: RunPlan
    train_steps: Callable
    eval_step: EvalStep
    learning_rate: Callable[[int], Any]
    train: tuple[Array, Array]
    validation: tuple[Array, Array]
    test: tuple[Array, Array]
    key: Array
    workdir: str
    writer: MetricWriter
    manager: Any
    # Jitted: one dispatch per merge instead of clu's several eager ops (host latency on GPU/TPU).
    merge_metrics: Callable = dataclasses.field(default_factory=lambda: jax.jit(TrainMetrics.merge))
    compute_metrics: Callable = dataclasses.field(default_factory=lambda: jax.jit(TrainMetrics.compute))


def _train_call(
    loop: Loop, state: TrainState, progress: Progress, order: np.ndarray
) -> tuple[TrainState, TrainMetrics]:
    """One device call of ``plan.call_size`` steps; logs when it is time."""
    plan, step = loop.plan, progress.step
    n_steps = plan.call_size(step)
    compiles = n_steps not in progress.compiled_sizes  # the first call, and an epoch's first shorter tail
    if compiles:  # not timed: throughput excludes compilation
        jax.block_until_ready(state.step)
        progress.clock.stop(step)
    idx = mesh_lib.put_batch(plan.batch_indices(order, step, n_steps), loop.mesh, axis=1)
    ede = optim.estimator_params_of_steps(loop.config, step, n_steps, plan.steps_per_epoch)
    state, m = loop.train_steps(state, *loop.train, idx, ede, loop.key)
    if progress.metrics is None:
        progress.metrics_start = step
    progress.metrics = m if progress.metrics is None else loop.merge_metrics(progress.metrics, m)
    progress.step = step + n_steps
    if compiles:
        jax.block_until_ready(state.step)
        progress.clock.start(progress.step)
        if not progress.compiled_sizes:  # the progress line's rate, too, counts from the first call's end
            progress.log_time, progress.log_step = time.time(), progress.step
        progress.compiled_sizes.add(n_steps)
    if itstime(step, progress.step, loop.config.log_every_steps, plan.total_steps):
        _log_train(loop, progress, ede)
    return state, m


def _log_train(loop: Loop, progress: Progress, ede) -> None:
    """Write the train metrics accumulated since the last log line, and a progress line with ETA."""
    config, plan, step = loop.config, loop.plan, progress.step
    values = {k: float(v) for k, v in loop.compute_metrics(progress.metrics).items()}
    progress.metrics = None
    _stop_if_diverged(loop, values["loss"], progress.metrics_start, step)
    now = time.time()
    # No rate yet when every step since the last line was in the (untimed) first, compiling call.
    timed = step - progress.log_step
    rate = timed / max(now - progress.log_time, 1e-9) if timed > 0 else None
    progress.log_time, progress.log_step = now, step
    lr, t_w, k_w = float(loop.learning_rate(step - 1)), float(ede.t_w[-1]), float(ede.k_w[-1])
    speed = {} if rate is None else {"steps_per_second": rate, "images_per_second": rate * config.batch_size}
    loop.writer.write(
        step,
        {
            "train_loss": values["loss"],
            "train_accuracy": values["accuracy"],
            "learning_rate": lr,
            "ede_t": t_w,
            "ede_k": k_w,
            **speed,
            "epoch": step / plan.steps_per_epoch,
        },
    )
    speed_text = "(first call: no rate yet)"
    if rate is not None:
        eta = (plan.total_steps - step) / rate
        speed_text = f"{rate:6.2f} steps/s  {rate * config.batch_size:8.1f} img/s  ETA {_hms(eta)}"
    loop.writer.log(
        f"epoch {step / plan.steps_per_epoch:7.2f}  step {step:7d}/{plan.total_steps}  "
        f"loss {values['loss']:.4f}  acc {values['accuracy']:.4f}  lr {lr:.3e}  "
        f"t {t_w:.3e}  k {k_w:.3e}  {speed_text}"
    )


def _stop_if_diverged(loop: Loop, loss: float, first: int, last: int) -> None:
    """``Diverged`` when the mean train loss of steps ``(first, last]`` is NaN or infinite, naming the
    steps, the learning rate and the last good checkpoint (nothing of the diverged state is saved)."""
    if math.isfinite(loss):
        return
    good = ckpt.complete_steps(loop.workdir)
    last_good = f"step {good[-1]} in {ckpt.checkpoint_dir(loop.workdir)}" if good else "none (no checkpoint was saved)"
    raise Diverged(
        f"the train loss became {loss} in steps {first + 1}..{last} (learning rate "
        f"{float(loop.learning_rate(last - 1)):.4g}); stopped without saving; last good checkpoint: {last_good}"
    )


def _check_finite_before_saving(loop: Loop, progress: Progress) -> None:
    """The loss of the steps not yet logged must be finite before their state is saved."""
    if progress.metrics is not None:
        loss = float(loop.compute_metrics(progress.metrics)["loss"])
        _stop_if_diverged(loop, loss, progress.metrics_start, progress.step)


def _save(loop: Loop, state: TrainState, progress: Progress, val_accuracy: float | None) -> None:
    _check_finite_before_saving(loop, progress)
    meta = {
        "config": ckpt.training_fields(loop.config),
        "model": loop.config.model,
        "dataset": loop.config.dataset,
        "step": progress.step,
        "epoch": progress.step / loop.plan.steps_per_epoch,
        "val_accuracy": val_accuracy,
        "best_val_accuracy": progress.best_val,
    }
    ckpt.save(loop.manager, progress.step, state, meta, val_accuracy)


def _end_of_epoch(loop: Loop, state: TrainState, progress: Progress, previous: int) -> None:
    """Evaluate on the validation split (when there is one), log it, and save a checkpoint when one is due."""
    config, plan, step = loop.config, loop.plan, progress.step
    epoch = step // plan.steps_per_epoch
    if has_examples(loop.validation):
        val = evaluate(loop.eval_step, state, loop.validation, config.eval_batch_size, loop.mesh)
        progress.last_val = val["accuracy"]
        progress.best_val = max(progress.best_val or 0.0, progress.last_val)
        loop.writer.write(step, {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "epoch": epoch})
        loop.writer.log(
            f"epoch {epoch:4d} (step {step}): val loss {val['loss']:.4f}  val acc {val['accuracy']:.4f}  "
            f"best {progress.best_val:.4f}"
        )
    else:
        loop.writer.log(f"epoch {epoch:4d} (step {step}): no validation split (validation_size=0)")
    save_every = max(config.save_every_epochs, 1) * plan.steps_per_epoch
    if itstime(previous, step, save_every, plan.total_steps):
        _save(loop, state, progress, progress.last_val)


def has_examples(split: tuple[Array, Array]) -> bool:
    """Whether a device-resident ``(images, labels)`` split holds any example."""
    return int(split[1].shape[0]) > 0


def _run_epochs(loop: Loop, state: TrainState, progress: Progress, preemption: Preemption) -> tuple[TrainState, bool]:
    """Train until ``total_steps`` or SIGTERM; returns ``(state, preempted)``. A SIGTERM is answered after
    the call in flight: a checkpoint of that step (without evaluating), then the loop returns."""
    plan, n_train = loop.plan, int(loop.train[1].shape[0])
    in_flight = DispatchWindow()  # bounded run-ahead (timing.MAX_IN_FLIGHT)
    order, order_epoch, preempted = None, -1, preemption.requested
    while not preempted and progress.step < plan.total_steps:
        epoch = progress.step // plan.steps_per_epoch
        if epoch != order_epoch:
            order, order_epoch = data_lib.epoch_permutation(n_train, loop.config.seed, epoch), epoch
        previous = progress.step
        state, m = _train_call(loop, state, progress, order)
        in_flight.add(m)  # the metrics, not the state: that is donated to the next call
        preempted = preemption.requested
        if not preempted and itstime(previous, progress.step, plan.steps_per_epoch, plan.total_steps):
            jax.block_until_ready(state.step)
            progress.clock.stop(progress.step)
            _end_of_epoch(loop, state, progress, previous)
            progress.clock.start(progress.step)
            preempted = preemption.requested and progress.step < plan.total_steps
    jax.block_until_ready(state.step)
    progress.clock.stop(progress.step)
    if preempted and progress.step == progress.start_step:
        loop.writer.log(f"SIGTERM before training (step {progress.step}): exiting, nothing to save")
    elif preempted:
        loop.writer.log(f"SIGTERM at step {progress.step}: saving a checkpoint and exiting")
        if progress.step not in ckpt.complete_steps(loop.workdir):  # the epoch-end save may have written it
            _save(loop, state, progress, None)
    return state, preempted


def _test_summary(loop: Loop, state: TrainState, step: int) -> dict[str, Any]:
    """Test loss/accuracy of the final model and of the best-validation checkpoint."""
    config = loop.config
    test = evaluate(loop.eval_step, state, loop.test, config.eval_batch_size, loop.mesh)
    result = {"final_test_accuracy": test["accuracy"], "final_test_loss": test["loss"]}
    best_step = loop.manager.best_step()  # None when no checkpoint has a validation accuracy
    if best_step is not None and best_step != step:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
        best_state = ckpt.restore_state(loop.workdir, best_step, abstract)
        best_accuracy = evaluate(loop.eval_step, best_state, loop.test, config.eval_batch_size, loop.mesh)
        result.update(best_checkpoint_step=best_step, best_checkpoint_test_accuracy=best_accuracy["accuracy"])
    else:
        result.update(best_checkpoint_step=step, best_checkpoint_test_accuracy=test["accuracy"])
    loop.writer.write(step, {"test_loss": test["loss"], "test_accuracy": test["accuracy"]})
    loop.writer.log(
        f"test: loss {test['loss']:.4f}  accuracy {test['accuracy']:.4f} (final model); "
        f"{result['best_checkpoint_test_accuracy']:.4f} (best-validation checkpoint, step "
        f"{result['best_checkpoint_step']}{'' if has_examples(loop.validation) else ': the last, no validation split'})"
    )
    return result


def _open_writer(config, workdir, mesh, splits, warnings: list[str]) -> MetricWriter:
    """The run's metric writer, its header lines (devices, split sizes, model summary) and config.json."""
    writer = MetricWriter(workdir)
    writer.log(
        f"devices: {mesh.size} x {jax.devices()[0].platform} ({jax.process_count()} process(es)); "
        f"train {len(splits['train'].labels)}, validation {len(splits['validation'].labels)}, "
        f"test {len(splits['test'].labels)}"
    )
    for warning in warnings:
        writer.log(warning)
    model = build_model(config, nnx.Rngs(0))
    writer.log(format_summary(summarize(model, model_input_shape(config)), f"{config.model} on {config.dataset}"))
    if writer.enabled:  # process 0
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
            f.write(config.to_json(indent=2))
    return writer


# ------------------------------------------------------------------------------------ the run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config`` in ``workdir``; returns the summary (also written to ``summary.json``).

    Writes ``<workdir>/checkpoints``, ``metrics.jsonl``, ``train.log``, ``tensorboard/``, ``config.json``
    and ``summary.json`` (accuracies as fractions in [0, 1]). ``config.eval_only`` runs are
    ``evaluate_checkpoint``'s. A SIGTERM at any moment ends the run with a consistent checkpoint; a
    NaN or infinite loss raises ``Diverged`` (nothing of the diverged state is saved); a run resumed
    when it has already finished changes nothing and returns its summary.
    """
    t_start = time.time()
    if config.eval_only:
        raise ConfigError("eval_only=True: call trainer.evaluate_checkpoint(config, source) (train.py does)")
    with handle_sigterm() as preemption:
        mesh, warnings = _start(config)
        workdir, resume_dir = _check_workdirs(config, workdir)
        splits = load_splits(config)
        plan = make_plan(config, len(splits["train"].labels))
        _log_local_shards(mesh, plan)
        setup = create_train_state(config, mesh, plan.steps_per_epoch)
        state, meta, skipped = setup.state, {}, []
        if resume_dir:
            state, meta, skipped = _restore_newest_intact(config, resume_dir, setup.state, mesh)
        finished = _finished_summary(resume_dir) if int(state.step) >= plan.total_steps else None
        if finished:
            return _already_finished(resume_dir, int(state.step), skipped, finished)
        loop = _make_loop(config, mesh, plan, setup, state, splits, workdir, warnings + skipped)
        progress = Progress(step=int(state.step), best_val=meta.get("best_val_accuracy"), start_step=int(state.step))
        try:
            state, preempted = _run_epochs(loop, state, progress, preemption)
        except Diverged as e:
            loop.writer.log(f"stopped: {e}")
            loop.manager.close()
            loop.writer.close()
            raise
    summary = _summary(loop, progress, preempted, len(splits["validation"].labels))
    if not preempted:
        summary.update(_test_summary(loop, state, progress.step))
    summary["wall_seconds"] = time.time() - t_start
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        _write_curves(workdir, loop.writer)
    loop.manager.close()
    loop.writer.close()
    return summary


def _log_local_shards(mesh: Mesh, plan: RunPlan) -> None:
    """Each process (absl log, every process) states how much of each global batch it builds."""
    probe = mesh_lib.put_batch(np.zeros((1, plan.batch_size), np.int32), mesh, axis=1)
    local = sum(int(s.data.shape[1]) for s in probe.addressable_shards)
    logging.info(
        "process %d/%d: local batch shards %d of %d (%d of %d images per step)",
        jax.process_index(),
        jax.process_count(),
        len(probe.addressable_shards),
        mesh.size,
        local,
        plan.batch_size,
    )


def _make_loop(config, mesh, plan, setup, state, splits, workdir, log_lines) -> Loop:
    """The run's fixed parts; opens its writer (header lines, ``config.json``) and checkpoint manager."""
    return Loop(
        config=config,
        mesh=mesh,
        plan=plan,
        train_steps=make_multi_step(setup.graphdef, setup.tx, config, mesh),
        eval_step=make_eval_step(eval_graphdef(config), config, mesh),
        learning_rate=setup.learning_rate,
        train=mesh_lib.put_split(splits["train"], mesh),
        validation=mesh_lib.put_split(splits["validation"], mesh),
        test=mesh_lib.put_split(splits["test"], mesh),
        key=jax.random.key(config.seed),
        workdir=workdir,
        writer=_open_writer(config, workdir, mesh, splits, log_lines),
        manager=ckpt.open_manager(workdir, config.keep_checkpoints, track_best=len(splits["validation"].labels) > 0),
    )


def _summary(loop: Loop, progress: Progress, preempted: bool, validation_examples: int) -> dict[str, Any]:
    return {
        "model": loop.config.model,
        "dataset": loop.config.dataset,
        "steps": progress.step,
        "epochs_completed": progress.step / loop.plan.steps_per_epoch,
        "preempted": preempted,
        "validation_examples": validation_examples,
        "best_val_accuracy": progress.best_val,
        "final_val_accuracy": progress.last_val,
        "train_images_per_second": progress.clock.images_per_second(loop.config.batch_size),
        "train_timed_steps": progress.clock.steps,  # the steps that rate covers (not compiling calls)
        "device_count": loop.mesh.size,
        "backend": jax.default_backend(),
    }


def _finished_summary(resume_dir: str) -> dict[str, Any] | None:
    """The ``summary.json`` of a run that finished (tested, not preempted) in ``resume_dir``, else None."""
    path = os.path.join(resume_dir, "summary.json") if resume_dir else ""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):  # a summary cut short by a kill: test again and rewrite it
        return None
    return summary if isinstance(summary, dict) and "final_test_accuracy" in summary else None


def _already_finished(resume_dir: str, step: int, skipped: list[str], summary: dict[str, Any]) -> dict[str, Any]:
    """A resumed run that reached its last step and wrote its summary: nothing is trained or written;
    returns that summary. (Killed or preempted before that, the run instead tests and writes it.)"""
    for line in skipped:
        logging.warning(line)
    logging.info("%s already finished (step %d): nothing to do", resume_dir, step)
    return summary


def _write_curves(workdir: str, writer: MetricWriter) -> None:
    """``curves.png`` of the run; a log line instead when matplotlib is not installed."""
    from irnet_jax import curves  # here, not above: ``python -m irnet_jax.curves`` runs without a double import

    try:
        writer.log(f"curves: {curves.write_curves(workdir)}")
    except ImportError:
        writer.log("curves: matplotlib is not installed, no curves.png (pip install 'irnet_jax[plots]')")


def evaluate_checkpoint(config: ml_collections.ConfigDict, source: str) -> dict[str, Any]:
    """Load the ``config.eval_checkpoint`` ("best"/"latest") checkpoint of the run in ``source`` and
    report its validation and test loss/accuracy (printed as one JSON line). Writes nothing."""
    mesh, _ = _start(config)
    source = os.path.abspath(source)
    ckpt.find_step(source, config.eval_checkpoint)
    splits = load_splits(config)
    setup = create_train_state(config)
    state, meta = restore_train_state(config, source, config.eval_checkpoint, setup.state, mesh)
    eval_step = make_eval_step(eval_graphdef(config), config, mesh)
    validation = mesh_lib.put_split(splits["validation"], mesh)
    no_val = {"accuracy": None, "loss": None}
    val = evaluate(eval_step, state, validation, config.eval_batch_size, mesh) if has_examples(validation) else no_val
    test = evaluate(eval_step, state, mesh_lib.put_split(splits["test"], mesh), config.eval_batch_size, mesh)
    result = {
        "checkpoint_step": int(state.step),
        "recorded_val_accuracy": meta.get("val_accuracy"),
        "val_accuracy": val["accuracy"],
        "val_loss": val["loss"],
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
    }
    logging.info("evaluate-only %s step %d: %s", source, result["checkpoint_step"], json.dumps(result))
    print(json.dumps(result))
    return result


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
