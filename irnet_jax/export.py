"""Integer-only export of a trained sequential BNN, a bit-exact packed inference engine, golden vectors.

    python -m irnet_jax.export --checkpoint runs/fully_binary_mnist --out export/ --num_images 4

**Folding.** A binary layer ``l`` sees bits ``a`` in {-1, +1}^K (its padded input patch) and binary
weights ``sign(W_std) * s_o``. Its output channel ``o`` is ``y_o = s_o * D_o`` with the integer

    D_o = sum_k a_k * w_ok = K - 2 * popcount(a XOR w_o)          (bit 1 = +1, bit 0 = -1)

Its norm is affine in eval mode, ``z = A_o * y + B_o`` (BatchNorm: ``A = gamma / sqrt(var + eps)``,
``B = beta - mean * A``; offset: ``A = 1``, ``B = b``), and the next layer keeps ``sign(z)`` (hardtanh
keeps the sign; ``sign(0) = +1``). With ``M_o = A_o * s_o`` (the power-of-two scale only changes ``M``):

    bit_o = D_o >= T_o   with T_o = ceil(-B_o / M_o)    where M_o > 0
    bit_o = D_o <= T_o   with T_o = floor(-B_o / M_o)   where M_o < 0 (flip: negative BatchNorm scale)
    bit_o = [B_o >= 0]   where M_o = 0 (stored as T = -(K+1), always; or T = K+1, never)

Max-pooling before the norm pools the integer sums (``max D``) and then thresholds; pooling after the
norm (AlexNet) is a bitwise OR of +1 bits. Padding is constant bits (zero padding, which is not binary,
is refused for binary layers: use ``pad_value`` one/minus_one/checkerboard). A full-precision first
layer (the paper's setting) stays a float32 convolution + threshold in the engine, and a
full-precision last layer a float32 matrix product: both are stated as such in the manifest.

**Bit order.** Weights and patches are indexed ``(c, kh, kw)`` (channel-major; FINN uses
``(kh, kw, c)``); feature maps ``(h, w, c)``; a dense layer's input is the feature map flattened in
``(h, w, c)`` order. Text files hold MSB = index 0 first; packed words are uint32 little-endian over
the index (bit ``i`` of word ``i // 32`` is index ``i``).

Supported: the sequential topologies ``vgg_small``, ``alexnet``, ``mnistnet``. The ResNets add
real-valued shortcuts before each sign, which is not an XNOR-popcount-threshold pipeline.
"""

import argparse
import dataclasses
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from irnet_jax import binarization as bz
from irnet_jax import data as data_lib
from irnet_jax import encoding, trainer
from irnet_jax import checkpointing as ckpt
from irnet_jax.layers import Offset, ShiftBinaryConv
from irnet_jax.timing import median_seconds

EXPORTABLE = ("vgg_small", "alexnet", "mnistnet")


class ExportError(ValueError):
    """The model or checkpoint cannot be exported as an XNOR-popcount-threshold pipeline."""


@dataclasses.dataclass
class Stage:
    """One layer of the folded model.

    kind: ``binary_conv`` | ``float_conv`` (first layer, float32) | ``binary_dense`` | ``float_dense``.
    For convs: ``weight_bits [C_out, K]`` (1 = +1, (c, kh, kw) order) or ``weights`` float32 HWIO,
    thresholds/flips per output channel, ``pool``: "none" | "sums" (max of D, then threshold) | "bits" (OR).
    For dense: ``weight_bits [C_out, K]`` or ``weights [K, C_out]``, and the float logit map
    ``logits = D * logit_scale + bias`` (binary) or ``a @ weights + bias`` (float).
    """

    kind: str
    in_shape: tuple[int, ...]
    kernel_size: int = 0
    stride: int = 1
    pad: int = 0
    pad_bit: str = "zero"  # "one", "minus_one", "checkerboard" (binary convs), "zero" (float first conv)
    weight_bits: np.ndarray | None = None
    weights: np.ndarray | None = None
    threshold: np.ndarray | None = None  # int64 [C_out], binary convs
    flip: np.ndarray | None = None
    affine: tuple[np.ndarray, np.ndarray] | None = None  # float first conv: z = A * y + B
    pool: str = "none"
    ceil_pool: bool = False
    logit_scale: np.ndarray | None = None
    bias: np.ndarray | None = None

    @property
    def fan_in(self) -> int:
        return int(self.weight_bits.shape[1]) if self.weight_bits is not None else int(np.prod(self.weights.shape[:-1]))


