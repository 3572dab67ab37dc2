"""A float first conv on uint8 pixels as exact integer arithmetic: the normalization and the norm
folded into integer weights and per-position offsets.

The model sees ``x_c = p_c / (255 std_c) - mean_c / std_c`` of pixels ``p`` (zero-padded), so
``conv(x, W) = conv(p, W') + b[r, c, o]`` with ``W' = W / (255 std)`` and ``b`` the conv of the
constant image ``-mean / std`` over the taps inside the image (it varies at the border only,
``fixed_stream.constant_image_conv``). With the norm ``z = A_o y + B_o`` folded in too, the weights
are integers ``Wq_o = round(A_o W'_o 2**G_o)`` and

    Y = conv(p, Wq)  (exact integers),   Z = Y + C[r, c, o],   C = round((A_o b + B_o) 2**G_o),

so ``Z ~ z 2**G`` (int64). ``Wq`` is written in base ``2**P`` digits (three for a float model: about
32 bits per weight; two for a model's own integers) so that each partial conv of uint8 pixels stays
below ``2**24`` and is exact in float32 too (ONNX). Two stage kinds use it:

* ``int_stem_conv`` (a Bi-Real ResNet's stem + hardtanh): ``q = clamp(floor((Z + 2**(S-1)) / 2**S),
  -2**F, 2**F)``, ``S = G - F`` (``fixed_point`` with ``M = 1``): the residual stream.
* ``int_first_conv`` (a sequential net's float first layer, whose sign the next binary layer takes):
  bit ``= (Z >= 0)``; a 2x2 max-pool before the norm (``"sums"``) pools ``y``, which is the OR of the
  bits where ``A_o >= 0`` and their AND where ``A_o < 0`` (``flip``); after the norm (``"bits"``) it is
  the OR.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from irnet_jax import fixed_stream
from irnet_jax.export import bits as bit_ops
from irnet_jax.export.border import BorderCorrection, class_table
from irnet_jax.export.fixed_point import FixedPointAffine
from irnet_jax.export.stages import Stage, _ConvGeometry, pixel_rows

FLOAT_MODEL_PARTS = 3
OFFSET_BITS = 58  # |C| < 2**58: Z stays far inside int64


def max_abs_stem_sum(weights_int: np.ndarray) -> float:
    """``255 max_o sum |Wq[..., o]|`` of HWIO integer weights (uint8 pixels)."""
    return 255.0 * float(np.max(np.abs(weights_int).reshape(-1, weights_int.shape[-1]).sum(0)))


@dataclasses.dataclass(frozen=True)
class PixelConvIntegers:
    """A float conv + norm folded onto uint8 pixels (module docstring): ``weights`` int64 HWIO ``Wq``,
    ``shift`` int64 ``[O]`` ``G``, ``offset`` int64 ``[H', W', O]`` ``C``, ``part_bits`` ``P``."""

    weights: np.ndarray
    shift: np.ndarray
    offset: np.ndarray
    part_bits: int


def fold_pixel_conv(
    weights: np.ndarray, affine, in_shape, stride: int, pad: int, mean, std, shift_range: tuple[int, int]
) -> PixelConvIntegers:
    """``Wq, G, C`` of a float conv ``weights`` (HWIO) + norm ``affine = (A, B)`` on pixels normalized
    with ``mean``/``std``: ``G_o`` the largest keeping ``|Wq| < 2**(3P - 1)`` and ``|C| < 2**58``, clipped
    to ``shift_range``. A channel whose ``G`` is raised above that has its weights scaled to the bound
    (such a reach saturates every image's output anyway); an offset beyond ``|reach| + 2`` is cut there
    (it decides the output alone)."""
    k, _, c_in, c_out = weights.shape
    alpha = 1.0 / (255.0 * np.asarray(std, np.float64))
    beta = -np.asarray(mean, np.float64) / np.asarray(std, np.float64)
    part_bits = fixed_stream.pixel_part_bits(k * k * c_in)
    a, b = (np.asarray(v, np.float64) for v in affine)
    folded = weights.astype(np.float64) * alpha[None, None, :, None] * a
    reach = 255.0 * np.sum(np.abs(folded), axis=(0, 1, 2))
    z0 = a * fixed_stream.constant_image_conv(weights.astype(np.float64), beta, in_shape[:2], stride, pad) + b
    z0 = np.clip(z0, -(reach + 2.0), reach + 2.0)
    largest = np.maximum(np.max(np.abs(folded), axis=(0, 1, 2)), 1e-30)
    with np.errstate(divide="ignore"):
        g_w = np.floor(FLOAT_MODEL_PARTS * part_bits - 1 - np.log2(largest) - 1e-9)
        g_c = np.floor(OFFSET_BITS - np.log2(np.maximum(np.max(np.abs(z0).reshape(-1, c_out), axis=0), 1.0)))
    g = np.clip(np.minimum(g_w, g_c), *shift_range).astype(np.int64)
    wq = np.round(folded * np.exp2(np.minimum(g_w, g))).astype(np.int64)
    offset = np.round(z0 * np.exp2(g)).astype(np.int64)
    return PixelConvIntegers(wq, g, offset, part_bits)


@dataclasses.dataclass(kw_only=True)
class PixelConvStage(_ConvGeometry, Stage):
    """An exact integer conv of uint8 pixels (given as float32 ``[N, H, W, C]``): ``weights_int`` HWIO
    int64 ``Wq`` in ``num_parts`` base-``2**P`` digits; ``offsets()`` the ``C [H', W', O]`` it adds."""

    takes_pixels: ClassVar[bool] = True
    weights_int: np.ndarray
    weight_frac_bits: int | list[int]  # G (one per output channel for a model's own integers)
    part_bits: int  # P
    num_parts: int = 2  # Wq = sum_k part_k 2**(k P): 2 for a model's own integers, 3 for a float model's

    def offsets(self) -> np.ndarray:
        raise NotImplementedError

    def max_abs_sum(self) -> float:
        """The largest ``|Y|`` the integer conv can reach on uint8 pixels: ``255 max_o sum |Wq[., o]|``."""
        return max_abs_stem_sum(self.weights_int)

    def parts(self) -> list[np.ndarray]:
        """``Wq``'s base-``2**P`` digits as float32 HWIO, lowest first: ``Wq = sum_k part_k 2**(k P)`` with
        ``0 <= part_k < 2**P`` except the last (signed), so each partial conv is exact in float32."""
        rest, digits = np.asarray(self.weights_int, np.int64), []
        for _ in range(self.num_parts - 1):
            high = np.floor_divide(rest, 1 << self.part_bits)
            digits.append((rest - high * (1 << self.part_bits)).astype(np.float32))
            rest = high
        return digits + [rest.astype(np.float32)]

    def integer_conv(self, pixels, xp):
        """``Y = conv(p, Wq)``: one exact float32 conv per part, combined in int64 (``xp.int64``: JAX
        needs x64)."""
        y = 0
        for k, w in enumerate(self.parts()):
            part = jax.lax.conv_general_dilated(
                jnp.asarray(pixels, jnp.float32),
                jnp.asarray(w),
                (self.stride,) * 2,
                ((self.pad, self.pad),) * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST,  # exact float32 (no TF32/bfloat16 passes on a GPU/TPU)
            )
            y = y + xp.asarray(part).astype(xp.int64) * (1 << (k * self.part_bits))
        return y

    def offset_classes(self) -> BorderCorrection:
        """The offsets ``C [H', W', O]`` as one row per border class: they come from the normalization's
        constant image conv over the taps inside the image, so they depend on the border class only."""
        return class_table(self.offsets(), self.in_shape[:2], self.kernel_size, self.stride, self.pad)

    def offset_entry(self, npz: str) -> dict[str, Any]:
        offsets = self.offset_classes()
        return {
            "rule": "C[r, c, o] = offset_table[row_class[r], col_class[c], o] (int64)",
            "offset_table": f"{npz}:offset_table",
            "row_class": offsets.row_class.tolist(),
            "col_class": offsets.col_class.tolist(),
            "row_class_kernel_rows_outside": [list(t) for t in offsets.row_taps],
            "col_class_kernel_cols_outside": [list(t) for t in offsets.col_taps],
        }

    def pixel_conv_entry(self, index: int, out_dir: str, **arrays: np.ndarray) -> dict[str, Any]:
        """The manifest fields of the integer conv; writes ``weights/L<i>_int.npz`` (``Wq``, the offset
        table and ``arrays``)."""
        npz = f"weights/L{index}_int.npz"
        np.savez(
            os.path.join(out_dir, npz),
            weights_hwio=self.weights_int,
            offset_table=self.offset_classes().table,
            **arrays,
        )
        return {
            **super().manifest_entry(index, out_dir),
            **self.geometry_entry(),
            "input": "uint8 pixels [H, W, C] (the normalization is folded into the weights and offsets)",
            "weight_frac_bits": self.weight_frac_bits,
            "weight_parts": f"Wq = sum_k part_k 2^(k*{self.part_bits}), k < {self.num_parts}: each partial conv "
            "of uint8 pixels stays below 2^24 (exact in float32)",
            "weights_npz": npz,
        }


@dataclasses.dataclass(kw_only=True)
class IntegerStemStage(PixelConvStage):
    """A ResNet's float stem, its norm and hardtanh in integers: ``fixed`` with one offset per output
    position (``M = 1``)."""

    kind: ClassVar[str] = "int_stem_conv"
    fixed: FixedPointAffine

    def offsets(self) -> np.ndarray:
        return self.fixed.offset

    def reference(self, x):
        return self.fixed.apply(self.integer_conv(x, np)), None

    def packed(self):
        return lambda x: self.fixed.apply(self.integer_conv(x, jnp), jnp)

    def manifest_entry(self, index, out_dir):
        entry = self.pixel_conv_entry(index, out_dir, multiplier=self.fixed.multiplier, shift=self.fixed.shift)
        entry.update(
            rule="Y = conv(p, Wq) (zero padding, exact integers); q = fixed point with the offset of the "
            "output position's border class",
            fixed_point=self.fixed.entry() | {"offset": self.offset_entry(entry["weights_npz"])},
        )
        return entry

    def golden_output(self, index, output):
        return {f"L{index}_out.txt": [" ".join(map(str, r)) for r in pixel_rows(output)]}


@dataclasses.dataclass(kw_only=True)
class IntegerFirstConvStage(PixelConvStage):
    """A sequential net's float first conv + norm + sign in integers: bit ``= (Y + C >= 0)``, pooled
    (module docstring); ``offset`` int64 ``[H', W', O]``, ``flip`` bool ``[O]`` (``A_o < 0``)."""

    kind: ClassVar[str] = "int_first_conv"
    offset: np.ndarray
    flip: np.ndarray

    def offsets(self) -> np.ndarray:
        return self.offset

    def bits(self, z, xp=np):
        """Bits of ``Z [N, H', W', O]``, pooled: ``"sums"`` ORs where ``A >= 0`` and ANDs where ``A < 0``
        (``NOT OR NOT``), ``"bits"`` ORs."""
        out = (z >= 0).astype(xp.uint8)
        if self.pool == "none":
            return out
        flip = xp.asarray(self.flip if self.pool == "sums" else np.zeros_like(self.flip), xp.uint8)
        return bit_ops.pool2(out ^ flip, self.ceil_pool, 0, xp) ^ flip

    def reference(self, x):
        return self.bits(self.integer_conv(x, np) + self.offset), None

    def packed(self):  # int64 constants made inside the (x64) trace
        return lambda x: self.bits(self.integer_conv(x, jnp) + jnp.asarray(self.offset, jnp.int64), jnp)

    def manifest_entry(self, index, out_dir):
        entry = self.pixel_conv_entry(index, out_dir)
        entry.update(
            rule="Z = conv(p, Wq) + C[r, c, o] (zero padding, exact int64); bit = (Z >= 0); "
            "pool 'sums': per channel the OR of the window's bits, the AND where pool_and[o]; pool 'bits': the OR",
            pool_and=[bool(v) for v in (self.flip if self.pool == "sums" else np.zeros_like(self.flip))],
            offset=self.offset_entry(entry["weights_npz"]),
        )
        return entry


def stem_stage(
    weights: np.ndarray, affine, in_shape, stride: int, pad: int, mean, std, frac_bits: int
) -> IntegerStemStage:
    """The integer stem of a float conv ``weights`` (HWIO) + norm ``affine = (A, B)`` + hardtanh on
    images normalized with ``mean``/``std`` (``fold_pixel_conv``, three parts), ``S_o = G_o - F`` in
    ``[1, 48]``."""
    ints = fold_pixel_conv(weights, affine, in_shape, stride, pad, mean, std, (frac_bits + 1, frac_bits + 48))
    fixed = FixedPointAffine(np.ones_like(ints.shift), ints.offset, ints.shift - frac_bits, frac_bits)
    return IntegerStemStage(
        in_shape=in_shape,
        kernel_size=weights.shape[0],
        stride=stride,
        pad=pad,
        weights_int=ints.weights,
        weight_frac_bits=ints.shift.tolist(),
        part_bits=ints.part_bits,
        num_parts=FLOAT_MODEL_PARTS,
        fixed=fixed,
    )


def first_conv_stage(weights: np.ndarray, affine, mean, std, **geometry: Any) -> IntegerFirstConvStage:
    """The integer first layer of a sequential net (``fold_pixel_conv``, three parts, ``G`` in ``[1, 60]``);
    ``geometry``: the ``_ConvGeometry`` fields and ``in_shape``."""
    g = geometry
    ints = fold_pixel_conv(weights, affine, g["in_shape"], g["stride"], g["pad"], mean, std, (1, 60))
    return IntegerFirstConvStage(
        **geometry,
        weights_int=ints.weights,
        weight_frac_bits=ints.shift.tolist(),
        part_bits=ints.part_bits,
        num_parts=FLOAT_MODEL_PARTS,
        offset=ints.offset,
        flip=np.asarray(affine[0]) < 0,
    )
