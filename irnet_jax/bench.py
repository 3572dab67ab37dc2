"""Training/evaluation throughput benchmark.

    python -m irnet_jax.bench --config configs/vgg_small_cifar10.py \
        --models=vgg_small,resnet20 --binary=true,false --dtypes=float32,bfloat16 --batch_size=128,256

For each (model, binary, dtype) row: the configured model and the trainer's own jitted train and
eval steps, fed from a device-resident synthetic uint8 dataset of the real image shape (on-device
augmentation included). Compilation is timed separately; then ``--warmup`` steps, then the median
over ``--steps`` individually timed calls. Prints a table and one JSON line per row. Rows are
comparable only within one run on one machine. ``train_images_per_second_pipelined`` times the same
number of steps dispatched ahead of the device, at most 2 in flight, as the training loop runs them
(on a GPU, step launch latency then overlaps the previous step). ``--steps_per_call=1,8`` adds rows whose
timed call runs that many train steps (``steps.make_multi_step``, as ``config.steps_per_call`` in training;
per-step figures are per step). ``--trace_dir`` also records a profiler
trace of a few train steps per row and adds kernel events and kernel time per step to the row
(``irnet_jax.profiling``): kernel time well below the step time means a launch- or host-bound step.
``loop_train_images_per_second`` is what users get: the training loop itself (``trainer.train_and_evaluate``
for ``--loop_steps`` steps on the real dataset), so a regression of the loop that the isolated step does not
show is caught.
"""

import dataclasses
import datetime
import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from irnet_jax import cli, optim, profiling, runtime, trainer
from irnet_jax import data as data_lib
from irnet_jax import mesh as mesh_lib
from irnet_jax.errors import ConfigError
from irnet_jax.models import SEQUENTIAL
from irnet_jax.steps import EvalStep, make_eval_step, make_multi_step
from irnet_jax.timing import median_seconds, pipelined_seconds
from irnet_jax.train_state import create_train_state, eval_graphdef

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Base training config (model options, optimizer, dataset).")
flags.DEFINE_list("models", [], "Models to run (default: the config's model).")
flags.DEFINE_list("binary", ["true", "false"], "Binarization on (the config's setting) and/or off (full precision).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes.")
flags.DEFINE_list("batch_size", ["128"], "Global training batch(es); one row per value.")
flags.DEFINE_list(
    "eval_batch_size", ["256"], "Global evaluation batch: one value for every row, or one per --batch_size."
)
flags.DEFINE_integer("steps", 20, "Timed steps per row (median reported).")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_string("output", "", "Append the JSON lines to this file too.")
flags.DEFINE_string(
    "trace_dir",
    "",
    "Also trace --trace_steps back-to-back train steps per row (jax.profiler: "
    "TensorBoard profile + Perfetto trace) under this directory; the row gets a kernel summary.",
)
flags.DEFINE_integer("trace_steps", 5, "Train calls (of --steps_per_call steps) per traced row.")
flags.DEFINE_list(
    "steps_per_call",
    [],
    "Train steps per device call (steps.make_multi_step); one row per "
    "value (default: the config's, resolved as the trainer does). The config's unroll_steps applies.",
)
flags.DEFINE_integer(
    "loop_steps",
    160,
    "Also run the training loop itself (train_and_evaluate on the config's real dataset, no validation split) "
    "for this many steps per row and report its images/s as loop_train_images_per_second; 0: off.",
)
flags.mark_flags_as_required(["config"])

COMPARABILITY_NOTE = "Rows are comparable only within one run on one machine."


def _peak_device_mb() -> float | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


@dataclasses.dataclass
class SyntheticRun:
    """A device-resident synthetic dataset of the real image shape and the trainer's own jitted steps on it."""

    images: jax.Array
    labels: jax.Array
    orders: list[jax.Array]  # 4 alternating [steps_per_call, batch] index arrays
    ede: Any
    eval_idx: jax.Array
    eval_mask: jax.Array
    state: Any
    train_steps: Any
    eval_step: EvalStep
    key: jax.Array = dataclasses.field(default_factory=lambda: jax.random.key(0))


