"""Fixed-point form of ``hardtanh(A * s * D + B)`` for a layer whose output is not a sign.

Where a float layer (a full-precision classifier) takes a binary conv's output, it takes the
hardtanh of the folded BatchNorm, not bits. The export computes that value from the integer sum
``D`` as a signed fixed-point number ``q`` with ``F`` fractional bits (value ``q / 2**F``):

    q = clamp(floor((M_o * D + C_o + 2**(S_o - 1)) / 2**S_o), -2**F, 2**F)        (int64 arithmetic)

with per-channel integers ``M_o = round(A_o s_o 2**(F + S_o))``, ``C_o =
round(B_o 2**(F + S_o))`` and shift ``S_o >= 1``: a multiply, an add and an arithmetic right shift
that rounds half up, then a clamp (the hardtanh). ``S_o`` is the largest shift keeping ``|M_o|``
below ``2**30`` (unless ``S_o = 1`` already exceeds it: a huge scale), ``|M_o D|`` below ``2**60``,
``|C_o|`` below ``2**59`` and ``S_o <= 48``, so ``q`` is within one unit (``2**-F``) of
``2**F * hardtanh(A s D + B)`` (half a unit from rounding, the rest from ``M``'s and ``C``'s).
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_FRAC_BITS = 24  # ResNet-18 and -20: agreement with the float64 model plateaus from here (BENCHMARKS.md)
MULTIPLIER_BITS = 30  # |M| < 2**30, and |M D| < 2**PRODUCT_BITS
PRODUCT_BITS = 60
OFFSET_LIMIT_BITS = 59  # |C| < 2**59
MAX_SHIFT = 48  # S in [1, 48]: M D + C + 2**(S-1) (and an ONNX graph's positive offset) stay below 2**62


@dataclasses.dataclass
class FixedPointAffine:
    """``q = clamp(floor((M D + C + 2**(S-1)) / 2**S), -2**F, 2**F)`` per channel (module docstring)."""

    multiplier: np.ndarray  # int64 [C]
    offset: np.ndarray  # int64 [C], or [H, W, C] (one per output position)
    shift: np.ndarray  # int64 [C], >= 1
    frac_bits: int

    @property
    def one(self) -> int:
        """``2**F``: the fixed-point value of 1.0 (the clamp's bound)."""
        return 1 << self.frac_bits

    def apply(self, d, xp=np, bound: int = 1):
        """Integer sums ``[..., C]`` -> ``q`` int32 ``[..., C]``, with NumPy (``xp=np``) or JAX (``xp=jnp``,
        which needs ``jax_enable_x64`` for the int64 product: use the NumPy form otherwise), clamped
        to ``[-bound 2**F, bound 2**F]`` (a residual stage takes ``bound=2``: once it has added a
        shortcut in ``[-1, 1]`` and clamped to ``[-1, 1]``, the result is that of no clamp here)."""
        acc = d.astype(xp.int64) * self.multiplier + self.offset + (xp.int64(1) << (self.shift - 1))
        q = acc >> self.shift  # arithmetic shift: floor
        return xp.clip(q, -bound * self.one, bound * self.one).astype(xp.int32)

    def entry(self) -> dict:
        return {
            "rule": "q = clamp(floor((M*D + C + 2^(S-1)) / 2^S), -2^F, 2^F); value = q / 2^F; int64 arithmetic",
            "frac_bits": self.frac_bits,
            "multiplier": self.multiplier.tolist(),
            "offset": self.offset.tolist(),
            "shift": self.shift.tolist(),
        }


def fixed_point_affine(
    scale: np.ndarray, bias: np.ndarray, max_abs_input: float, frac_bits: int = DEFAULT_FRAC_BITS
) -> FixedPointAffine:
    """The fixed-point form of ``hardtanh(scale * D + bias)`` (float64: ``scale [C]``, ``bias [..., C]``,
    e.g. one per output position) for integers ``|D| <= max_abs_input``. A bias beyond ``|scale|
    max_abs_input + 2`` saturates the clamp for every ``D`` and is cut there (the output is unchanged,
    ``C`` stays in range)."""
    scale, bias = np.asarray(scale, np.float64), np.asarray(bias, np.float64)
    reach = np.abs(scale) * max_abs_input + 2.0
    bias = np.clip(bias, -reach, reach)
    target = np.abs(scale) * 2.0**frac_bits
    largest_bias = np.max(np.abs(bias).reshape(-1, scale.shape[0]), axis=0)
    # Largest S with |M| = target * 2**S < 2**MULTIPLIER_BITS, |M D| < 2**PRODUCT_BITS and
    # |C| = |bias| 2**(F+S) < 2**OFFSET_LIMIT_BITS.
    multiplier_bits = min(MULTIPLIER_BITS, PRODUCT_BITS - np.ceil(np.log2(max_abs_input + 1.0)))
    with np.errstate(divide="ignore"):
        s_m = np.floor(multiplier_bits - np.log2(np.where(target > 0, target, 1.0)) - 1e-9)
        s_c = np.floor(OFFSET_LIMIT_BITS - frac_bits - np.log2(np.maximum(largest_bias, 1.0)) - 1)
    shift = np.clip(np.minimum(s_m, s_c), 1, MAX_SHIFT).astype(np.int64)
    multiplier = np.round(scale * 2.0 ** (frac_bits + shift)).astype(np.int64)
    offset = np.round(bias * 2.0 ** (frac_bits + shift)).astype(np.int64)
    return FixedPointAffine(multiplier, offset, shift, frac_bits)
