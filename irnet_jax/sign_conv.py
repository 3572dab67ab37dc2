"""A 1w1a convolution with other products than float multiply-adds: the same numbers, sooner on CPU.

A binary conv multiplies ``x`` with entries in ``{-1, +1}`` (signs; zero padding adds 0s) by weights
``w[kh, kw, c, o] = +-s_o`` (the signs times a per-output-channel scale ``s_o >= 0``). Then

    conv(x, w)[..., o] = s_o * D[..., o],   D = conv(x, sign(w)),

and ``D`` is a sum of ``+-1`` and 0 terms: an integer with ``|D| <= K = kh kw C_in``. Two exact ways
to compute it (``PRODUCTS``):

* ``"int8"``: int8 operands with int32 accumulation (XLA's integer convolution).
* ``"popcount"``: XNOR-popcount on bits packed 32 channels to a uint32 word (``pack_bits_u32``). With
  ``a`` the bits of ``x`` (1 for +1) and ``b`` those of ``sign(w)``, a tap inside the image adds
  ``C_in - 2 popcount(a XOR b)``. A zero-padding tap adds 0 where the packed input holds bits 0 (-1),
  i.e. ``-sum_c sign(w[tap, c, o])`` too much, so

      D = K - 2 sum_taps popcount(a XOR b) + B[h, w, o],   B = sum over the padding taps of (h, w) of
                                                             sum_c sign(w[tap, c, o]),

  ``B`` a ``[H', W', C_out]`` border table (``border_table``); the unused high bits of a word are 0 in
  both operands and add nothing. With ``C_in <= 16`` a tap uses at most half a word, so ``32 // C_in``
  consecutive taps share one (``merge_tap_words``: 5 words instead of 9 for a 3x3 conv of 16 channels);
  the same bits meet in the XOR, so ``D`` is unchanged.

``D`` multiplied by ``s_o`` once, in float32, is the float32 conv's own result whenever that one is
exact (``s_o`` a power of two, Libra-PB's scale, and ``|D| < 2**24``); for any other ``s_o`` it is
the exact value rounded once. Either way the result is cast to ``x.dtype``. ``"popcount"`` assumes
``x`` holds signs (``x > 0`` is +1), ``"int8"`` also takes 0s anywhere; other inputs need ``"float"``.

The backward pass is the float convolution's (``jax.vjp`` of ``conv(x, w)`` in ``x.dtype``): only
the forward products change. ``"popcount"`` keeps ``x`` for it as the packed bits (``pack_signs``),
``x = unpack_signs(bits)``: the weight gradient reads 1 bit an entry instead of a float.
``x: [B, H, W, C_in]`` NHWC, ``w: [kh, kw, C_in, C_out]`` HWIO.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def float_conv(x: Array, w: Array, strides: int, pad: int) -> Array:
    """``conv(x, w)`` in the operands' dtype, stride ``strides``, ``pad`` zero pixels per side."""
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(strides, strides), padding=((pad, pad), (pad, pad)), dimension_numbers=DIMENSIONS
    )


def channel_scales(w: Array) -> Array:
    """``s_o = max |w[..., o]|`` (float32 ``[C_out]``) of weights ``+-s_o``."""
    return jnp.max(jnp.abs(w.astype(jnp.float32)), axis=(0, 1, 2))


def _scaled(d: Array, w: Array, dtype) -> Array:
    """``s_o * D`` in float32 (``D`` integer ``[..., C_out]``), cast to ``dtype``."""
    return (d.astype(jnp.float32) * channel_scales(w)).astype(dtype)


def int8_sums(x: Array, w: Array, strides: int, pad: int) -> Array:
    """``D`` (int32) with int8 products and int32 sums; ``x`` may hold 0s anywhere."""
    # jnp.sign, not w / s: XLA:CPU divides through a reciprocal, and s * (1/s) = 0.99999994 for some s,
    # which the int8 cast would truncate to 0.
    return jax.lax.conv_general_dilated(
        x.astype(jnp.int8),
        jnp.sign(w).astype(jnp.int8),
        window_strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=DIMENSIONS,
        preferred_element_type=jnp.int32,
    )