def synthetic_run(
    config: ml_collections.ConfigDict, batch_size: int, eval_batch_size: int, steps_per_call: int
) -> SyntheticRun:
    mesh = mesh_lib.make_mesh()
    info = data_lib.get_dataset_info(config.dataset)
    n = max(4 * batch_size, eval_batch_size, 1024)
    rng = np.random.default_rng(0)
    steps_per_epoch = n // batch_size
    graphdef, state, tx, _ = create_train_state(config, mesh, steps_per_epoch)

    def order() -> jax.Array:
        idx = np.stack([rng.permutation(n)[:batch_size] for _ in range(steps_per_call)]).astype(np.int32)
        return mesh_lib.put_batch(idx, mesh, axis=1)

    return SyntheticRun(
        images=mesh_lib.put_replicated(rng.integers(0, 256, (n, *info.image_shape), np.uint8), mesh),
        labels=mesh_lib.put_replicated(rng.integers(0, info.num_classes, (n,), np.int32), mesh),
        orders=[order() for _ in range(4)],
        ede=optim.stack_estimator_params([optim.estimator_params(config, 0, steps_per_epoch)] * steps_per_call),
        eval_idx=mesh_lib.put_batch(np.arange(eval_batch_size, dtype=np.int32), mesh),
        eval_mask=mesh_lib.put_batch(np.ones(eval_batch_size, np.float32), mesh),
        state=state,
        train_steps=make_multi_step(graphdef, tx, config, mesh),
        eval_step=make_eval_step(eval_graphdef(config), config, mesh),
    )


def loop_rate(config: ml_collections.ConfigDict, loop_steps: int) -> dict[str, Any]:
    """The training loop's own rate: ``trainer.train_and_evaluate`` for ``loop_steps`` steps on the
    config's real dataset (all of its training images on the devices, the learning rate and EDE fed
    every call as in training, no validation split), in a temporary workdir; ``summary.json``'s
    ``train_images_per_second`` over its ``train_timed_steps`` (calls that compile, and evaluations,
    excluded). ``None`` when the dataset is not prepared here."""
    if loop_steps <= 0:
        return {}
    c = config.copy_and_resolve_references()
    c.num_train_steps, c.validation_size, c.log_every_steps, c.resume_dir = loop_steps, 0, loop_steps, ""
    with tempfile.TemporaryDirectory() as workdir:
        try:
            summary = trainer.train_and_evaluate(c, workdir)
        except data_lib.DataError as e:
            print(f"loop rate skipped: {e}", flush=True)
            return {"loop_steps": loop_steps, "loop_train_images_per_second": None}
    return {
        "loop_steps": summary["steps"],
        "loop_timed_steps": summary["train_timed_steps"],
        "loop_train_images_per_second": summary["train_images_per_second"],
    }


