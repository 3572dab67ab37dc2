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
* Binary conv with integer sums ``D`` (``|D| <= K``, the fan-in) and scale ``s``:
  ``t = clamp(floor((M_o D + C_o + 2**(S_o - 1)) / 2**S_o), -2**(F+1), 2**(F+1))`` with
  ``M = round(A s 2**(F+S))``, ``C = round(B 2**(F+S))``; then ``q' = clamp(t + shortcut(q), -2**F, 2**F)``.

Every int32 intermediate is exact: ``|M| K < 2**30`` and ``|C| < 2**29`` (so ``|M D + C + 2**(S-1)| <
2**31``), ``S`` in ``[1, 28]``; the stem's ``255 sum_k |Wq_o| < 2**29`` and ``|C| <= 2**30``. Where a
bound binds (a huge scale, a dead channel), the integers saturate: model and export still agree.
``|M| K < 2**30`` leaves ``M`` about ``30 - log2 K`` bits (20 for ResNet-20's 64-channel convs), so
``t`` is within one unit of ``2**F (A s D + B)`` up to about ``F = 16``; a larger ``F`` adds no precision.
The integers are derived from the parameters in float32 by the functions here, which the model and
the export both call (on one platform they give the same integers).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

FRAC_BITS_RANGE = (1, 22)  # t up to 2**(F+1) plus a shortcut of 2**F stays inside int32
PRODUCT_LIMIT = 2**30  # |M| * K
OFFSET_LIMIT = 2**29  # |C| of a binary conv, |Y| of the stem
OFFSET_CLIP = OFFSET_LIMIT - 64  # exact in float32 (2**29 - 1 is not: it rounds to 2**29)
MAX_SHIFT = 28
FLOAT32_EXACT = 2**24  # integers below this are exact in float32


class Requantizer(NamedTuple):
    """``q = clamp(floor((M D + C + 2**(S-1)) / 2**S), -bound, bound)`` per channel (int32 arrays;
    ``offset`` is ``[C]`` or ``[H, W, C]``, one per output position)."""

    multiplier: Array
    offset: Array
    shift: Array


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


def _floor_log2(x: Array) -> Array:
    return jnp.floor(jnp.log2(jnp.maximum(x, 1e-30)))


def requantizer(scale: Array, bias: Array, fan_in: int, frac_bits: int) -> Requantizer:
    """The ``(M, C, S)`` of ``hardtanh``-bound ``scale * D + bias`` (float32 ``[C]``) for ``|D| <= fan_in``."""
    scale, bias = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    bias = jnp.clip(bias, -(jnp.abs(scale) * fan_in + 2.0), jnp.abs(scale) * fan_in + 2.0)
    m_limit = (PRODUCT_LIMIT - 1) // fan_in
    s_m = _floor_log2(m_limit / (jnp.abs(scale) * 2.0**frac_bits))
    s_c = _floor_log2((OFFSET_LIMIT - 1) / (jnp.maximum(jnp.abs(bias), 1.0) * 2.0**frac_bits))
    shift = jnp.clip(jnp.minimum(s_m, s_c), 1, MAX_SHIFT)
    unit = jnp.exp2(frac_bits + shift)
    multiplier = jnp.clip(jnp.round(scale * unit), -m_limit, m_limit)
    offset = jnp.clip(jnp.round(bias * unit), -OFFSET_CLIP, OFFSET_CLIP)
    return Requantizer(multiplier.astype(jnp.int32), offset.astype(jnp.int32), shift.astype(jnp.int32))


def pixel_part_bits(fan_in: int) -> int:
    """``P``: a conv of uint8 pixels with integer weights in ``[0, 2**P)`` stays below 2**24 (exact
    in float32)."""
    return int(np.floor(np.log2((FLOAT32_EXACT - 1) / (255 * fan_in))))


def _conv(x: Array, w: Array, stride: int, pad: int) -> Array:
    return jax.lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,  # exact float32 (no TF32/bfloat16 passes on a GPU/TPU)
    )


def stem_integers(
    kernel: Array, scale: Array, bias: Array, mean, std, in_hw: tuple[int, int], stride: int, pad: int, frac_bits: int
) -> tuple[Array, Requantizer]:
    """``(Wq int32 HWIO, Requantizer(M = 1, C [H', W', O], S [O]))`` of the stem (module docstring)."""
    k, _, c_in, c_out = kernel.shape
    fan_in = k * k * c_in
    inv = 1.0 / (255.0 * jnp.asarray(std, jnp.float32))
    folded = kernel.astype(jnp.float32) * inv[None, None, :, None] * scale[None, None, None, :]
    reach = 255.0 * jnp.sum(jnp.abs(folded), axis=(0, 1, 2))  # max |A conv(p, W')|
    # 2**g reach <= 2**29 - 255 K keeps |Y| < 2**29 after rounding; a channel whose g is raised to F + 1
    # has its weights scaled down to that bound (it saturates the hardtanh).
    g_fit = _floor_log2((OFFSET_LIMIT - 255 * fan_in) / jnp.maximum(reach, 1e-30))
    g = jnp.clip(g_fit, frac_bits + 1, MAX_SHIFT)
    wq = jnp.round(folded * jnp.exp2(jnp.minimum(g_fit, g)))
    beta = -jnp.asarray(mean, jnp.float32) / jnp.asarray(std, jnp.float32)
    ones = jnp.broadcast_to(beta, (1, *in_hw, c_in))
    b = _conv(ones, kernel.astype(jnp.float32), stride, pad)[0]  # [H', W', O]
    z0 = jnp.clip(scale * b + bias, -(reach + 2.0), reach + 2.0)
    offset = jnp.clip(jnp.round(z0 * jnp.exp2(g)), -2 * OFFSET_CLIP, 2 * OFFSET_CLIP)
    shift = (g - frac_bits).astype(jnp.int32)
    return wq.astype(jnp.int32), Requantizer(jnp.ones((c_out,), jnp.int32), offset.astype(jnp.int32), shift)


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
