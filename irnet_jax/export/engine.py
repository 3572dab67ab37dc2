"""Running a folded model: the NumPy reference (with a per-stage trace), the packed JAX engine, and
the trained float model's predictions to compare them with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from irnet_jax import data as data_lib
from irnet_jax import encoding, models
from irnet_jax.export.folding import ExportError
from irnet_jax.export.stages import BinaryConvStage, FoldedModel
from irnet_jax.timing import median_seconds
from irnet_jax.train_state import build_model, input_normalization


def first_layer_input(images_u8: np.ndarray, folded: FoldedModel) -> np.ndarray:
    """Bits (binary first layer: the encoded planes, ``[N, H, W, C * levels]``) or the pixel values as
    float32 (an integer first layer or stem) of ``[N, H, W, C]`` uint8 images."""
    if getattr(folded.stages[0], "takes_pixels", False):
        return np.asarray(images_u8, np.float32)
    if isinstance(folded.stages[0], BinaryConvStage):
        if folded.input_encoding == "none":
            raise ExportError("a binary first layer needs an input encoding (input_encoding thermometer/bitplanes)")
        planes = encoding.encode(jnp.asarray(images_u8), folded.input_encoding, folded.encoding_levels)
        return (np.asarray(planes) > 0).astype(np.uint8)
    raise ExportError(f"no input form for a first stage of kind {folded.stages[0].kind!r}")


def run_numpy(folded: FoldedModel, images_u8: np.ndarray, trace: bool = False) -> tuple[np.ndarray, list[dict]]:
    """The folded model on ``[N, H, W, C] uint8`` images: ``(logits [N, classes] float32, per-stage trace)``.

    The trace holds, per stage: ``input`` (bits, or the pixel values for an integer first layer), ``sums``
    (integer D before pooling/threshold, binary stages only) and ``output`` (bits, or the fixed-point
    ``q`` before a float classifier; logits last)."""
    x = first_layer_input(images_u8, folded)
    records = []
    for stage in folded.stages:
        record = {"input": x}
        x, sums = stage.reference(x)
        if sums is not None:
            record["sums"] = sums
        record["output"] = x
        if trace:
            records.append(record)
    return x, records


def make_jax_engine(folded: FoldedModel) -> Callable[[jax.Array], jax.Array]:
    """A jitted ``engine(first_layer_input) -> logits`` running XNOR + ``lax.population_count`` on
    packed uint32 words (an integer first layer as exact float32 convs). It runs with 64-bit integers enabled
    (a fixed-point stage multiplies in int64); every other array has an explicit 32-bit type."""
    runs = [stage.packed() for stage in folded.stages]

    def engine(x):
        for run in runs:
            x = run(x)
        return x

    jitted = jax.jit(engine)

    def run_x64(x):
        with jax.enable_x64(True):
            return jitted(x)

    return run_x64


def float_forward(
    model: nnx.Module, config: ml_collections.ConfigDict, dtype: Any = jnp.float32
) -> Callable[[jax.Array], jax.Array]:
    """The trained model's jitted eval forward: ``[N, H, W, C] uint8 -> logits [N, classes]``,
    preprocessed as in training (normalization or input encoding, no augmentation) into ``dtype``."""
    info = data_lib.get_dataset_info(config.dataset)
    graphdef, state = nnx.split(model)
    integers = models.eval_integers(model)

    @jax.jit
    def forward(state, integers, images_u8):
        encoding, levels = config.input_encoding, config.encoding_levels
        x = data_lib.preprocess(
            images_u8, info, None, dtype, encoding, levels, normalization=input_normalization(config)
        )
        return models.eval_logits(nnx.merge(graphdef, state, copy=True), x, integers)

    return lambda images_u8: forward(state, integers, images_u8)


def float64_forward(model: nnx.Module, config: ml_collections.ConfigDict) -> Callable[[jax.Array], jax.Array]:
    """``float_forward`` of the same model rebuilt in float64: its parameters and statistics cast
    exactly, float convolutions for the binary products (exact in any float). Every float operation
    then rounds to ``2**-53`` relative instead of float32's ``2**-24``: the model's exact value for a
    prediction, up to ties closer than that."""
    wide_config = config.copy_and_resolve_references()
    with wide_config.unlocked():
        wide_config.binary_conv_products = "float"
    widen = lambda v: jnp.asarray(v, jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v
    with jax.enable_x64(True):
        wide = build_model(wide_config, nnx.Rngs(0), dtype=jnp.float64)
        nnx.update(wide, jax.tree.map(widen, nnx.state(model)))
        wide.eval()
        forward = float_forward(wide, wide_config, jnp.float64)

    def run_x64(images_u8):
        with jax.enable_x64(True):
            return forward(images_u8)

    return run_x64


def model_predictions(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    images_u8: np.ndarray,
    batch: int = 500,
    float64: bool = False,
) -> np.ndarray:
    """The trained model's predictions (eval mode) on uint8 images, ``batch`` at a time: as it computes
    them (float32), or with ``float64`` its exact value (``float64_forward``)."""
    forward = (float64_forward if float64 else float_forward)(model, config)
    out = [
        np.argmax(np.asarray(forward(jnp.asarray(images_u8[i : i + batch]))), -1)
        for i in range(0, len(images_u8), batch)
    ]
    return np.concatenate(out)


def stream_equal_layers(model: nnx.Module, folded: FoldedModel, images_u8: np.ndarray, batch: int = 100) -> float:
    """A ResNet trained with ``residual_frac_bits``: the fraction of (image, stream tensor) pairs where
    the model's own eval-mode int32 stream equals the NumPy reference's, bit for bit."""
    stream = jax.jit(lambda m, x, ints: m.fixed_point_stream(x, ints))
    integers = model.host_stream_integers()
    equal, total = 0, 0
    for i in range(0, len(images_u8), batch):
        x = images_u8[i : i + batch]
        _, trace = run_numpy(folded, x, trace=True)
        for ours, record in zip(stream(model, jnp.asarray(x, jnp.float32), integers), trace):
            same = np.all(np.asarray(ours) == record["output"], axis=(1, 2, 3))
            equal, total = equal + int(same.sum()), total + len(same)
    return equal / total


def engine_predictions(folded: FoldedModel, images_u8: np.ndarray, batch: int = 250) -> np.ndarray:
    """The packed JAX engine's predictions on uint8 images, ``batch`` at a time."""
    engine = make_jax_engine(folded)
    out = [
        np.asarray(jnp.argmax(engine(jnp.asarray(first_layer_input(images_u8[i : i + batch], folded))), -1))
        for i in range(0, len(images_u8), batch)
    ]
    return np.concatenate(out)


def benchmark_engine(
    folded: FoldedModel, model: nnx.Module, config: ml_collections.ConfigDict, images_u8: np.ndarray, repeats: int = 5
) -> dict[str, float]:
    """Median images/s of the packed JAX engine and of the float model's jitted eval forward, one batch."""
    float_fwd = float_forward(model, config)
    engine = make_jax_engine(folded)
    x_u8 = jnp.asarray(images_u8)
    x_in = jnp.asarray(first_layer_input(images_u8, folded))

    def rate(fn) -> float:
        return len(images_u8) / median_seconds(fn, repeats)

    e, f = rate(lambda: engine(x_in)), rate(lambda: float_fwd(x_u8))
    return {
        "batch": len(images_u8),
        "engine_images_per_second": e,
        "float_images_per_second": f,
        "engine_ms_per_image": 1e3 / e,
        "backend": jax.default_backend(),
    }