def benchmark_row(
    config: ml_collections.ConfigDict,
    batch_size: int,
    eval_batch_size: int,
    steps: int,
    warmup: int,
    trace_dir: str = "",
    trace_steps: int = 5,
    steps_per_call: int = 1,
    loop_steps: int = 0,
) -> dict[str, Any]:
    """Measure one configuration; returns the JSON row (with ``profiling.kernel_summary`` fields when
    ``trace_dir`` is given, ``loop_rate``'s when ``loop_steps > 0``). Each timed call runs
    ``steps_per_call`` train steps (``steps.make_multi_step``); per-step figures divide by it."""
    config = config.copy_and_resolve_references()
    config.batch_size, config.steps_per_call = batch_size, steps_per_call
    run = synthetic_run(config, batch_size, eval_batch_size, steps_per_call)
    t = time.perf_counter()
    train_compiled = run.train_steps.lower(run.state, run.images, run.labels, run.orders[0], run.ede, run.key).compile()
    st = run.state
    eval_args = (run.eval_step.integers(st.params, st.batch_stats), run.images, run.labels, run.eval_idx, run.eval_mask)
    eval_compiled = run.eval_step.run.lower(st.params, st.batch_stats, *eval_args).compile()
    compile_seconds = time.perf_counter() - t

    calls = [0]

    def one_train_call():
        calls[0] += 1
        run.state, m = train_compiled(run.state, run.images, run.labels, run.orders[calls[0] % 4], run.ede, run.key)
        return m  # done when the step is; the state is donated to the next step

    train_s = median_seconds(one_train_call, steps, warmup) / steps_per_call
    train_pipelined_s = pipelined_seconds(one_train_call, steps) / steps_per_call
    st = run.state
    eval_s = median_seconds(lambda: eval_compiled(st.params, st.batch_stats, *eval_args), steps, warmup)
    cost = train_compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else (cost or {})
    dtype = "bfloat16" if config.half_precision else "float32"
    trace = {}
    if trace_dir:
        name = f"{config.model}_{'binary' if config.binary else 'float'}_{dtype}_b{batch_size}" + (
            f"_s{steps_per_call}" if steps_per_call > 1 else ""
        )
        trace = profiling.kernel_summary(
            profiling.record_trace(one_train_call, trace_steps, os.path.join(trace_dir, name)),
            trace_steps,
            steps_per_call,
        )
    return {
        "model": config.model,
        "binary": bool(config.binary),
        "dtype": dtype,
        "dataset": config.dataset,
        "batch_size": batch_size,
        "eval_batch_size": eval_batch_size,
        "steps_per_call": steps_per_call,
        "unroll_steps": runtime.use_unrolled_steps(config),
        "binary_conv_products": runtime.binary_conv_products(config),
        "train_ynn_reduce_only": runtime.train_reduce_fusions_only(config),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "train_images_per_second": batch_size / train_s,
        "eval_images_per_second": eval_batch_size / eval_s,
        "train_images_per_second_pipelined": batch_size / train_pipelined_s,
        "train_step_ms": 1e3 * train_s,
        "eval_step_ms": 1e3 * eval_s,
        "compile_seconds": compile_seconds,
        "train_step_gflops": float(cost.get("flops", 0.0)) / 1e9,
        "peak_host_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mb": _peak_device_mb(),
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "device_kind": jax.devices()[0].device_kind,
        "jax_version": jax.__version__,
        "date": datetime.date.today().isoformat(),
        **trace,
        **loop_rate(config, loop_steps),
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<10} {'binary':<6} {'dtype':<8} {'batch':>5} {'steps/call':>10} {'train img/s':>11} "
        f"{'pipelined':>10} "
        f"{'eval img/s':>10} {'train ms':>9} {'compile s':>9} {'loop img/s':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['model']:<10} {str(r['binary']):<6} {r['dtype']:<8} {r['batch_size']:>5} "
            f"{r['steps_per_call']:>10} {r['train_images_per_second']:>11.1f} {r['train_images_per_second_pipelined']:>10.1f} "
            f"{r['eval_images_per_second']:>10.1f} "
            f"{r['train_step_ms']:>9.1f} {r['compile_seconds']:>9.1f} {_rate(r.get('loop_train_images_per_second'))}"
        )
    lines.append(
        f"{rows[0]['backend']} x {rows[0]['device_count']} ({rows[0]['device_kind']}), JAX "
        f"{rows[0]['jax_version']}. {COMPARABILITY_NOTE}"
        if rows
        else COMPARABILITY_NOTE
    )
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return f"{value:>10.1f}" if value is not None else f"{'-':>10}"


