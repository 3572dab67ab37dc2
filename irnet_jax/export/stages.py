"""The stages of a folded model, one class per kind: each knows its NumPy reference, its packed JAX
form, its manifest entry and parameter files, and its golden files.

Kinds: ``binary_conv`` (XNOR-popcount with the zero-padding correction, an integer threshold or a
fixed-point output), ``binary_dense`` (integer sums, float32 logit map) and ``float_dense`` (a
full-precision classifier on bits or fixed-point values). A full-precision first layer's kinds
(integer convs of the pixels) are in ``integer_stem``, the ResNets' (fixed-point residual stream) in
``residual``.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from irnet_jax import sign_conv
from irnet_jax.export import bits as bit_ops
from irnet_jax.export.border import BorderCorrection
from irnet_jax.export.fixed_point import FixedPointAffine

Lines = list[str]


def write_lines(path: str, lines) -> int:
    """Write ``lines`` (one per line, a final newline) as ASCII; returns the number written."""
    lines = list(lines)
    with open(path, "w", encoding="ascii") as f:
        f.write("\n".join(lines) + "\n")
    return len(lines)


def pixel_rows(x: np.ndarray) -> np.ndarray:
    """One image's ``[H, W, C]`` map as ``[H * W, C]`` rows (one per pixel), a vector as one row."""
    return x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x.reshape(1, -1)