@dataclasses.dataclass
class FoldedModel:
    stages: list[Stage]
    input_encoding: str
    encoding_levels: int
    dataset: str
    model: str


# ------------------------------------------------------------------------------------------ folding


def _norm_affine(norm: nnx.Module, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` float64 with ``norm(y) = A * y + B`` in eval mode."""
    if isinstance(norm, Offset):
        return np.ones(channels), np.asarray(norm.bias[...], np.float64)
    if isinstance(norm, nnx.BatchNorm):
        mean = np.asarray(norm.mean[...], np.float64)
        var = np.asarray(norm.var[...], np.float64)
        gamma = np.ones(channels) if norm.scale is None else np.asarray(norm.scale[...], np.float64)
        beta = np.zeros(channels) if norm.bias is None else np.asarray(norm.bias[...], np.float64)
        a = gamma / np.sqrt(var + norm.epsilon)
        return a, beta - mean * a
    raise ExportError(f"cannot fold norm {type(norm).__name__}")


def fold_threshold(m: np.ndarray, b: np.ndarray, fan_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds and flips such that ``(m * D + b >= 0) == (D <= T if flip else D >= T)``
    for every integer ``D`` in ``[-fan_in, fan_in]``; ``m``, ``b`` float64 per channel."""
    m, b = np.asarray(m, np.float64), np.asarray(b, np.float64)
    safe = np.where(m == 0, 1.0, m)
    t = np.where(m > 0, np.ceil(-b / safe), np.floor(-b / safe))
    # -b/m and m*D + b round differently at a tie: settle the boundary by evaluating m*D + b itself.
    step = np.where(m > 0, -1.0, 1.0)  # towards the side that should still be +1
    t = np.where(m * (t + step) + b >= 0, t + step, t)
    t = np.where(m * t + b < 0, t - step, t)
    t = np.where(m == 0, np.where(b >= 0, -(fan_in + 1), fan_in + 1), t)
    t = np.clip(t, -(fan_in + 1), fan_in + 1)
    return t.astype(np.int64), m < 0


def _binary_weight_bits(conv, ede: bz.EstimatorParams) -> tuple[np.ndarray, np.ndarray]:
    """``(bits [C_out, K] (c, kh, kw) order, per-channel scale s)`` with ``Qw(W) = (2 bits - 1) * s``."""
    wq = np.asarray(conv.quantized_kernel(ede), np.float64)
    if wq.ndim == 4:
        wq = wq.transpose(3, 2, 0, 1).reshape(wq.shape[3], -1)  # [C_out, C_in * kh * kw], (c, kh, kw)
    else:
        wq = wq.T
    s = np.abs(wq[:, 0])
    if not np.all(np.abs(wq) == s[:, None]):
        raise ExportError("binary weights do not share one magnitude per output channel")
    return (wq > 0).astype(np.uint8), s  # Qw = s * (2 bits - 1), also for a negative learned scale


def _stages_of(model: nnx.Module, name: str) -> list[tuple[Any, Any, str, bool]]:
    """``(conv, norm, pool, ceil)`` per conv stage of a supported model, in order."""
    if name == "vgg_small":
        return [(c, n, "sums" if p else "none", False) for c, n, p in zip(model.convs, model.bns, model.pool_after)]
    if name == "mnistnet":
        return [(c, n, "sums", False) for c, n in zip(model.convs, model.bns)]
    if name == "alexnet":
        return [(c, n, "bits" if spec[3] else "none", True)
                for c, n, spec in zip(model.convs, model.bns, model.layers_spec)]
    raise ExportError(f"export supports {list(EXPORTABLE)}; {name!r} adds real-valued shortcuts before "
                      f"each sign, which is not an XNOR-popcount-threshold pipeline")


def fold(model: nnx.Module, config: ml_collections.ConfigDict) -> FoldedModel:
    """Fold a trained model (float32, eval mode) into integer thresholds and weight bits."""
    ede = bz.EstimatorParams.constant()
    h, w, c = trainer.model_input_shape(config)
    stages: list[Stage] = []
    for conv, norm, pool, ceil in _stages_of(model, config.model):
        if isinstance(conv, ShiftBinaryConv):
            raise ExportError("shift convs (two thresholds per input) are not exportable yet")
        a, b = _norm_affine(norm, conv.out_features)
        k, s, p = conv.kernel_size, conv.strides, conv.padding
        if conv.is_binary:
            if conv.pad_value == "zero" and p > 0:
                raise ExportError("a binary conv with zero padding sees 0s, not bits: train with pad_value "
                                  "'one', 'minus_one' or 'checkerboard' to export")
            bits, scale = _binary_weight_bits(conv, ede)
            thr, flip = fold_threshold(a * scale, b, bits.shape[1])
            stage = Stage("binary_conv", (h, w, c), k, s, p, conv.pad_value, weight_bits=bits, threshold=thr,
                          flip=flip, pool=pool, ceil_pool=ceil)
        elif not stages and not conv.binarize_weights and not conv.binarize_activations:
            stage = Stage("float_conv", (h, w, c), k, s, p, "zero", weights=np.asarray(conv.kernel[...], np.float32),
                          affine=(a, b), pool=pool, ceil_pool=ceil)
        else:
            raise ExportError("only the first conv may be full precision, and no conv may be 1w32a, to export")
        stages.append(stage)
        h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if pool != "none":
            h, w = (-(-h // 2), -(-w // 2)) if ceil else (h // 2, w // 2)
        c = conv.out_features
    fc = model.fc
    if fc.is_binary:
        bits, scale = _binary_weight_bits(fc, ede)
        multiplier = fc.output_multiplier()
        out_scale = 1.0 if multiplier is None else float(np.asarray(multiplier))
        stages.append(Stage("binary_dense", (h * w * c,), weight_bits=bits, logit_scale=(scale * out_scale).astype(np.float32),
                            bias=np.asarray(fc.bias[...], np.float32)))
    elif not fc.binarize_weights and not fc.binarize_activations:
        stages.append(Stage("float_dense", (h * w * c,), weights=np.asarray(fc.kernel[...], np.float32),
                            bias=np.asarray(fc.bias[...], np.float32)))
    else:
        raise ExportError("the last layer must be fully binary or full precision to export")
    return FoldedModel(stages, config.input_encoding, config.encoding_levels, config.dataset, config.model)


# ------------------------------------------------------------------------------- NumPy reference


def pad_bits(bits: np.ndarray, pad: int, pad_bit: str) -> np.ndarray:
    """Pad ``[N, H, W, C]`` {0,1} bits with constant bits (1 = +1) or the checkerboard (+1 where row+col even)."""
    if pad == 0:
        return bits
    n, h, w, c = bits.shape
    fill = {"one": 1, "minus_one": 0}.get(pad_bit)
    if fill is None:
        rows, cols = np.arange(h + 2 * pad)[:, None], np.arange(w + 2 * pad)[None, :]
        board = ((rows + cols) % 2 == 0).astype(np.uint8)
        out = np.broadcast_to(board[None, :, :, None], (n, h + 2 * pad, w + 2 * pad, c)).copy()
    else:
        out = np.full((n, h + 2 * pad, w + 2 * pad, c), fill, np.uint8)
    out[:, pad:pad + h, pad:pad + w] = bits
    return out


def patches(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """``[N, H, W, C] -> [N, H', W', C * k * k]`` in (c, kh, kw) order (input already padded)."""
    n, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    cols = np.stack([x[:, i:i + stride * ho:stride, j:j + stride * wo:stride, :] for i in range(k) for j in range(k)],
                    axis=-1)  # [N, H', W', C, k*k] with (kh, kw) minor
    return cols.reshape(n, ho, wo, c * k * k)


def _pool2(x, ceil: bool, fill, xp=np):
    """2x2 max-pool of ``[N, H, W, C]`` (``ceil``: the odd last row/column is kept, padded with ``fill``),
    with NumPy (``xp=np``) or JAX (``xp=jnp``)."""
    n, h, w, c = x.shape
    if ceil and (h % 2 or w % 2):
        x = xp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=fill)
        h, w = x.shape[1:3]
    h2, w2 = h // 2, w // 2
    return x[:, :2 * h2, :2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def _sums_to_bits(d, st: Stage, xp=np):
    """A binary layer's integer sums ``D`` -> its output bits: pool ``D`` (when pooled before the
    threshold), ``D >= threshold`` (``<=`` where flipped), pool the bits (when pooled after)."""
    if st.pool == "sums":
        d = _pool2(d, st.ceil_pool, np.iinfo(np.int32).min, xp)
    x = xp.where(st.flip, d <= st.threshold, d >= st.threshold).astype(xp.uint8)
    if st.pool == "bits":
        x = _pool2(x, st.ceil_pool, 0, xp)
    return x


def xnor_popcount_sums(patch_bits: np.ndarray, weight_bits: np.ndarray) -> np.ndarray:
    """``D = K - 2 * popcount(a XOR w)``: ``[..., K] x [C_out, K] -> [..., C_out]`` int32 (NumPy, packed bytes)."""
    k = patch_bits.shape[-1]
    a = np.packbits(patch_bits, axis=-1)
    wb = np.packbits(weight_bits, axis=-1)
    pc = np.bitwise_count(a[..., None, :] ^ wb).sum(-1, dtype=np.int32)
    return k - 2 * pc


def first_layer_input(images_u8: np.ndarray, folded: FoldedModel) -> np.ndarray:
    """Bits (binary first layer, encoded) or normalized float32 pixels (float first layer)."""
    if folded.stages[0].kind == "binary_conv":
        if folded.input_encoding == "none":
            raise ExportError("a binary first layer needs an input encoding (input_encoding thermometer/bitplanes)")
        return (np.asarray(encoding.encode(jnp.asarray(images_u8), folded.input_encoding, folded.encoding_levels))
                > 0).astype(np.uint8)
    return np.asarray(data_lib.normalize(jnp.asarray(images_u8), data_lib.get_dataset_info(folded.dataset)))


def run_numpy(folded: FoldedModel, images_u8: np.ndarray, trace: bool = False) -> tuple[np.ndarray, list[dict]]:
    """The folded model on ``[N, H, W, C] uint8`` images: ``(logits [N, classes] float32, per-layer trace)``.

    The trace holds, per stage: ``input`` bits, ``sums`` (integer D before pooling/threshold) and
    ``output`` bits (after threshold and pooling)."""
    x = first_layer_input(images_u8, folded)
    records = []
    for st in folded.stages:
        rec = {"input": x} if trace else {}
        if st.kind == "binary_conv":
            d = xnor_popcount_sums(patches(pad_bits(x, st.pad, st.pad_bit), st.kernel_size, st.stride), st.weight_bits)
            rec["sums"] = d
            x = _sums_to_bits(d, st)
        elif st.kind == "float_conv":
            y = jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(st.weights), (st.stride,) * 2,
                                             ((st.pad, st.pad),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            y = np.asarray(y, np.float32)
            if st.pool == "sums":
                y = _pool2(y, st.ceil_pool, -np.inf)
            a, b = st.affine
            x = ((y.astype(np.float64) * a + b) >= 0).astype(np.uint8)
            if st.pool == "bits":
                x = _pool2(x, st.ceil_pool, 0)
        else:
            flat = x.reshape(x.shape[0], -1)
            if st.kind == "binary_dense":
                d = xnor_popcount_sums(flat, st.weight_bits)
                rec["sums"] = d
                x = d.astype(np.float32) * st.logit_scale + st.bias
            else:
                x = (2.0 * flat.astype(np.float32) - 1.0) @ st.weights + st.bias
        if trace:
            rec["output"] = x
            records.append(rec)
    return x, records


# ------------------------------------------------------------------------------------ JAX engine


def pack_bits_u32(bits: jax.Array) -> jax.Array:
    """``[..., K] {0,1} -> [..., ceil(K/32)] uint32``: bit ``i`` of word ``i // 32`` is index ``i``."""
    k = bits.shape[-1]
    words = -(-k // 32)
    b = jnp.pad(bits.astype(jnp.uint32), [(0, 0)] * (bits.ndim - 1) + [(0, 32 * words - k)])
    b = b.reshape(*bits.shape[:-1], words, 32)
    return jnp.sum(b << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def _jax_patches(x: jax.Array, k: int, stride: int) -> jax.Array:
    n, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    cols = jnp.stack([x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
                      for i in range(k) for j in range(k)], axis=-1)
    return cols.reshape(n, ho, wo, c * k * k)


def _jax_pad_bits(x: jax.Array, pad: int, pad_bit: str) -> jax.Array:
    """``pad_bits`` for traced arrays: the border comes from a constant frame, the interior from ``x``."""
    if pad == 0:
        return x
    frame = jnp.asarray(pad_bits(np.zeros((1, *x.shape[1:]), np.uint8), pad, pad_bit))
    inside = jnp.zeros(frame.shape[1:3], bool).at[pad:-pad, pad:-pad].set(True)[None, :, :, None]
    return jnp.where(inside, jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), frame)


def packed_popcount_xor(a: jax.Array, w: jax.Array) -> jax.Array:
    """``popcount(a XOR w)`` summed over words: ``[..., W] x [C_out, W] uint32 -> [..., C_out] int32``.

    Written as a sum over the ``W`` words of elementwise ``[..., C_out]`` terms (one fused loop, the
    output channels vectorized) rather than a reduction over the minor word axis: 15x faster on CPU.
    """
    wt = w.T
    acc = jnp.zeros((*a.shape[:-1], w.shape[0]), jnp.int32)
    for i in range(a.shape[-1]):
        acc = acc + jax.lax.population_count(a[..., i:i + 1] ^ wt[i]).astype(jnp.int32)
    return acc


def make_jax_engine(folded: FoldedModel):
    """A jitted ``engine(first_layer_input) -> logits`` running XNOR + ``lax.population_count`` on
    packed uint32 words (the float first layer, if any, as a float32 conv)."""
    consts = []
    for st in folded.stages:
        if st.weight_bits is not None:
            consts.append(pack_bits_u32(jnp.asarray(st.weight_bits)))
        else:
            consts.append(None)

    def engine(x):
        for st, wp in zip(folded.stages, consts):
            if st.kind in ("binary_conv", "binary_dense"):
                if st.kind == "binary_conv":
                    a = pack_bits_u32(_jax_patches(_jax_pad_bits(x, st.pad, st.pad_bit), st.kernel_size, st.stride))
                else:
                    a = pack_bits_u32(x.reshape(x.shape[0], -1))
                d = st.fan_in - 2 * packed_popcount_xor(a, wp)
                if st.kind == "binary_dense":
                    x = d.astype(jnp.float32) * st.logit_scale + st.bias
                    continue
                x = _sums_to_bits(d, st, jnp)
            elif st.kind == "float_conv":
                y = jax.lax.conv_general_dilated(x, jnp.asarray(st.weights), (st.stride,) * 2, ((st.pad, st.pad),) * 2,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                if st.pool == "sums":
                    y = _pool2(y, st.ceil_pool, -jnp.inf, jnp)
                a, b = st.affine
                x = (y * jnp.asarray(a, jnp.float32) + jnp.asarray(b, jnp.float32) >= 0).astype(jnp.uint8)
                if st.pool == "bits":
                    x = _pool2(x, st.ceil_pool, 0, jnp)
            else:
                x = (2.0 * x.reshape(x.shape[0], -1).astype(jnp.float32) - 1.0) @ st.weights + st.bias
        return x

    return jax.jit(engine)


# --------------------------------------------------------------------------------- loading, files


def load_trained(checkpoint_dir: str, which: str = "best") -> tuple[nnx.Module, ml_collections.ConfigDict, int]:
    """The model of a trained run's workdir (its ``config.json`` and ``best``/``latest`` checkpoint),
    rebuilt in float32 and eval mode; returns ``(model, config, step)``."""
    trainer.quiet_orbax_logs()
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        raise ckpt.CheckpointError(f"{checkpoint_dir!r} has no config.json: pass the workdir of a training run")
    trained = ml_collections.ConfigDict(json.load(open(path, encoding="utf-8")))
    config = trained.copy_and_resolve_references()
    config.half_precision = False  # the export is defined on the float32 model (same parameters)
    config.fusion_barriers = "off"
    mesh = trainer.make_mesh(jax.devices()[:1])
    tx = trainer.make_optimizer(config, trainer.learning_rate_schedule(config, 1))
    graphdef, abstract = trainer.init_train_state(config, tx, mesh)
    state, _ = trainer.restore_train_state(trained, checkpoint_dir, which, abstract, mesh)
    model = nnx.merge(graphdef, state.params, state.batch_stats)
    model.eval()
    return model, config, int(state.step)


def bits_line(bits: np.ndarray) -> str:
    return "".join("1" if b else "0" for b in np.asarray(bits).ravel())


def hex_line(bits: np.ndarray) -> str:
    """The bit vector (MSB = index 0) left-padded with zeros to a multiple of 4, as hex digits."""
    s = bits_line(bits)
    s = "0" * (-len(s) % 4) + s
    return "".join(f"{int(s[i:i + 4], 2):x}" for i in range(0, len(s), 4))


def _write_lines(path: str, lines) -> int:
    lines = list(lines)
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


def write_export(folded: FoldedModel, out_dir: str, images_u8: np.ndarray, labels: np.ndarray,
                 source: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest, packed weights, thresholds and golden vectors of ``images_u8``."""
    os.makedirs(out_dir, exist_ok=True)
    for sub in ("weights", "thresholds", "golden"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    _, trace = run_numpy(folded, images_u8, trace=True)
    layers = []
    for i, st in enumerate(folded.stages):
        entry: dict[str, Any] = {"index": i, "kind": st.kind, "input_shape": list(st.in_shape)}
        if st.weight_bits is not None:
            entry.update(fan_in=st.fan_in, out_channels=int(st.weight_bits.shape[0]),
                         weights_memb=f"weights/L{i}.memb", weights_memh=f"weights/L{i}.memh")
            _write_lines(os.path.join(out_dir, entry["weights_memb"]), map(bits_line, st.weight_bits))
            _write_lines(os.path.join(out_dir, entry["weights_memh"]), map(hex_line, st.weight_bits))
        if st.kind.endswith("conv"):
            entry.update(kernel_size=st.kernel_size, stride=st.stride, padding=st.pad, pad_bits=st.pad_bit,
                         pool=st.pool, pool_ceil_mode=st.ceil_pool)
        if st.kind == "binary_conv":
            entry.update(thresholds=f"thresholds/L{i}.txt", thresholds_memb=f"thresholds/L{i}_thr.memb",
                         flips_memb=f"thresholds/L{i}_flip.memb",
                         rule="bit = (D <= T) if flip else (D >= T), D = K - 2*popcount(a XOR w)")
            _write_lines(os.path.join(out_dir, entry["thresholds"]),
                         (f"{int(t)} {int(f)}" for t, f in zip(st.threshold, st.flip)))
            _write_lines(os.path.join(out_dir, entry["thresholds_memb"]),
                         (format(int(t) & 0xFFFFFFFF, "032b") for t in st.threshold))
            _write_lines(os.path.join(out_dir, entry["flips_memb"]), (str(int(f)) for f in st.flip))
        if st.kind == "float_conv":
            entry.update(note="full precision first layer: float32 conv on normalized pixels, then "
                              "bit = (A*y + B >= 0)", weights_npz=f"weights/L{i}_float.npz")
            np.savez(os.path.join(out_dir, entry["weights_npz"]), kernel_hwio=st.weights, A=st.affine[0], B=st.affine[1])
        if st.kind == "binary_dense":
            entry.update(rule="logits = D * logit_scale + bias (float32)", logit_scale=st.logit_scale.tolist(),
                         bias=st.bias.tolist())
        if st.kind == "float_dense":
            entry.update(note="full precision last layer: logits = (2a - 1) @ W + b (float32)",
                         weights_npz=f"weights/L{i}_float.npz")
            np.savez(os.path.join(out_dir, entry["weights_npz"]), kernel=st.weights, bias=st.bias)
        layers.append(entry)
    for n in range(len(images_u8)):
        gdir = os.path.join(out_dir, "golden", f"img{n}")
        os.makedirs(gdir, exist_ok=True)
        for i, (st, rec) in enumerate(zip(folded.stages, trace)):
            inp = rec["input"][n]
            if inp.dtype == np.uint8:  # bits: one line per pixel (h, w), channel 0 first
                flat_in = inp.reshape(-1, inp.shape[-1]) if inp.ndim == 3 else inp.reshape(1, -1)
                _write_lines(os.path.join(gdir, f"L{i}_in.txt"), (" ".join(bits_line(r)) for r in flat_in))
                _write_lines(os.path.join(gdir, f"L{i}_in.memb"), map(bits_line, flat_in))
            if "sums" in rec:
                d = rec["sums"][n]
                d2 = d.reshape(-1, d.shape[-1]) if d.ndim == 3 else d.reshape(1, -1)
                _write_lines(os.path.join(gdir, f"L{i}_sum.txt"), (" ".join(map(str, r)) for r in d2))
            out = rec["output"][n]
            if st.kind.endswith("conv"):
                o2 = out.reshape(-1, out.shape[-1])
                _write_lines(os.path.join(gdir, f"L{i}_out.txt"), (" ".join(bits_line(r)) for r in o2))
                _write_lines(os.path.join(gdir, f"L{i}_out.memb"), map(bits_line, o2))
            else:
                _write_lines(os.path.join(gdir, f"L{i}_logits.txt"), (" ".join(f"{v:.9g}" for v in out),))
            if st.kind == "binary_conv":  # for the RTL check: im2col patches and per-position bits before pooling
                p = patches(pad_bits(rec["input"][n:n + 1], st.pad, st.pad_bit), st.kernel_size, st.stride)[0]
                p = p.reshape(-1, p.shape[-1])
                _write_lines(os.path.join(gdir, f"L{i}_patches.memb"), map(bits_line, p))
                d = xnor_popcount_sums(p, st.weight_bits)
                pre = np.where(st.flip, d <= st.threshold, d >= st.threshold)
                _write_lines(os.path.join(gdir, f"L{i}_prepool.memb"), map(bits_line, pre))
    packed_bytes = sum(math.ceil(st.weight_bits.size / 8) for st in folded.stages if st.weight_bits is not None)
    float_bytes = sum(4 * st.weights.size for st in folded.stages if st.weights is not None)
    thr_bytes = sum(4 * st.threshold.size for st in folded.stages if st.threshold is not None)
    manifest = {
        "format": "irnet_jax binary export v1", "source": source, "model": folded.model, "dataset": folded.dataset,
        "input": {"encoding": folded.input_encoding, "levels": folded.encoding_levels,
                  "image": "uint8 [H, W, C]", "planes_order": "channel c, level j -> plane c * levels + j"},
        "bit_convention": "bit 1 = +1, bit 0 = -1 (the original's text style)",
        "index_order": {"conv_weights_and_patches": "(c, kh, kw), channel-major (FINN uses (kh, kw, c))",
                        "feature_maps": "(h, w, c)", "dense_input": "feature map flattened in (h, w, c) order"},
        "text_files": "MSB first: the first digit is index 0; .memb one line per output channel, exactly K digits",
        "memh": "the K-bit vector left-padded with zeros to a multiple of 4 bits, MSB (index 0 side) first",
        "packed_words": "uint32; bit i of word i // 32 is index i (the JAX/NumPy engines)",
        "folding": "z = A*y + B (BatchNorm: A = gamma/sqrt(var+eps), B = beta - mean*A; offset: A = 1); "
                   "y = s*D; M = A*s; bit = D >= ceil(-B/M) (M > 0), D <= floor(-B/M) (M < 0, flip), "
                   "constant (M = 0); max-pool before the norm pools D, after it ORs bits",
        "golden": {"images": len(images_u8), "labels": [int(l) for l in labels],
                   "files": "golden/img<n>/L<i>_{in,sum,out}.txt (text) and .memb; L<i>_patches.memb, "
                            "L<i>_prepool.memb (per output position before pooling, for RTL)"},
        "layers": layers,
        "size_bytes": {"packed_binary_weights": packed_bytes, "float_weights": float_bytes,
                       "thresholds_int32": thr_bytes},
    }
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def model_predictions(model: nnx.Module, config: ml_collections.ConfigDict, images_u8: np.ndarray,
                      batch: int = 500) -> np.ndarray:
    """The trained float32 model's predictions (eval mode) on uint8 images."""
    info = data_lib.get_dataset_info(config.dataset)
    graphdef, state = nnx.split(model)

    @jax.jit
    def predict(state, x):
        x = data_lib.preprocess(x, info, None, jnp.float32, config.input_encoding, config.encoding_levels)
        return jnp.argmax(nnx.merge(graphdef, state, copy=True)(x), -1)

    return np.concatenate([np.asarray(predict(state, jnp.asarray(images_u8[i:i + batch])))
                           for i in range(0, len(images_u8), batch)])


def engine_predictions(folded: FoldedModel, images_u8: np.ndarray, batch: int = 250) -> np.ndarray:
    """The packed JAX engine's predictions on uint8 images, ``batch`` at a time."""
    engine = make_jax_engine(folded)
    out = [np.asarray(jnp.argmax(engine(jnp.asarray(first_layer_input(images_u8[i:i + batch], folded))), -1))
           for i in range(0, len(images_u8), batch)]
    return np.concatenate(out)


def benchmark_engine(folded: FoldedModel, model: nnx.Module, config: ml_collections.ConfigDict,
                     images_u8: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """Median images/s of the packed JAX engine and of the float model's jitted eval forward, one batch."""
    info = data_lib.get_dataset_info(config.dataset)
    graphdef, state = nnx.split(model)
    float_fwd = jax.jit(lambda st, x: nnx.merge(graphdef, st, copy=True)(
        data_lib.preprocess(x, info, None, jnp.float32, config.input_encoding, config.encoding_levels)))
    engine = make_jax_engine(folded)
    x_u8 = jnp.asarray(images_u8)
    x_in = jnp.asarray(first_layer_input(images_u8, folded))

    def rate(fn) -> float:
        return len(images_u8) / median_seconds(fn, repeats)

    e, f = rate(lambda: engine(x_in)), rate(lambda: float_fwd(state, x_u8))
    return {"batch": len(images_u8), "engine_images_per_second": e, "float_images_per_second": f,
            "engine_ms_per_image": 1e3 / e, "backend": jax.default_backend()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="workdir of a training run")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--which", default="best", choices=("best", "latest"))
    parser.add_argument("--num_images", type=int, default=4, help="test images with golden vectors")
    parser.add_argument("--verify", type=int, default=1000, help="test images on which engine == model is checked")
    parser.add_argument("--data_dir", default="", help="TFDS data dir (default: the run's, else $TFDS_DATA_DIR)")
    parser.add_argument("--bench_batch", type=int, default=0,
                        help="if > 0: also time the packed engine against the float model's forward at this batch")
    args = parser.parse_args(argv)
    model, config, step = load_trained(args.checkpoint, args.which)
    folded = fold(model, config)
    test = data_lib.load_tfds_split(config.dataset, "test", args.data_dir or config.data_dir)
    manifest = write_export(folded, args.out, test.images[: args.num_images], test.labels[: args.num_images],
                            {"checkpoint": os.path.abspath(args.checkpoint), "step": step, "which": args.which})
    n = min(args.verify, len(test.labels))
    engine = engine_predictions(folded, test.images[:n])
    reference = model_predictions(model, config, test.images[:n])
    manifest["verification"] = {"images": n, "engine_equals_model": float(np.mean(engine == reference)),
                                "engine_test_accuracy": float(np.mean(engine == test.labels[:n])),
                                "model_test_accuracy": float(np.mean(reference == test.labels[:n]))}
    if args.bench_batch > 0:
        manifest["throughput"] = benchmark_engine(folded, model, config, test.images[: args.bench_batch])
    checkpoint_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in
                           os.walk(os.path.join(ckpt.checkpoint_dir(args.checkpoint), str(step))) for f in fs)
    manifest["size_bytes"]["float_checkpoint_step_dir"] = checkpoint_bytes
    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    print(json.dumps({"out": args.out, **manifest["verification"], **manifest["size_bytes"]}))


if __name__ == "__main__":
    main()
