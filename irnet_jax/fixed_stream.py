"""The int32 fixed-point residual stream of a Bi-Real ResNet trained with ``residual_frac_bits = F``.

Such a model computes, in eval mode, exactly this integer arithmetic (and its export writes out the
same integers, so the two agree bit for bit); in training it rounds the stream to the same grid with
a straight-through gradient (``ste_round``). The stream ``q`` is int32, value ``q 2**-F``, in
``[-2**F, 2**F]`` (the hardtanh's range).

* Stem (float conv ``W [k, k, C, O]`` on ``x_c = p_c / (255 std_c) - mean_c / std_c`` of pixels
  ``p``, norm ``z = A_o y + B_o``, hardtanh): with ``W' = W / (255 std)`` and ``b[r, c, o]`` the conv
  of the constant image ``-mean / std`` (zero-padded),
  ``Wq_o = round(A_o W'_o 2**G_o)``, ``Y = conv(p, Wq)`` (exact integers, ``|Y| < 2**29``),
  ``q = clamp(floor((Y + C[r, c, o] + 2**(S_o - 1)) / 2**S_o), -2**F, 2**F)``, ``S_o = G_o - F``,
  ``C = round((A_o b + B_o) 2**G_o)``.
* Binary conv (weight signs ``sign(W - mean W)`` per output channel, scale ``s``) with integer sums
  ``D`` (``|D| <= K``, the fan-in):
  ``t = clamp(floor((M_o D + C_o + 2**(S_o - 1)) / 2**S_o), -2**(F+1), 2**(F+1))`` with
  ``M = round(A s 2**(F+S))``, ``C = round(B 2**(F+S))``; then ``q' = clamp(t + shortcut(q), -2**F, 2**F)``.
* Head: ``v = float32(sum_hw q) float32(2**-F / (H W))``, ``v A + B`` (head norm), the float classifier.

Every int32 intermediate is exact: ``|M| K < 2**30`` and ``|C| < 2**29`` (so ``|M D + C + 2**(S-1)| <
2**31``), ``S`` in ``[1, 28]``; the stem's ``|Y| < 2**29`` and ``|C| <= 2**30``. Where a bound binds (a
huge scale, a dead channel), the integers saturate: model and export still agree. ``|M| K < 2**30``
leaves ``M`` about ``30 - log2 K`` bits (20 for ResNet-20's 64-channel convs), so ``t`` is within one
unit of ``2**F (A s D + B)`` up to about ``F = 16``; a larger ``F`` adds no precision.

The integers (weight signs, ``M``, ``C``, ``S``, ``Wq``, the head's ``A, B``) are derived from the raw
parameters on the host, in float64 NumPy (``derive_integers``): the model calls it through
``jax.pure_callback`` (``stream_integers``), the export directly, so both get the same integers on
every platform and under any compilation (a float32 derivation inside ``jit`` rounds differently from
the same code run eagerly).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

FRAC_BITS_RANGE = (1, 22)  # t up to 2**(F+1) plus a shortcut of 2**F stays inside int32
PRODUCT_LIMIT = 2**30  # |M| * K
WIDE_BOUND = 2**29  # |t| and |short| of a block with an option-B shortcut
OFFSET_LIMIT = 2**29  # |C| of a binary conv, |Y| of the stem
MAX_SHIFT = 28
FLOAT32_EXACT = 2**24  # integers below this are exact in float32


class Requantizer(NamedTuple):
    """``q = clamp(floor((M D + C + 2**(S-1)) / 2**S), -bound, bound)`` per channel (int32 arrays;
    ``offset`` is ``[C]`` or ``[H, W, C]``, one per output position)."""

    multiplier: Array
    offset: Array
    shift: Array


class Projection(NamedTuple):
    """An option-B shortcut's integers (module docstring), int32: ``weights [C, O]`` (``Wq``), ``carry``
    (``E``), ``remainder`` (``R``) and ``shift`` (``G``), each ``[O]``."""

    weights: Array
    carry: Array
    remainder: Array
    shift: Array


class NormParams(NamedTuple):
    """A BatchNorm's eval-mode parameters, float32 ``[C]`` (``gamma = 1``, ``beta = 0`` where absent)."""

    mean: Array
    var: Array
    gamma: Array
    beta: Array


