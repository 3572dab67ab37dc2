"""A sequential BNN's float first layer as exact int32 arithmetic (``integer_first_layer=True``).

Such a model takes pixel values (float, 0..255) and normalizes them itself. In training its first
layer is the float conv of the normalized pixels and its norm, as without the option. In eval mode it
computes, with the norm ``z = A_o y + B_o`` folded into the integers of a ResNet's stem
(``fixed_stream.stem_integers``: ``Wq_o = round(A_o W'_o 2**G_o)``, ``W' = W / (255 std)``, and
``C[r, c, o] = round((A_o b[r, c, o] + B_o) 2**G_o)`` with ``b`` the conv of the constant image
``-mean / std``),

    Z = conv(p, Wq) + C   (int32, exact: |conv(p, Wq)| < 2**29, |C| <= 2**30),   bit = (Z >= 0),

pooled as the model pools: a max-pool before the norm (``"sums"``) is the OR of the window's bits
where ``A_o >= 0`` and their AND where ``A_o < 0``; after the norm (``"bits"``) it is the OR. The next
binary layer takes ``2 bit - 1`` (it keeps only the sign of its input). The export writes the same
integers (``export.integer_stem.IntegerFirstConvStage``), so model and export agree bit for bit; the
rest of the model is unchanged.

The integers derive from the raw parameters on the host, in float64 NumPy (``derive``), as the
fixed-point stream's do: the model calls it through ``jax.pure_callback``, the export directly.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from irnet_jax import fixed_stream
from irnet_jax.layers import max_pool

Array = jax.Array


class FirstLayerIntegers(NamedTuple):
    """``weights`` int32 HWIO ``Wq``, ``offset`` int32 ``[H', W', O]`` ``C``, ``flip`` bool ``[O]``
    (``A_o < 0``), ``shift`` int32 ``[O]`` ``G`` (``Wq``'s fractional bits; the model does not use it)."""

    weights: Array
    offset: Array
    flip: Array
    shift: Array


def derive(kernel: np.ndarray, norm: fixed_stream.NormParams, layout: fixed_stream.StreamLayout) -> FirstLayerIntegers:
    """The integers of the first conv ``kernel`` (HWIO) and its norm (module docstring), NumPy in and out."""
    kernel = np.asarray(kernel, np.float64)
    a, b = fixed_stream.norm_affine(jax.tree.map(lambda v: np.asarray(v, np.float64), norm), layout.norm_eps)
    wq, stem = fixed_stream.stem_integers(kernel, a, b, layout, frac_bits=0)
    return FirstLayerIntegers(wq, stem.offset, a < 0, stem.shift)


def integers(kernel: Array, norm: fixed_stream.NormParams, layout: fixed_stream.StreamLayout) -> FirstLayerIntegers:
    """``derive`` on the host (``jax.pure_callback``): usable inside ``jit``, the same integers."""
    k, _, _, c_out = kernel.shape
    shapes = FirstLayerIntegers(
        jax.ShapeDtypeStruct(kernel.shape, jnp.int32),
        jax.ShapeDtypeStruct((*layout.stem_output_hw(k), c_out), jnp.int32),
        jax.ShapeDtypeStruct((c_out,), jnp.bool_),
        jax.ShapeDtypeStruct((c_out,), jnp.int32),
    )
    return jax.pure_callback(
        functools.partial(derive, layout=layout), shapes, kernel, norm, vmap_method="broadcast_all"
    )


def first_layer_signs(
    pixels: Array, ints: FirstLayerIntegers, stride: int, pad: int, pool: str, ceil_mode: bool
) -> Array:
    """The first layer's output signs ``+-1`` (float32 ``[N, H'', W'', O]``) of pixels ``[N, H, W, C]``
    (float, 0..255), pooled per ``pool`` (``"none"``, ``"sums"``, ``"bits"``; module docstring)."""
    z = fixed_stream.stem_sums(pixels, ints.weights, stride, pad) + ints.offset
    signs = jnp.where(z >= 0, 1.0, -1.0).astype(jnp.float32)
    if pool == "none":
        return signs
    # the max of +-1 signs is their OR; -max(-s) is their AND (a negative scale turns max y into min z)
    g = jnp.where(ints.flip & (pool == "sums"), -1.0, 1.0).astype(jnp.float32)
    return g * max_pool(g * signs, ceil_mode=ceil_mode)
