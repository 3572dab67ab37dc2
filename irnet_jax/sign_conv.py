"""A 1w1a convolution whose products are int8: the same numbers as the float convolution, sooner on CPU.

A binary conv multiplies ``x`` with entries in ``{-1, 0, +1}`` (signs, and the zeros of zero padding)
by weights ``w[kh, kw, c, o] = +-s_o`` (the signs times a per-output-channel scale ``s_o >= 0``). Then

    conv(x, w)[..., o] = s_o * conv(x, sign(w))[..., o],

and ``conv(x, sign(w))`` is a sum of ``+-1`` and 0 terms: an integer with ``|D| <= kh kw C_in``, which
int8 operands with int32 accumulation compute exactly. Multiplied by ``s_o`` once, in float32, this is
the float32 conv's own result whenever that one is exact (``s_o`` a power of two, Libra-PB's scale,
and ``|D| < 2**24``); for any other ``s_o`` it is the exact value rounded once. Either way the result
is cast to ``x.dtype``.

The backward pass is the float convolution's (``jax.vjp`` of ``conv(x, w)`` in ``x.dtype``): only
the forward products change. ``x: [B, H, W, C_in]`` NHWC, ``w: [kh, kw, C_in, C_out]`` HWIO.
"""

from __future__ import annotations

import functools

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


def _int8_forward(x: Array, w: Array, strides: int, pad: int) -> Array:
    # jnp.sign, not w / s: XLA:CPU divides through a reciprocal, and s * (1/s) = 0.99999994 for some s,
    # which the int8 cast would truncate to 0.
    d = jax.lax.conv_general_dilated(
        x.astype(jnp.int8),
        jnp.sign(w).astype(jnp.int8),
        window_strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=DIMENSIONS,
        preferred_element_type=jnp.int32,
    )
    return (d.astype(jnp.float32) * channel_scales(w)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def int8_sign_conv(x: Array, w: Array, strides: int, pad: int) -> Array:
    """``conv(x, w)`` of ``x`` in ``{-1, 0, +1}`` and ``w = +-s_o`` with int8 products (module docstring)."""
    return _int8_forward(x, w, strides, pad)


def _fwd(x: Array, w: Array, strides: int, pad: int):
    return _int8_forward(x, w, strides, pad), (x, w)


def _bwd(strides: int, pad: int, residuals, g: Array):
    x, w = residuals
    _, vjp = jax.vjp(lambda a, b: float_conv(a, b, strides, pad), x, w)
    return vjp(g)


int8_sign_conv.defvjp(_fwd, _bwd)
