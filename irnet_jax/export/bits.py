"""Bit-level operations of the integer pipeline, in NumPy (the reference) and JAX (the packed engine;
its packing and XNOR-popcount are ``irnet_jax.sign_conv``'s, which the models' popcount products use).

Bits are ``uint8`` in {0, 1} with 1 = +1 and 0 = -1. Feature maps are ``[N, H, W, C]``; patches
and weight rows are indexed ``(c, kh, kw)`` (channel-major). Packed words are uint32 little-endian
over the index: bit ``i`` of word ``i // 32`` is index ``i``. Text lines are MSB = index 0 first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pad_bits(bits: np.ndarray, pad: int, pad_bit: str) -> np.ndarray:
    """Pad ``[N, H, W, C]`` bits with constant bits (``"one"``: 1, ``"minus_one"``: 0) or the
    ``"checkerboard"`` (1 where row + col of the padded map is even, the same for every channel)."""
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
    out[:, pad : pad + h, pad : pad + w] = bits
    return out


def patches(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """``[N, H, W, C] -> [N, H', W', C * k * k]`` in (c, kh, kw) order (input already padded)."""
    n, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    cols = np.stack(
        [x[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :] for i in range(k) for j in range(k)],
        axis=-1,
    )  # [N, H', W', C, k*k] with (kh, kw) minor
    return cols.reshape(n, ho, wo, c * k * k)


def pool2(x, ceil: bool, fill, xp=np):
    """2x2, stride-2 max-pool of ``[N, H, W, C]`` with NumPy (``xp=np``) or JAX (``xp=jnp``);
    ``ceil``: the odd last row/column forms a partial window, padded with ``fill`` (so it is the
    max of the values it has); otherwise it is dropped."""
    n, h, w, c = x.shape
    if ceil and (h % 2 or w % 2):
        x = xp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=fill)
        h, w = x.shape[1:3]
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2].reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def xnor_popcount_sums(patch_bits: np.ndarray, weight_bits: np.ndarray) -> np.ndarray:
    """``D = K - 2 * popcount(a XOR w)``: ``[..., K] x [C_out, K] -> [..., C_out]`` int32 (NumPy, packed bytes)."""
    k = patch_bits.shape[-1]
    a = np.packbits(patch_bits, axis=-1)
    wb = np.packbits(weight_bits, axis=-1)
    pc = np.bitwise_count(a[..., None, :] ^ wb).sum(-1, dtype=np.int32)
    return k - 2 * pc


def jax_patches(x: jax.Array, k: int, stride: int) -> jax.Array:
    """``patches`` for traced arrays."""
    n, h, w, c = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    cols = jnp.stack(
        [
            x[:, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride, :]
            for i in range(k)
            for j in range(k)
        ],
        axis=-1,
    )
    return cols.reshape(n, ho, wo, c * k * k)


def jax_pad_bits(x: jax.Array, pad: int, pad_bit: str) -> jax.Array:
    """``pad_bits`` for traced arrays: the border comes from a constant frame, the interior from ``x``."""
    if pad == 0:
        return x
    frame = jnp.asarray(pad_bits(np.zeros((1, *x.shape[1:]), np.uint8), pad, pad_bit))
    inside = jnp.zeros(frame.shape[1:3], bool).at[pad:-pad, pad:-pad].set(True)[None, :, :, None]
    return jnp.where(inside, jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), frame)


def bits_line(bits: np.ndarray) -> str:
    """``"0110..."``: one digit per bit, index 0 first."""
    return "".join("1" if b else "0" for b in np.asarray(bits).ravel())


def hex_line(bits: np.ndarray) -> str:
    """The bit vector (MSB = index 0) left-padded with zeros to a multiple of 4, as hex digits."""
    s = bits_line(bits)
    s = "0" * (-len(s) % 4) + s
    return "".join(f"{int(s[i : i + 4], 2):x}" for i in range(0, len(s), 4))