@dataclasses.dataclass(kw_only=True)
class Stage(abc.ABC):
    """One layer of the folded model; ``in_shape`` is one image's input (``(H, W, C)`` or ``(K,)``)."""

    kind: ClassVar[str]
    in_shape: tuple[int, ...]

    @abc.abstractmethod
    def reference(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """NumPy: the input batch -> ``(output, integer sums before pooling/threshold or None)``."""

    @abc.abstractmethod
    def packed(self) -> Callable[[jax.Array], jax.Array]:
        """The stage as a traceable JAX function of its input batch (packed uint32 words for bits)."""

    def manifest_entry(self, index: int, out_dir: str) -> dict[str, Any]:
        """The stage's manifest entry; writes its parameter files under ``out_dir``."""
        return {"index": index, "kind": self.kind, "input_shape": list(self.in_shape)}

    def golden_output(self, index: int, output: np.ndarray) -> dict[str, Lines]:
        """Golden files of one image's output: ``{file name: lines}``."""
        rows = pixel_rows(output)
        return {
            f"L{index}_out.txt": [" ".join(bit_ops.bits_line(r)) for r in rows],
            f"L{index}_out.memb": [bit_ops.bits_line(r) for r in rows],
        }

    def golden_extra(self, index: int, image_input: np.ndarray) -> dict[str, Lines]:
        """Further golden files of one image (``image_input``: its input, a batch of one)."""
        return {}


@dataclasses.dataclass(kw_only=True)
class _BinaryWeights:
    """``weight_bits: [C_out, K]`` (1 = +1), written as ``.memb`` and ``.memh``."""

    weight_bits: np.ndarray

    @property
    def fan_in(self) -> int:
        return int(self.weight_bits.shape[1])

    def weight_entry(self, index: int, out_dir: str) -> dict[str, Any]:
        entry = {
            "fan_in": self.fan_in,
            "out_channels": int(self.weight_bits.shape[0]),
            "weights_memb": f"weights/L{index}.memb",
            "weights_memh": f"weights/L{index}.memh",
        }
        write_lines(os.path.join(out_dir, entry["weights_memb"]), map(bit_ops.bits_line, self.weight_bits))
        write_lines(os.path.join(out_dir, entry["weights_memh"]), map(bit_ops.hex_line, self.weight_bits))
        return entry


@dataclasses.dataclass(kw_only=True)
class _ConvGeometry:
    """(With ``Stage.in_shape``) a conv's window, its padding, and a 2x2 max-pool ``"sums"`` (before the
    threshold), ``"bits"`` (after it: an OR of +1 bits) or ``"none"``; ``ceil_pool``: a partial window at
    an odd edge is kept."""

    kernel_size: int
    stride: int = 1
    pad: int = 0
    pad_bit: str = "zero"
    pool: str = "none"
    ceil_pool: bool = False

    def conv_output_hw(self) -> tuple[int, int]:
        """``(H', W')`` of the convolution, before the pool."""
        h, w = self.in_shape[:2]
        k, s, p = self.kernel_size, self.stride, self.pad
        return (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1

    def output_hw(self) -> tuple[int, int]:
        """``(H'', W'')`` after the pool (a partial window kept with ``ceil_pool``)."""
        h, w = self.conv_output_hw()
        if self.pool != "none":
            h, w = (-(-h // 2), -(-w // 2)) if self.ceil_pool else (h // 2, w // 2)
        return h, w

    def geometry_entry(self) -> dict[str, Any]:
        return {
            "conv_output_hw": list(self.conv_output_hw()),
            "output_hw": list(self.output_hw()),
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.pad,
            "pad_bits": self.pad_bit,
            "pool": self.pool,
            "pool_ceil_mode": self.ceil_pool,
        }


@dataclasses.dataclass(kw_only=True)
class BinaryConvStage(_ConvGeometry, _BinaryWeights, Stage):
    """``D = K - 2 popcount(patch XOR w)`` on the padded patch (zero padding: +1 border bits, then
    ``D -= C[border class]``, see ``border``), pooled ("sums"), then per output channel either the
    bit ``(D <= T) if flip else (D >= T)`` or, where a float layer follows (``fixed`` set), the
    fixed-point ``hardtanh`` of the folded norm (``fixed_point``); pooled ("bits": after it)."""

    kind: ClassVar[str] = "binary_conv"
    threshold: np.ndarray | None = None  # int64 [C_out]; None with a fixed-point output
    flip: np.ndarray | None = None  # bool [C_out]
    border: BorderCorrection | None = None  # zero padding only
    fixed: FixedPointAffine | None = None

    @property
    def datapath_pad_bit(self) -> str:
        """The bits the datapath pads with: zero padding is +1 bits and a correction."""
        return "one" if self.pad_bit == "zero" else self.pad_bit

    def output_kind(self) -> str:
        return "bits" if self.fixed is None else "fixed_point"

    def sums_to_output(self, d, xp=np):
        """Integer sums ``D`` (corrected) -> output: pool ``D`` ("sums"), threshold or fixed point,
        pool the result ("bits")."""
        floor = np.iinfo(np.int32).min
        if self.pool == "sums":
            d = bit_ops.pool2(d, self.ceil_pool, floor, xp)
        if self.fixed is None:
            x = xp.where(self.flip, d <= self.threshold, d >= self.threshold).astype(xp.uint8)
        else:
            x = self.fixed.apply(d, xp)
        if self.pool == "bits":
            x = bit_ops.pool2(x, self.ceil_pool, 0 if self.fixed is None else floor, xp)
        return x

    def datapath_patches(self, x: np.ndarray) -> np.ndarray:
        """``[N, H', W', K]`` patch bits as the datapath sees them (border: ``datapath_pad_bit``)."""
        padded = bit_ops.pad_bits(x, self.pad, self.datapath_pad_bit)
        return bit_ops.patches(padded, self.kernel_size, self.stride)

    def sums(self, x: np.ndarray) -> np.ndarray:
        """NumPy: input bits ``[N, H, W, C]`` -> the (corrected) integer sums ``D [N, H', W', C_out]``."""
        d = bit_ops.xnor_popcount_sums(self.datapath_patches(x), self.weight_bits)
        return d if self.border is None else d - self.border.per_position()

    def packed_sums(self) -> Callable[[jax.Array], jax.Array]:
        """``sums`` as a traceable JAX function on packed uint32 words."""
        words = sign_conv.pack_bits_u32(jnp.asarray(self.weight_bits)).T  # [W, C_out]
        correction = None if self.border is None else jnp.asarray(self.border.per_position())

        def run(x):
            padded = bit_ops.jax_pad_bits(x, self.pad, self.datapath_pad_bit)
            a = sign_conv.pack_bits_u32(bit_ops.jax_patches(padded, self.kernel_size, self.stride))
            d = self.fan_in - 2 * sign_conv.packed_popcount_xor([a], words)
            return d if correction is None else d - correction

        return run

    def reference(self, x):
        d = self.sums(x)
        return self.sums_to_output(d), d

    def packed(self):
        sums = self.packed_sums()
        return lambda x: self.sums_to_output(sums(x), jnp)

    def manifest_entry(self, index, out_dir):
        entry = {**super().manifest_entry(index, out_dir), **self.weight_entry(index, out_dir)}
        entry.update(self.geometry_entry())
        entry["datapath_pad_bits"] = self.datapath_pad_bit
        entry["output"] = self.output_kind()
        if self.border is not None:
            entry["border_correction"] = self._write_border(index, out_dir)
        if self.fixed is not None:
            entry["fixed_point"] = self.fixed.entry()
            return entry
        entry.update(
            thresholds=f"thresholds/L{index}.txt",
            thresholds_memb=f"thresholds/L{index}_thr.memb",
            flips_memb=f"thresholds/L{index}_flip.memb",
            rule="bit = (D <= T) if flip else (D >= T), D = K - 2*popcount(a XOR w) (- C[class] with zero padding)",
        )
        write_lines(
            os.path.join(out_dir, entry["thresholds"]),
            (f"{int(t)} {int(f)}" for t, f in zip(self.threshold, self.flip, strict=True)),
        )
        write_lines(
            os.path.join(out_dir, entry["thresholds_memb"]),
            (format(int(t) & 0xFFFFFFFF, "032b") for t in self.threshold),
        )
        write_lines(os.path.join(out_dir, entry["flips_memb"]), (str(int(f)) for f in self.flip))
        return entry

    def _write_border(self, index: int, out_dir: str) -> dict[str, Any]:
        """The zero-padding correction's files and manifest entry (``border`` module)."""
        b = self.border
        entry = {
            "rule": "D = D_datapath - C[row_class[r] * num_col_classes + col_class[c]][o]; the datapath pads "
            "with +1 bits; C[.][o] = sum of w_o (+1/-1) over the taps outside the image",
            "row_class": b.row_class.tolist(),
            "col_class": b.col_class.tolist(),
            "row_class_kernel_rows_outside": [list(t) for t in b.row_taps],
            "col_class_kernel_cols_outside": [list(t) for t in b.col_taps],
            "num_col_classes": int(b.table.shape[1]),
            "table": f"thresholds/L{index}_border.txt",
            "table_memb": f"thresholds/L{index}_border.memb",
            "position_class_memb": f"thresholds/L{index}_posclass.memb",
        }
        rows = b.table.reshape(-1, b.table.shape[-1])  # class = row_class * Q + col_class
        write_lines(os.path.join(out_dir, entry["table"]), (" ".join(map(str, r)) for r in rows))
        write_lines(
            os.path.join(out_dir, entry["table_memb"]), (format(int(v) & 0xFFFFFFFF, "032b") for v in rows.ravel())
        )
        write_lines(
            os.path.join(out_dir, entry["position_class_memb"]), (format(int(v), "016b") for v in b.position_class())
        )
        return entry

    def golden_output(self, index, output):
        if self.fixed is None:
            return super().golden_output(index, output)
        return {f"L{index}_out.txt": [" ".join(map(str, r)) for r in pixel_rows(output)]}

    def golden_extra(self, index, image_input):
        """For the RTL check: the im2col patches (as the datapath pads them) and, for a bit output,
        the per-position bits before pooling."""
        p = self.datapath_patches(image_input)[0]
        p = p.reshape(-1, p.shape[-1])
        files = {f"L{index}_patches.memb": [bit_ops.bits_line(r) for r in p]}
        if self.fixed is None:
            d = bit_ops.xnor_popcount_sums(p, self.weight_bits)
            if self.border is not None:
                d = d - self.border.per_position().reshape(d.shape)
            pre = np.where(self.flip, d <= self.threshold, d >= self.threshold)
            files[f"L{index}_prepool.memb"] = [bit_ops.bits_line(r) for r in pre]
        return files


class _LogitsOutput:
    """A classifier's golden output: one line of float32 logits (``%.9g``, class 0 first)."""

    def golden_output(self, index: int, output: np.ndarray) -> dict[str, Lines]:
        return {f"L{index}_logits.txt": [" ".join(f"{v:.9g}" for v in output)]}


@dataclasses.dataclass(kw_only=True)
class BinaryDenseStage(_LogitsOutput, _BinaryWeights, Stage):
    """A binary classifier: ``logits = D * logit_scale + bias`` (float32) on the flattened input bits."""

    kind: ClassVar[str] = "binary_dense"
    logit_scale: np.ndarray
    bias: np.ndarray

    def reference(self, x):
        d = bit_ops.xnor_popcount_sums(x.reshape(x.shape[0], -1), self.weight_bits)
        return d.astype(np.float32) * self.logit_scale + self.bias, d

    def packed(self):
        words = sign_conv.pack_bits_u32(jnp.asarray(self.weight_bits)).T  # [W, C_out]

        def run(x):
            d = self.fan_in - 2 * sign_conv.packed_popcount_xor(
                [sign_conv.pack_bits_u32(x.reshape(x.shape[0], -1))], words
            )
            return d.astype(jnp.float32) * self.logit_scale + self.bias

        return run

    def manifest_entry(self, index, out_dir):
        entry = {**super().manifest_entry(index, out_dir), **self.weight_entry(index, out_dir)}
        entry.update(
            rule="logits = D * logit_scale + bias (float32)",
            logit_scale=self.logit_scale.tolist(),
            bias=self.bias.tolist(),
        )
        return entry


@dataclasses.dataclass(kw_only=True)
class FloatDenseStage(_LogitsOutput, Stage):
    """A full-precision classifier, ``weights: [K, C]``, on the flattened input ``v`` (float32):
    ``logits = v @ weights + bias`` with ``v = q * 2**-F`` for a fixed-point input ``q`` (``input_frac_bits
    = F``: the hardtanh values of the last block) or ``v = 2 a - 1`` for bits."""

    kind: ClassVar[str] = "float_dense"
    weights: np.ndarray
    bias: np.ndarray
    input_frac_bits: int | None = None

    def input_values(self, x, xp=np):
        flat = x.reshape(x.shape[0], -1)
        if self.input_frac_bits is None:
            return 2.0 * flat.astype(xp.float32) - 1.0
        return flat.astype(xp.float32) * xp.float32(2.0**-self.input_frac_bits)

    def reference(self, x):
        return self.input_values(x) @ self.weights + self.bias, None

    def packed(self):
        def run(x):
            return self.input_values(x, jnp) @ self.weights + self.bias

        return run

    def manifest_entry(self, index, out_dir):
        entry = super().manifest_entry(index, out_dir)
        entry.update(
            input="fixed_point" if self.input_frac_bits is not None else "bits",
            input_frac_bits=self.input_frac_bits,
            rule="logits = v @ W + b in float32, the product first, then + b; v = "
            + ("float32(q) * float32(2^-F)" if self.input_frac_bits is not None else "2a - 1"),
            weights_npz=f"weights/L{index}_float.npz",
        )
        np.savez(os.path.join(out_dir, entry["weights_npz"]), kernel=self.weights, bias=self.bias)
        return entry


@dataclasses.dataclass
class FoldedModel:
    """A model as integer stages, and how its input is formed from the uint8 image."""

    stages: list[Stage]
    input_encoding: str
    encoding_levels: int
    dataset: str
    model: str
    normalization: str = "dataset"  # of the pixels a float first layer sees (data.normalization_stats)