class StreamParams(NamedTuple):
    """The raw parameters the integers derive from (float32, as trained)."""

    stem_kernel: Array  # HWIO
    stem_norm: NormParams
    conv_kernels: tuple[Array, ...]  # HWIO, every binary conv in stream order
    conv_scales: tuple[Array, ...]  # [O]: the learned scale (ones where weight_scale is not "learned")
    conv_norms: tuple[NormParams, ...]
    head_norm: NormParams | None
    shortcut_kernels: tuple[Array | None, ...] = ()  # per block: an option-B shortcut's HWIO 1x1 kernel
    shortcut_norms: tuple[NormParams | None, ...] = ()


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """What the integers depend on besides the parameters (static)."""

    frac_bits: int
    pixel_mean: tuple[float, ...]
    pixel_std: tuple[float, ...]
    input_hw: tuple[int, int]
    stem_stride: int
    stem_pad: int
    weight_scale: str  # of every binary conv: one of layers.WEIGHT_SCALES (checked when it was built)
    norm_eps: float

    def stem_output_hw(self, kernel_size: int) -> tuple[int, int]:
        return tuple((n + 2 * self.stem_pad - kernel_size) // self.stem_stride + 1 for n in self.input_hw)


class StreamIntegers(NamedTuple):
    """Everything the eval-mode stream computes with (``derive_integers``)."""

    stem_weights: Array  # int32 HWIO Wq
    stem: Requantizer  # M = 1, C [H', W', O], S [O]
    conv_signs: tuple[Array, ...]  # float32 +-1 HWIO
    convs: tuple[Requantizer, ...]  # [O] each
    head_scale: Array  # float32 [C]: the head norm's A (ones without one)
    head_bias: Array  # float32 [C]: B (zeros without one)
    projections: tuple[Projection | None, ...] = ()  # per block: its option-B shortcut, else None


# ---- the integer arithmetic (JAX, inside the model) ----


def ste_round(x: Array, frac_bits: int) -> Array:
    """``round(x 2**F) 2**-F`` (in float32) forward, identity backward."""
    scale = 2.0**frac_bits
    rounded = (jnp.round(x.astype(jnp.float32) * scale) / scale).astype(x.dtype)
    return x + jax.lax.stop_gradient(rounded - x)


def requantize(d: Array, r: Requantizer, bound: int) -> Array:
    """int32 ``[..., C]`` sums -> int32 ``clamp(floor((M D + C + 2**(S-1)) / 2**S), -bound, bound)``."""
    one = jnp.int32(1)
    acc = d.astype(jnp.int32) * r.multiplier + r.offset + jnp.left_shift(one, r.shift - 1)
    return jnp.clip(jnp.right_shift(acc, r.shift), -bound, bound).astype(jnp.int32)


def projection_part_bits(frac_bits: int) -> int:
    """``P = ceil(F / 2)``: the stream ``q`` splits into ``q_hi 2**P + q_lo`` with both parts within ``2**P``."""
    return (frac_bits + 1) // 2


def project(q: Array, p: Projection, stride: int, frac_bits: int) -> Array:
    """An option-B shortcut of the int32 stream ``q [B, H, W, C]``: ``[B, H/s, W/s, O]`` int32 (module
    docstring), with ``Y = Y_hi 2**P + Y_lo`` never formed: ``floor((Y + R + 2**(G-1)) / 2**G) =
    floor((Y_hi + floor((Y_lo + R + 2**(G-1)) / 2**P)) / 2**(G-P))``."""
    part = projection_part_bits(frac_bits)
    q = q[:, ::stride, ::stride, :]
    hi, lo = jnp.right_shift(q, part), jnp.bitwise_and(q, (1 << part) - 1)
    y_hi, y_lo = (jnp.einsum("nhwc,co->nhwo", v, p.weights, preferred_element_type=jnp.int32) for v in (hi, lo))
    low = jnp.right_shift(y_lo + p.remainder + jnp.left_shift(jnp.int32(1), p.shift - 1), part)
    return jnp.clip(jnp.right_shift(y_hi + low, p.shift - part) + p.carry, -WIDE_BOUND, WIDE_BOUND)


def pixel_part_bits(fan_in: int) -> int:
    """``P``: a conv of uint8 pixels with integer weights in ``[0, 2**P)`` stays below 2**24 (exact
    in float32)."""
    return int(np.floor(np.log2((FLOAT32_EXACT - 1) / (255 * fan_in))))


def split_parts(wq: Array, part_bits: int) -> tuple[Array, Array]:
    """``(hi, lo)`` with ``Wq = hi 2**P + lo``, ``0 <= lo < 2**P`` (any integer array, NumPy or JAX)."""
    hi = wq // (1 << part_bits)
    return hi, wq - hi * (1 << part_bits)


def stem_sums(pixels: Array, wq: Array, stride: int, pad: int) -> Array:
    """``Y = conv(p, Wq)`` int32 of pixels ``[N, H, W, C]`` (float, 0..255): two exact float32 convs."""
    k, _, c_in, _ = wq.shape
    part_bits = pixel_part_bits(k * k * c_in)
    hi, lo = split_parts(wq, part_bits)
    p = pixels.astype(jnp.float32)
    y_hi, y_lo = (_conv(p, w.astype(jnp.float32), stride, pad).astype(jnp.int32) for w in (hi, lo))
    return y_hi * (1 << part_bits) + y_lo


def _conv(x: Array, w: Array, stride: int, pad: int) -> Array:
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,  # exact float32 (no TF32/bfloat16 passes on a GPU/TPU)
    )


