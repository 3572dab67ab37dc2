"""Backend policy: what a run asks of XLA and of the devices, decided per backend, applied before JAX starts.

The fields decided here never change what a run computes beyond float summation order (they are
``checkpointing.OPERATIONAL_FIELDS``):

- ``cpu_devices``: split the CPU platform into N JAX devices, so that XLA:CPU's single-threaded
  kernels of different batch shards run on different cores;
- ``xla_flags``: extra XLA flags appended to ``$XLA_FLAGS`` ("auto" = ``AUTO_XLA_FLAGS``);
- ``steps_per_call`` / ``unroll_steps``: train steps per device call and whether that loop is unrolled;
- ``fusion_barriers``: store the ResNets' residual stream once per block (and the compiler option
  that keeps those barriers);
- ``binary_conv_products``: how a 1w1a conv computes its forward sums (``sign_conv.PRODUCTS``: "float",
  "int8", "popcount"; "auto" = "popcount" on CPU, "float" elsewhere), in the train and eval steps;
- ``train_ynn_fusions``: which XLA:CPU YNNPACK library fusions the train step is compiled with
  ("reduce": reductions only, the convolutions on XLA's own kernels; "default": XLA's choice; "auto" =
  "reduce" on CPU unless ``$XLA_FLAGS`` sets ``YNN_FUSION_FLAG``). A per-compilation option: the
  evaluation step keeps XLA's default fusions.

Why each default is what it is, with the measurements, is in BENCHMARKS.md.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from irnet_jax import sign_conv
from irnet_jax.errors import ConfigError

AUTO_ON_OFF = ("auto", "on", "off")

# steps_per_call=-1 ("auto") per backend; TPU (not measured yet) and others get 1.
CPU_STEPS_PER_CALL = 4
GPU_STEPS_PER_CALL = 8

# xla_flags="auto", one flag per backend (each backend ignores the other's):
# - GPU: convolutions join the CUDA graphs XLA records ("command buffers"; its defaults leave them out, so
#   each convolution splits the graphs);
# - CPU: XLA:CPU's depth-first scheduler instead of its default breadth-first one, which orders kernels
#   for concurrency at the cost of a larger live set: with each core running one device's kernels in
#   turn the concurrency buys nothing, while the live set presumably costs cache misses (BENCHMARKS.md).
#   XLA reads this one from $XLA_FLAGS only: as a per-jit compile option it is accepted and has no
#   effect (jaxlib 0.10.2).
GPU_COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer=+CONVOLUTION"
CPU_DEPTH_FIRST_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
AUTO_XLA_FLAGS = f"{GPU_COMMAND_BUFFER_FLAG} {CPU_DEPTH_FIRST_FLAG}"
MAX_CPU_DEVICES = 512
# binary_conv_products="auto": XNOR-popcount on CPU, where it is several times faster than XLA:CPU's
# float32 and int8 convolutions; the float convolution elsewhere (BENCHMARKS.md).
BINARY_CONV_PRODUCTS = ("auto", *sign_conv.PRODUCTS)
CPU_BINARY_CONV_PRODUCTS = "popcount"
# The compile option that keeps jax.lax.optimization_barrier from being removed before fusion.
KEEP_BARRIERS = {"xla_disable_hlo_passes": "cse_barrier_expander"}
# Under XLA:CPU's YNNPACK fusions for reductions only its int8 conv takes a slow path (~40x its float32
# conv, BENCHMARKS.md): binary_conv_products="int8" then gets a warning.
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# train_ynn_fusions="reduce": the same setting as YNN_FUSION_FLAG=reduce, as a compile option of one jit.
TRAIN_YNN_FUSIONS = ("auto", "reduce", "default")
YNN_REDUCE_ONLY = {YNN_FUSION_FLAG.removeprefix("--"): "LIBRARY_FUSION_TYPE_REDUCE"}
STEPS = ("train", "eval")


def on_or_auto_on_cpu(config: ml_collections.ConfigDict, field: str) -> bool:
    """An ``AUTO_ON_OFF`` field: "on", or "auto" on the CPU backend."""
    value = config[field]
    if value not in AUTO_ON_OFF:
        raise ValueError(f"{field} must be one of {list(AUTO_ON_OFF)}, got {value!r}")
    return value == "on" or (value == "auto" and jax.default_backend() == "cpu")


def use_fusion_barriers(config: ml_collections.ConfigDict) -> bool:
    """Whether the residual stream is materialized (``fusion_barriers``; "auto" = on the CPU backend,
    where XLA:CPU otherwise recomputes the chain of earlier blocks inside every fusion)."""
    return on_or_auto_on_cpu(config, "fusion_barriers")


def ynn_fusions_requested() -> bool:
    """Whether ``$XLA_FLAGS`` (the environment's and the config's, once applied) sets ``YNN_FUSION_FLAG``."""
    return YNN_FUSION_FLAG in xla_flag_names(os.environ.get("XLA_FLAGS", ""))


def train_reduce_fusions_only(config: ml_collections.ConfigDict) -> bool:
    """Whether the train step is compiled with YNNPACK fusions for reductions only (``train_ynn_fusions``:
    "reduce", or "auto" on the CPU backend when ``$XLA_FLAGS`` does not choose them itself; a config
    written before the field: "default")."""
    value = config.get("train_ynn_fusions", "default")
    if value not in TRAIN_YNN_FUSIONS:
        raise ValueError(f"train_ynn_fusions must be one of {list(TRAIN_YNN_FUSIONS)}, got {value!r}")
    if value == "auto":
        return jax.default_backend() == "cpu" and not ynn_fusions_requested()
    return value == "reduce"


def binary_conv_products(config: ml_collections.ConfigDict) -> str:
    """``models.Quantization.binary_conv_products`` of ``config.binary_conv_products``: the value, or
    for "auto" ``CPU_BINARY_CONV_PRODUCTS`` on the CPU backend and "float" elsewhere (a config written
    before the field: "float")."""
    value = config.get("binary_conv_products", "float")
    if value not in BINARY_CONV_PRODUCTS:
        raise ValueError(f"binary_conv_products must be one of {list(BINARY_CONV_PRODUCTS)}, got {value!r}")
    if value == "auto":
        return CPU_BINARY_CONV_PRODUCTS if jax.default_backend() == "cpu" else "float"
    return value


def use_unrolled_steps(config: ml_collections.ConfigDict) -> bool:
    """Whether ``steps.make_multi_step`` unrolls its loop (``unroll_steps``; "auto" = on the CPU backend,
    where XLA:CPU runs the convolutions of a loop body on a slower generic path)."""
    return on_or_auto_on_cpu(config, "unroll_steps")


def steps_per_call(config: ml_collections.ConfigDict) -> int:
    """Train steps per device call: ``config.steps_per_call``, or for -1 ("auto") ``CPU_STEPS_PER_CALL``
    on the CPU backend (XLA:CPU maps a fresh temporary buffer for every call; S steps share one),
    ``GPU_STEPS_PER_CALL`` on GPU (a small net's step is launch-bound) and 1 elsewhere."""
    if config.steps_per_call == -1:
        return {"cpu": CPU_STEPS_PER_CALL, "gpu": GPU_STEPS_PER_CALL}.get(jax.default_backend(), 1)
    if config.steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1 or -1 (auto), got {config.steps_per_call}")
    return config.steps_per_call


def compiler_options(config: ml_collections.ConfigDict, step: str = "eval") -> dict[str, str] | None:
    """XLA options for the train or eval ``step``: keep the models' optimization barriers when they are
    used; the train step's YNNPACK fusions for reductions only under ``train_reduce_fusions_only``."""
    if step not in STEPS:
        raise ValueError(f"step must be one of {list(STEPS)}, got {step!r}")
    options = dict(KEEP_BARRIERS) if use_fusion_barriers(config) else {}
    if step == "train" and train_reduce_fusions_only(config):
        options.update(YNN_REDUCE_ONLY)
    return options or None


def validate(config: ml_collections.ConfigDict) -> None:
    """``ValueError`` naming the value and the allowed ones for each backend-policy field."""
    use_fusion_barriers(config)
    use_unrolled_steps(config)
    steps_per_call(config)
    train_reduce_fusions_only(config)
    binary_conv_products(config)


# ------------------------------------------------------------------------ before JAX starts


def configure_cpu_devices(count: int) -> bool:
    """Split the CPU platform into ``count`` JAX devices (``count <= 0``: keep JAX's default of one).

    JAX accepts this only before it starts its backends (``train.py`` and the benchmark call it first
    thing; in a notebook call it right after ``import jax``). Returns whether the CPU platform now has
    ``count`` devices (False when JAX had already started with another count).
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


def xla_flags(config: ml_collections.ConfigDict) -> str:
    """The XLA flags a run adds to ``$XLA_FLAGS``: ``config.xla_flags``, ``AUTO_XLA_FLAGS`` for "auto"."""
    return AUTO_XLA_FLAGS if config.xla_flags == "auto" else config.xla_flags


def configure_runtime(config: ml_collections.ConfigDict) -> list[str]:
    """Apply the fields that must be set before JAX starts (``xla_flags``, ``cpu_devices``); returns a
    warning for each one that could not be applied: JAX had already started, or (for flags the config
    names, not "auto"'s) ``$XLA_FLAGS`` sets another value. ``ConfigError`` for an impossible
    ``cpu_devices`` (before JAX would try to create them)."""
    if not isinstance(config.cpu_devices, int) or not 0 <= config.cpu_devices <= MAX_CPU_DEVICES:
        raise ConfigError(f"cpu_devices={config.cpu_devices!r} is not allowed: must be >= 0 and <= {MAX_CPU_DEVICES}")
    flags, explicit = xla_flags(config), config.xla_flags != "auto"
    warnings = [
        f"xla_flags: {mine} not applied, $XLA_FLAGS sets {theirs}"
        for mine, theirs in xla_flags_overridden(flags)
        if explicit
    ]
    if not configure_xla_flags(flags) and explicit:
        warnings.append(
            f"xla_flags={config.xla_flags!r} not applied: JAX had already started (set them "
            f"before JAX runs anything, e.g. via train.py, or in $XLA_FLAGS)"
        )
    train_fusions = config.get("train_ynn_fusions", "default")
    if config.get("binary_conv_products") == "int8" and (train_fusions != "default" or ynn_fusions_requested()):
        warnings.append(
            f"binary_conv_products='int8' with train_ynn_fusions={train_fusions!r} (or "
            f"{YNN_FUSION_FLAG} in $XLA_FLAGS): on CPU, XLA's int8 convolutions are then many times slower "
            f"than float32 ('popcount' is not; train_ynn_fusions='default' keeps XLA's fusions)"
        )
    if not configure_cpu_devices(config.cpu_devices) and jax.default_backend() == "cpu":
        warnings.append(
            f"cpu_devices={config.cpu_devices} not applied: JAX had already started with "
            f"{len(jax.devices('cpu'))} CPU device(s) (set it before JAX runs anything, e.g. via "
            f"train.py)"
        )
    return warnings
