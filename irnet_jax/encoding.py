"""Binary input encodings: uint8 images to {-1, +1} planes, so the first layer can be binary.

The original's unfinished "3 channel => 9 channel" idea. Both encoders map ``[B, H, W, C] uint8`` to
``[B, H, W, C * k]`` in {-1, +1}, planes of one colour channel adjacent (channel ``c * k + j``):

* ``thermometer`` with ``k`` levels: plane ``j`` is +1 iff ``pixel >= T_j``, ``T_j = round((j + 1) * 256 / (k + 1))``.
  Monotone: a brighter pixel never has fewer +1 planes. On hardware: ``k`` comparators per channel.
* ``bitplanes`` with ``k`` bits: plane ``j`` is +1 iff bit ``7 - j`` of the pixel is set (the top ``k`` bits,
  most significant first). On hardware: wires.

``none`` is no encoding: the trainer then normalizes with the dataset mean/std as usual.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def thermometer_thresholds(levels: int) -> np.ndarray:
    """The ``levels`` integer thresholds ``T_j = round((j + 1) * 256 / (levels + 1))``, increasing."""
    return np.round(np.arange(1, levels + 1) * 256.0 / (levels + 1)).astype(np.int32)


def _pm1(bits: Array, dtype) -> Array:
    return jnp.where(bits, jnp.ones((), dtype), -jnp.ones((), dtype))


def _flatten_planes(planes: Array) -> Array:
    b, h, w, c, k = planes.shape
    return planes.reshape(b, h, w, c * k)


def thermometer(images_u8: Array, levels: int, dtype=jnp.float32) -> Array:
    """``[B, H, W, C] uint8 -> [B, H, W, C * levels]`` in {-1, +1}: +1 where ``pixel >= T_j``."""
    t = jnp.asarray(thermometer_thresholds(levels))
    return _flatten_planes(_pm1(images_u8.astype(jnp.int32)[..., None] >= t, dtype))


def bitplanes(images_u8: Array, bits: int, dtype=jnp.float32) -> Array:
    """``[B, H, W, C] uint8 -> [B, H, W, C * bits]`` in {-1, +1}: +1 where bit ``7 - j`` is set."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bitplanes takes 1..8 bits, got {bits}")
    shifts = jnp.arange(7, 7 - bits, -1, dtype=jnp.int32)
    return _flatten_planes(_pm1((images_u8.astype(jnp.int32)[..., None] >> shifts) & 1 == 1, dtype))


ENCODINGS: dict[str, Callable[..., Array]] = {"thermometer": thermometer, "bitplanes": bitplanes}


def encoded_channels(channels: int, encoding: str, levels: int) -> int:
    """Channels after ``encoding`` (``"none"``: unchanged); ``ValueError`` for an unknown name."""
    if encoding == "none":
        return channels
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown input_encoding {encoding!r}; valid: {['none', *ENCODINGS]}")
    if levels < 1:
        raise ValueError(f"encoding_levels must be >= 1, got {levels}")
    return channels * levels


def encode(images_u8: Array, encoding: str, levels: int, dtype=jnp.float32) -> Array:
    """Apply the named encoding (not ``"none"``)."""
    encoded_channels(images_u8.shape[-1], encoding, levels)
    return ENCODINGS[encoding](images_u8, levels, dtype)