def pack_bits_u32(bits: Array) -> Array:
    """``[..., K] {0,1} -> [..., ceil(K/32)] uint32``: bit ``i`` of word ``i // 32`` is index ``i``."""
    k = bits.shape[-1]
    words = -(-k // 32)
    b = jnp.pad(bits.astype(jnp.uint32), [(0, 0)] * (bits.ndim - 1) + [(0, 32 * words - k)])
    b = b.reshape(*bits.shape[:-1], words, 32)
    return jnp.sum(b << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32)


def packed_popcount_xor(parts: Sequence[Array], w: Array) -> Array:
    """``popcount(a XOR w)`` summed over words: ``[..., W] x [W, C_out] uint32 -> [..., C_out] int32``,
    ``a`` given as ``parts`` ``[..., W_i]`` whose words, in order, are its ``W`` words (one array, or the
    taps of a conv without materializing their concatenation); ``w`` word-major, so that each word's
    row of output channels is contiguous.

    Written as a sum over the words of elementwise ``[..., C_out]`` terms (one fused loop, the output
    channels vectorized) rather than a reduction over a word axis, which XLA:CPU runs several times
    slower (BENCHMARKS.md).
    """
    acc = jnp.zeros((*parts[0].shape[:-1], w.shape[1]), jnp.int32)
    words = [part[..., j : j + 1] for part in parts for j in range(part.shape[-1])]
    if len(words) != w.shape[0]:
        raise ValueError(f"{len(words)} input words against {w.shape[0]} weight words")
    for i, word in enumerate(words):
        acc = acc + jax.lax.population_count(word ^ w[i]).astype(jnp.int32)
    return acc


def packed_taps(words: Array, kh: int, kw: int, strides: int) -> list[Array]:
    """``[B, H, W, Wd]`` packed (already padded) input -> the ``kh kw`` taps ``[B, H', W', Wd]`` of each
    output position, ``(dh, dw)`` row-major."""
    b, h, w, wd = words.shape
    ho, wo = (h - kh) // strides + 1, (w - kw) // strides + 1
    return [
        jax.lax.slice(
            words,
            (0, dh, dw, 0),
            (b, dh + (ho - 1) * strides + 1, dw + (wo - 1) * strides + 1, wd),
            (1, strides, strides, 1),
        )
        for dh in range(kh)
        for dw in range(kw)
    ]


def merge_tap_words(taps: Sequence[Array], rows: Array, bits: int) -> tuple[list[Array], Array]:
    """Taps of one word each, ``taps[t]`` ``[..., 1]`` and ``rows[t]`` ``[C_out]`` uint32 using only their
    low ``bits`` bits -> ``ceil(T / n)`` words, ``n = 32 // bits``: tap ``t`` moves to word ``t // n`` at
    bit offset ``bits * (t % n)`` on both sides, so ``sum_t popcount(taps[t] XOR rows[t])`` is the same
    sum over fewer words. Returns the words (``[..., 1]`` each) and their rows ``[ceil(T / n), C_out]``."""
    if not 0 < bits <= 16:
        raise ValueError(f"taps of {bits} bits do not share a uint32 word")
    n = 32 // bits
    words, merged_rows = [], []
    for start in range(0, len(taps), n):
        word, row = taps[start], rows[start]
        for t in range(start + 1, min(start + n, len(taps))):
            shift = jnp.uint32(bits * (t - start))
            word, row = word | (taps[t] << shift), row | (rows[t] << shift)
        words.append(word)
        merged_rows.append(row)
    return words, jnp.stack(merged_rows)


def border_table(w: Array, in_hw: tuple[int, int], strides: int, pad: int) -> Array:
    """``B[h, w, o]`` (int32 ``[H', W', C_out]``): sum over the zero-padding taps of output position
    ``(h, w)`` of ``sum_c sign(w[tap, c, o])`` (module docstring; ``sign(w) = +1`` iff ``w > 0``, as the
    weight bits). Traced, as the weights change every step; ``export.border`` is the export's host-side
    table per border class, for a datapath that pads with +1 bits."""
    h, w_ = in_hw
    on_border = jnp.pad(
        jnp.zeros((1, h, w_, 1), jnp.float32), ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=1
    )
    signs = jnp.where(w > 0, 1.0, -1.0)  # the weight bits' values (a 0 weight, a dead channel's, is -1)
    per_tap = jnp.sum(signs, axis=2, keepdims=True)  # [kh, kw, 1, C_out]
    table = float_conv(on_border, per_tap, strides, 0)[0]  # small integers: exact in float32
    return jnp.round(table).astype(jnp.int32)


def pack_signs(x: Array) -> Array:
    """Signs ``x`` ``[..., C]`` -> their bits ``[..., ceil(C/32)]`` uint32 (``pack_bits_u32``; ``x > 0`` is 1)."""
    return pack_bits_u32(x > 0)


def unpack_signs(words: Array, channels: int, dtype) -> Array:
    """``pack_signs``'s inverse: ``[..., Wd]`` uint32 -> ``[..., channels]`` of ``+-1`` in ``dtype``."""
    index = jnp.arange(channels, dtype=jnp.uint32)
    word = words if words.shape[-1] == 1 else jnp.repeat(words, 32, axis=-1)[..., :channels]
    return jnp.where((word >> (index % 32)) & 1 == 1, 1, -1).astype(dtype)


def packed_popcount_sums(a: Array, w: Array, in_hw: tuple[int, int], strides: int, pad: int) -> Array:
    """``D`` (int32) by XNOR-popcount (module docstring) of the packed input bits ``a = pack_signs(x)``."""
    kh, kw, c_in, c_out = w.shape
    a = jnp.pad(a, ((0, 0), (pad, pad), (pad, pad), (0, 0)))  # bits 0: -1, corrected by the border table
    b = jnp.moveaxis(pack_bits_u32(jnp.moveaxis(w > 0, 2, 3)), 3, 2)  # [kh, kw, Wd, C_out]
    taps, rows = packed_taps(a, kh, kw, strides), b.reshape(-1, c_out)
    if c_in <= 16:
        taps, rows = merge_tap_words(taps, rows, c_in)
    # Stored once (kept where runtime.compiler_options keeps barriers): XLA:CPU would otherwise repeat the
    # tap merge and the popcounts inside every fusion that reads the sums (BENCHMARKS.md).
    p = jax.lax.optimization_barrier(packed_popcount_xor(taps, rows))
    d = kh * kw * c_in - 2 * p
    return d + border_table(w, in_hw, strides, pad) if pad else d


def popcount_sums(x: Array, w: Array, strides: int, pad: int) -> Array:
    """``D`` (int32) by XNOR-popcount of packed sign bits (module docstring); ``x`` holds signs."""
    return packed_popcount_sums(pack_signs(x), w, x.shape[1:3], strides, pad)


def _with_float_backward(keep, sums, restore, name: str, doc: str):
    """``conv(x, w)`` as ``s_o * sums(keep(x), w, (H, W), strides, pad)`` forward; backward: the float
    conv's vjp at ``x = restore(keep(x), C_in, dtype)``, so the backward holds ``keep(x)``, not ``x``."""

    def fwd(x, w, strides, pad):
        kept = keep(x)
        return _scaled(sums(kept, w, x.shape[1:3], strides, pad), w, x.dtype), (kept, w)

    def forward(x: Array, w: Array, strides: int, pad: int) -> Array:
        return fwd(x, w, strides, pad)[0]

    forward.__name__, forward.__qualname__, forward.__doc__ = name, name, doc

    def bwd(strides, pad, residuals, g):
        kept, w = residuals
        _, vjp = jax.vjp(lambda a, b: float_conv(a, b, strides, pad), restore(kept, w.shape[2], g.dtype), w)
        return vjp(g)

    conv = jax.custom_vjp(forward, nondiff_argnums=(2, 3))
    conv.defvjp(fwd, bwd)
    return conv


int8_sign_conv = _with_float_backward(
    lambda x: x,
    lambda x, w, in_hw, strides, pad: int8_sums(x, w, strides, pad),
    lambda x, channels, dtype: x,
    "int8_sign_conv",
    "``conv(x, w)`` of ``x`` in ``{-1, 0, +1}`` and ``w = +-s_o`` with int8 products.",
)
popcount_sign_conv = _with_float_backward(
    pack_signs,
    packed_popcount_sums,
    unpack_signs,
    "popcount_sign_conv",
    "``conv(x, w)`` of signs ``x`` and ``w = +-s_o`` by XNOR-popcount; the backward keeps the packed bits.",
)

# A 1w1a conv's forward products: ``(x, w, strides, pad) -> conv(x, w)`` (module docstring).
PRODUCTS = {"float": float_conv, "int8": int8_sign_conv, "popcount": popcount_sign_conv}