def batch_pairs(batch_sizes: list[int], eval_batch_sizes: list[int]) -> list[tuple[int, int]]:
    """(train, eval) batch per row: one eval batch for all rows, or one per train batch."""
    if len(eval_batch_sizes) == 1:
        eval_batch_sizes = eval_batch_sizes * len(batch_sizes)
    if len(eval_batch_sizes) != len(batch_sizes) or min(batch_sizes + eval_batch_sizes) < 1:
        raise ValueError(
            f"--eval_batch_size={eval_batch_sizes} must be one positive value or one per --batch_size={batch_sizes}"
        )
    return list(zip(batch_sizes, eval_batch_sizes))


def run(
    config: ml_collections.ConfigDict,
    models: list[str],
    binary: list[bool],
    dtypes: list[str],
    batch_sizes: list[tuple[int, int]],
    steps: int,
    warmup: int,
    output: str = "",
    trace_dir: str = "",
    trace_steps: int = 5,
    steps_per_call: tuple[int, ...] = (1,),
    loop_steps: int = 0,
    row_fields: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark every (model, binary, dtype, (batch, eval batch)) combination; print each JSON line as it is
    measured and the table at the end. ``row_fields`` (e.g. the command's config overrides) are added to
    every row."""
    rows = []
    for model in models or [config.model]:
        for is_binary in binary:
            for dtype in dtypes:
                if dtype not in ("float32", "bfloat16"):
                    raise ValueError(f"unknown dtype {dtype!r}; valid: ['float32', 'bfloat16']")
                c = config.copy_and_resolve_references()
                c.model, c.binary, c.half_precision = model, is_binary, dtype == "bfloat16"
                # the integer first layer signs its output for a binary layer: a full-precision row or a
                # ResNet row has none
                c.integer_first_layer = c.integer_first_layer and is_binary and model in SEQUENTIAL
                if model != config.model:
                    c.model_kwargs = ml_collections.ConfigDict()
                for batch_size, eval_batch_size in batch_sizes:
                    for s in steps_per_call:
                        row = benchmark_row(
                            c, batch_size, eval_batch_size, steps, warmup, trace_dir, trace_steps, s, loop_steps
                        )
                        row.update(row_fields or {})
                        rows.append(row)
                        line = json.dumps(row)
                        print(line, flush=True)
                        if output:
                            with open(output, "a", encoding="utf-8") as f:
                                f.write(line + "\n")
    print(format_table(rows), flush=True)
    return rows


def config_overrides(args: list[str]) -> list[str]:
    """The ``--config.<field>=<value>`` arguments of a command line, in order (a row records them, so
    that rows of one file are told apart by what was changed); ``--config.f v`` is given as ``--config.f=v``."""
    overrides = []
    for i, a in enumerate(args):
        if a.startswith("--config."):
            separate_value = "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--")
            overrides.append(f"{a}={args[i + 1]}" if separate_value else a)
    return overrides


def _parse_bool(s: str) -> bool:
    if s.lower() not in ("true", "false"):
        raise ConfigError(f"--binary takes true/false values, got {s!r}")
    return s.lower() == "true"


def main(argv):
    for warning in runtime.configure_runtime(FLAGS.config):  # xla_flags, cpu_devices: before JAX starts
        print(warning, flush=True)
    try:
        pairs = batch_pairs([int(b) for b in FLAGS.batch_size], [int(b) for b in FLAGS.eval_batch_size])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    steps_per_call = tuple(int(s) for s in FLAGS.steps_per_call) or (runtime.steps_per_call(FLAGS.config),)
    if min(steps_per_call) < 1:
        raise ConfigError(f"--steps_per_call={list(steps_per_call)} must be positive")
    run(
        FLAGS.config,
        FLAGS.models,
        [_parse_bool(b) for b in FLAGS.binary],
        FLAGS.dtypes,
        pairs,
        FLAGS.steps,
        FLAGS.warmup,
        FLAGS.output,
        FLAGS.trace_dir,
        FLAGS.trace_steps,
        steps_per_call,
        FLAGS.loop_steps,
        {"config_overrides": config_overrides(sys.argv[1:])},
    )


if __name__ == "__main__":
    cli.run(main, "python -m irnet_jax.bench")
