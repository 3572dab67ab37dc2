"""IR-Net's Bi-Real ResNets as integer arithmetic: a fixed-point residual stream.

The stream ``q`` is int32 with ``F`` fractional bits (value ``q / 2**F``, in ``[-2**F, 2**F]``: the
hardtanh's range). Three stage kinds:

* ``int_stem_conv`` (the float first conv + BatchNorm + hardtanh): an exact integer conv of the uint8
  pixels with the normalization and the norm folded in, then the fixed point (``integer_stem``).
* ``binary_conv_residual`` (one binary conv of a block): bits ``a = (q >= 0)``, ``D`` as a binary conv
  (zero padding: +1 bits and the border table), ``t = fixed point of BN(s D)`` clamped to ``+-2**(F+1)``,
  ``q' = clamp(t + shortcut(q), -2**F, 2**F)``; the shortcut is ``q`` itself or option A (``q`` at
  every second row and column, zero channels padded evenly on both sides), or option B (ResNet-18:
  a float 1x1 conv + norm): ``Y = sum_c q_c Wq[c, o]`` of ``q`` at every ``s``-th row and column,
  ``short = fixed point (M = 1) of Y``, clamped to ``+-2**29``, with ``t`` clamped to ``+-2**29``
  too (int64 arithmetic; ``Wq = round(A W 2**G)``).
* ``avgpool_float_dense`` (the head): ``v = float32(sum over positions of q) * float32(2**-F / (H W))``,
  then the head BatchNorm ``v * A + B`` and the classifier ``v @ W + b``, float32, in that order.

The trained float model computes the same network in float32; this is its fixed-point form, so its
predictions agree with the model's up to the rounding at ``2**-F`` and of the stem's weights (the
manifest reports the agreement on the test set).
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from irnet_jax import fixed_stream
from irnet_jax.export.fixed_point import FixedPointAffine
from irnet_jax.export.stages import BinaryConvStage, Stage, _LogitsOutput, pixel_rows


def wide_bound(frac_bits: int) -> int:
    """The clamp of ``t`` and of the shortcut in a block with an option-B shortcut, in units of
    ``2**F``: ``2**29`` (``fixed_stream.WIDE_BOUND``) in all."""
    return fixed_stream.WIDE_BOUND >> frac_bits


def stream_shortcut(q, shortcut: str, stride: int, pad_channels: int, xp=np):
    """The identity, or option A: every ``stride``-th row and column, ``pad_channels`` zero channels
    split evenly on both sides (``[N, H, W, C] -> [N, H/stride, W/stride, C + pad_channels]``)."""
    if shortcut == "identity":
        return q
    if shortcut == "B":
        raise ValueError("an option-B shortcut has weights: ResidualConvStage.projected")
    half = pad_channels // 2
    return xp.pad(q[:, ::stride, ::stride, :], ((0, 0), (0, 0), (0, 0), (half, pad_channels - half)))


@dataclasses.dataclass(kw_only=True)
class ResidualConvStage(BinaryConvStage):
    """A binary conv of a Bi-Real block on the stream (module docstring); ``fixed`` is its norm."""

    kind: ClassVar[str] = "binary_conv_residual"
    shortcut: str = "identity"
    shortcut_stride: int = 1
    pad_channels: int = 0
    projection_weights: np.ndarray | None = None  # option B: int64 Wq [C_in, C_out]
    projection: FixedPointAffine | None = None  # option B: M = 1, C, G

    @property
    def t_bound(self) -> int:
        """``t``'s clamp in units of ``2**F``: 2, or ``wide_bound`` beside an option-B shortcut."""
        return 2 if self.projection is None else wide_bound(self.fixed.frac_bits)

    def max_abs_projection_sum(self) -> float:
        """``max |Y|`` of the option-B shortcut: ``2**F max_o sum_c |Wq[c, o]|``."""
        return float(self.fixed.one * np.max(np.abs(self.projection_weights).sum(axis=0)))

    def projected(self, q, xp=np):
        """The option-B shortcut of ``q [N, H, W, C]``: ``[N, H/s, W/s, O]`` int64."""
        s = self.shortcut_stride
        y = xp.asarray(q[:, ::s, ::s, :]).astype(xp.int64) @ xp.asarray(self.projection_weights, xp.int64)
        return self.projection.apply(y, xp, bound=wide_bound(self.fixed.frac_bits)).astype(xp.int64)

    def stream_output(self, d, q, xp=np):
        t = self.fixed.apply(d, xp, bound=self.t_bound).astype(xp.int64)
        if self.projection is None:
            short = stream_shortcut(q, self.shortcut, self.shortcut_stride, self.pad_channels, xp)
        else:
            short = self.projected(q, xp)
        return xp.clip(t + short, -self.fixed.one, self.fixed.one).astype(xp.int32)

    def reference(self, q):
        d = self.sums((q >= 0).astype(np.uint8))
        return self.stream_output(d, q), d

    def packed(self):
        sums = self.packed_sums()
        return lambda q: self.stream_output(sums((q >= 0).astype(jnp.uint8)), q, jnp)

    def manifest_entry(self, index, out_dir):
        entry = super().manifest_entry(index, out_dir)
        entry.update(
            input="the stream q (int32, F fractional bits); the conv takes its bits a = (q >= 0)",
            residual=f"q' = clamp(clamp(t, -{self.t_bound}*2^F, {self.t_bound}*2^F) + shortcut(q), -2^F, 2^F), "
            "t = fixed point of D",
            shortcut=self.shortcut,
            shortcut_stride=self.shortcut_stride,
            shortcut_pad_channels=[self.pad_channels // 2, self.pad_channels - self.pad_channels // 2],
        )
        if self.projection is not None:
            npz = f"weights/L{index}_shortcut.npz"
            entry["shortcut_projection"] = {
                "rule": "Y[o] = sum_c q[s*r, s*c, c_in] * Wq[c_in, o] (q at every s-th row and column from 0); "
                "short = clamp(floor((Y + C + 2^(G-1)) / 2^G), -2^29, 2^29); int64 arithmetic",
                "weights_npz": npz,
                "offset": self.projection.offset.tolist(),
                "shift": self.projection.shift.tolist(),
            }
            np.savez(
                os.path.join(out_dir, npz),
                weights_cin_cout=self.projection_weights,
                offset=self.projection.offset,
                shift=self.projection.shift,
            )
        return entry

    def golden_extra(self, index, image_input):
        files = super().golden_extra(index, (image_input >= 0).astype(np.uint8))
        if self.projection is not None:
            short = self.projected(image_input)[0]
            files[f"L{index}_shortcut.txt"] = [" ".join(map(str, r)) for r in pixel_rows(short)]
        return files


@dataclasses.dataclass(kw_only=True)
class HeadStage(_LogitsOutput, Stage):
    """Global average pool of the stream, the head norm ``(A, B)`` (float32, identity if ``None``) and
    a float classifier ``weights [C, classes]``, ``bias``."""

    kind: ClassVar[str] = "avgpool_float_dense"
    frac_bits: int
    norm: tuple[np.ndarray, np.ndarray] | None
    weights: np.ndarray
    bias: np.ndarray

    def pooled_scale(self) -> np.float32:
        h, w, _ = self.in_shape
        return np.float32(2.0**-self.frac_bits / (h * w))

    def logits(self, q, xp=np):
        v = q.astype(xp.int64).sum(axis=(1, 2)).astype(xp.float32) * self.pooled_scale()
        if self.norm is not None:
            v = v * self.norm[0].astype(np.float32) + self.norm[1].astype(np.float32)
        return v @ self.weights + self.bias

    def reference(self, q):
        return self.logits(q), None

    def packed(self):
        return lambda q: self.logits(q, jnp)

    def manifest_entry(self, index, out_dir):
        entry = super().manifest_entry(index, out_dir)
        entry.update(
            rule="v = float32(sum_hw q) * float32(2^-F / (H*W)); v = v * A + B (head norm); logits = v @ W + b; "
            "float32, in that order",
            weights_npz=f"weights/L{index}_float.npz",
        )
        norm = {} if self.norm is None else {"A": self.norm[0], "B": self.norm[1]}
        np.savez(os.path.join(out_dir, entry["weights_npz"]), kernel=self.weights, bias=self.bias, **norm)
        return entry


def projection_stage_integers(
    kernel: np.ndarray, affine: tuple[np.ndarray, np.ndarray], frac_bits: int
) -> tuple[np.ndarray, FixedPointAffine]:
    """``(Wq int64 [C_in, C_out], fixed point with M = 1)`` of a float model's option-B shortcut: 1x1
    HWIO ``kernel`` and its norm ``affine = (A, B)``; ``Wq = round(A W 2**G)`` with the largest ``G``
    (at most 48) keeping ``2**F sum |Wq| < 2**60`` and ``|C| = |B| 2**(F+G) < 2**59``."""
    a, b = affine
    folded = np.asarray(kernel, np.float64)[0, 0] * a[None, :]
    reach = np.maximum(np.sum(np.abs(folded), axis=0), 1e-300)
    with np.errstate(divide="ignore"):
        g_w = np.floor(60 - frac_bits - np.log2(reach + folded.shape[0]) - 1)
        g_c = np.floor(59 - frac_bits - np.log2(np.maximum(np.abs(b), 1.0)) - 1)
    g = np.clip(np.minimum(g_w, g_c), 1, 48).astype(np.int64)
    wq = np.round(folded * np.exp2(g)).astype(np.int64)
    offset = np.round(b * np.exp2(frac_bits + g)).astype(np.int64)
    return wq, FixedPointAffine(np.ones_like(g), offset, g, frac_bits)


def projection_from_stream(p: fixed_stream.Projection, frac_bits: int) -> tuple[np.ndarray, FixedPointAffine]:
    """A model's own option-B integers (``fixed_stream.Projection``) as ``(Wq, fixed point)``: ``C = E 2**G + R``."""
    shift = np.asarray(p.shift, np.int64)
    offset = np.asarray(p.carry, np.int64) * (np.int64(1) << shift) + np.asarray(p.remainder, np.int64)
    return np.asarray(p.weights, np.int64), FixedPointAffine(np.ones_like(shift), offset, shift, frac_bits)