def stream_integers(params: StreamParams, layout: StreamLayout) -> StreamIntegers:
    """``derive_integers`` on the host (``jax.pure_callback``): usable inside ``jit``, the same
    integers as calling it directly."""
    return jax.pure_callback(
        functools.partial(derive_integers, layout=layout),
        integer_shapes(params, layout),
        params,
        vmap_method="broadcast_all",
    )


def integer_shapes(params: StreamParams, layout: StreamLayout) -> StreamIntegers:
    """The ``jax.ShapeDtypeStruct`` of each array ``derive_integers`` returns."""

    def spec(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(tuple(shape), dtype)

    k, _, _, c_out = params.stem_kernel.shape
    per_channel = [spec(kernel.shape[-1:]) for kernel in params.conv_kernels]
    head = params.conv_kernels[-1].shape[-1]
    projections = tuple(
        None if kernel is None else Projection(spec(kernel.shape[2:]), *([spec(kernel.shape[-1:])] * 3))
        for kernel in params.shortcut_kernels
    )
    return StreamIntegers(
        stem_weights=spec(params.stem_kernel.shape),
        stem=Requantizer(spec((c_out,)), spec((*layout.stem_output_hw(k), c_out)), spec((c_out,))),
        conv_signs=tuple(spec(kernel.shape, jnp.float32) for kernel in params.conv_kernels),
        convs=tuple(Requantizer(s, s, s) for s in per_channel),
        head_scale=spec((head,), jnp.float32),
        head_bias=spec((head,), jnp.float32),
        projections=projections,
    )


# ---- the derivation (float64 NumPy, on the host) ----


def derive_integers(params: StreamParams, layout: StreamLayout) -> StreamIntegers:
    """The stream's integers from the raw parameters (module docstring), NumPy in and out."""
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    f = layout.frac_bits
    a, b = norm_affine(p.stem_norm, layout.norm_eps)
    wq, stem = stem_integers(p.stem_kernel, a, b, layout, f)
    signs, convs = [], []
    for kernel, learned, norm in zip(p.conv_kernels, p.conv_scales, p.conv_norms):
        sign, s = binary_weights(kernel, layout.weight_scale, learned)
        a, b = norm_affine(norm, layout.norm_eps)
        signs.append(sign.astype(np.float32))
        convs.append(requantizer(a * s, b, int(np.prod(kernel.shape[:3])), f))
    c = p.conv_kernels[-1].shape[-1]
    head_a, head_b = (np.ones(c), np.zeros(c)) if p.head_norm is None else norm_affine(p.head_norm, layout.norm_eps)
    projections = tuple(
        None if kernel is None else projection_integers(kernel, *norm_affine(norm, layout.norm_eps), f)
        for kernel, norm in zip(p.shortcut_kernels, p.shortcut_norms)
    )
    head = (head_a.astype(np.float32), head_b.astype(np.float32))
    return StreamIntegers(wq, stem, tuple(signs), tuple(convs), *head, projections)


def norm_affine(norm: NormParams, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` float64 with ``norm(y) = A y + B``: ``A = gamma / sqrt(var + eps)``, ``B = beta - mean A``."""
    a = norm.gamma / np.sqrt(norm.var + np.float64(np.float32(eps)))
    return a, norm.beta - norm.mean * a


def binary_weights(kernel: np.ndarray, weight_scale: str, learned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Libra-PB's ``(signs, s)`` of an HWIO kernel: ``sign(W - mean W)`` per output channel (0 -> +1)
    and ``s = 2**round(log2(mean |W_std|))`` (``"power_of_two"``, ``W_std`` the channel standardized,
    1 for a constant channel), the learned scale, or 1."""
    centred = kernel - kernel.mean(axis=(0, 1, 2))
    signs = np.where(centred >= 0, 1.0, -1.0)
    c_out = kernel.shape[-1]
    if weight_scale == "learned":
        return signs, learned
    if weight_scale == "none":
        return signs, np.ones(c_out)
    var = np.mean(np.square(centred), axis=(0, 1, 2))
    mean_abs = np.mean(np.abs(centred), axis=(0, 1, 2)) / np.sqrt(var + 1e-12)
    safe = np.where(mean_abs > 0, mean_abs, 1.0)
    return signs, np.exp2(np.round(np.log2(safe)))


def _floor_log2(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.floor(np.log2(np.maximum(x, 1e-300)))


def requantizer(scale: np.ndarray, bias: np.ndarray, fan_in: int, frac_bits: int) -> Requantizer:
    """The int32 ``(M, C, S)`` of hardtanh-bound ``scale * D + bias`` (float64 ``[C]``), ``|D| <= fan_in``."""
    scale, bias = np.asarray(scale, np.float64), np.asarray(bias, np.float64)
    reach = np.abs(scale) * fan_in + 2.0
    bias = np.clip(bias, -reach, reach)
    m_limit = (PRODUCT_LIMIT - 1) // fan_in
    with np.errstate(divide="ignore"):
        s_m = _floor_log2(m_limit / (np.abs(scale) * 2.0**frac_bits))
    s_c = _floor_log2((OFFSET_LIMIT - 1) / (np.maximum(np.abs(bias), 1.0) * 2.0**frac_bits))
    shift = np.clip(np.minimum(s_m, s_c), 1, MAX_SHIFT)
    unit = np.exp2(frac_bits + shift)
    multiplier = np.clip(np.round(scale * unit), -m_limit, m_limit)
    offset = np.clip(np.round(bias * unit), -(OFFSET_LIMIT - 1), OFFSET_LIMIT - 1)
    return Requantizer(*(v.astype(np.int32) for v in (multiplier, offset, shift)))


def projection_integers(kernel: np.ndarray, scale: np.ndarray, bias: np.ndarray, frac_bits: int) -> Projection:
    """The ``Projection`` of an option-B shortcut: 1x1 HWIO ``kernel``, norm ``scale``/``bias`` (float64)."""
    folded = kernel[0, 0] * scale[None, :]
    part = projection_part_bits(frac_bits)
    limit = 2.0 ** (29 - part)  # sum |Wq| below it (module docstring)
    reach = np.sum(np.abs(folded), axis=0)
    # Rounding adds at most 1/2 per weight; a channel whose G is raised to P has its weights scaled down
    # to the bound (a reach this large saturates the hardtanh anyway).
    g_fit = _floor_log2((limit - folded.shape[0]) / np.maximum(reach, 1e-30))  # (any G above MAX_SHIFT is clipped)
    g = np.clip(g_fit, part, MAX_SHIFT)
    wq = np.round(folded * np.exp2(np.minimum(g_fit, g)))
    cut = WIDE_BOUND * 2.0**-frac_bits + reach + 1.0  # beyond it the shortcut saturates for every input
    c = np.round(np.clip(bias, -cut, cut) * np.exp2(frac_bits + g))
    carry = np.floor(c / np.exp2(g))
    remainder = c - carry * np.exp2(g)
    ints = (wq, np.clip(carry, -WIDE_BOUND, WIDE_BOUND), remainder, g)
    return Projection(*(v.astype(np.int32) for v in ints))


def stem_integers(
    kernel: np.ndarray, scale: np.ndarray, bias: np.ndarray, layout: StreamLayout, frac_bits: int
) -> tuple[np.ndarray, Requantizer]:
    """``(Wq int32 HWIO, Requantizer(M = 1, C [H', W', O], S [O]))`` of the stem (module docstring)."""
    k, _, c_in, c_out = kernel.shape
    fan_in = k * k * c_in
    std = np.asarray(layout.pixel_std, np.float64)
    folded = kernel / (255.0 * std)[None, None, :, None] * scale[None, None, None, :]
    reach = 255.0 * np.sum(np.abs(folded), axis=(0, 1, 2))  # max |A conv(p, W')|
    # 2**g reach <= 2**29 - 255 K keeps |Y| < 2**29 after rounding; a channel whose g is raised to F + 1
    # has its weights scaled down to that bound (a reach this large saturates the hardtanh anyway).
    g_fit = _floor_log2((OFFSET_LIMIT - 255 * fan_in) / np.maximum(reach, 1e-30))  # (any G above MAX_SHIFT is clipped)
    g = np.clip(g_fit, frac_bits + 1, MAX_SHIFT)
    wq = np.round(folded * np.exp2(np.minimum(g_fit, g)))
    beta = -np.asarray(layout.pixel_mean, np.float64) / std
    b = constant_image_conv(kernel, beta, layout.input_hw, layout.stem_stride, layout.stem_pad)
    z0 = np.clip(scale * b + bias, -(reach + 2.0), reach + 2.0)
    offset = np.clip(np.round(z0 * np.exp2(g)), -2 * OFFSET_LIMIT, 2 * OFFSET_LIMIT)
    multiplier = np.ones(c_out, np.int32)
    return wq.astype(np.int32), Requantizer(multiplier, offset.astype(np.int32), (g - frac_bits).astype(np.int32))


def constant_image_conv(kernel: np.ndarray, beta: np.ndarray, in_hw: tuple[int, int], stride: int, pad: int):
    """``b [H', W', O]``: the conv of the constant image ``beta [C]`` (zero-padded) with ``kernel``
    HWIO: ``sum over the taps inside the image of W[i, j] . beta``. Which taps are inside depends on
    the output row's and column's border class only (top, interior, bottom for a 3x3 conv with
    padding 1): ``b`` is computed once per class and copied to its positions, so it is the same
    number, bit for bit, at every position of a class."""
    per_tap = np.einsum("ijco,c->ijo", kernel, beta)
    k = kernel.shape[0]

    def inside(n: int) -> tuple[np.ndarray, np.ndarray]:  # ([k, classes] taps inside, class of each output)
        r = np.arange((n + 2 * pad - k) // stride + 1)
        pos = r[None, :] * stride - pad + np.arange(k)[:, None]
        masks, cls = np.unique((pos >= 0) & (pos < n), axis=1, return_inverse=True)
        return masks.astype(np.float64), cls.reshape(-1)

    (rows, row_class), (cols, col_class) = inside(in_hw[0]), inside(in_hw[1])
    per_class = np.einsum("ir,jc,ijo->rco", rows, cols, per_tap)
    return per_class[row_class[:, None], col_class[None, :]]
