"""The stages of a folded model, one class per kind: each knows its NumPy reference, its packed JAX
form, its manifest entry and parameter files, and its golden files.

Kinds: ``binary_conv`` (XNOR-popcount, integer threshold), ``float_conv`` (a full-precision first
layer: float32 conv, affine, sign), ``binary_dense`` (integer sums, float32 logit map) and
``float_dense`` (a full-precision classifier on the ±1 input).
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

from irnet_jax.export import bits as bit_ops

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
    """A conv's window, its padding, and a 2x2 max-pool ``"sums"`` (before the threshold), ``"bits"``
    (after it: an OR of +1 bits) or ``"none"``; ``ceil_pool``: a partial window at an odd edge is kept."""

    kernel_size: int
    stride: int = 1
    pad: int = 0
    pad_bit: str = "zero"
    pool: str = "none"
    ceil_pool: bool = False

    def geometry_entry(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.pad,
            "pad_bits": self.pad_bit,
            "pool": self.pool,
            "pool_ceil_mode": self.ceil_pool,
        }


@dataclasses.dataclass(kw_only=True)
class BinaryConvStage(_ConvGeometry, _BinaryWeights, Stage):
    """``D = K - 2 popcount(patch XOR w)``, bit ``= (D <= T) if flip else (D >= T)`` per output channel."""

    kind: ClassVar[str] = "binary_conv"
    threshold: np.ndarray  # int64 [C_out]
    flip: np.ndarray  # bool [C_out]

    def sums_to_bits(self, d, xp=np):
        """Integer sums -> output bits: pool ``D`` ("sums"), threshold, pool the bits ("bits")."""
        if self.pool == "sums":
            d = bit_ops.pool2(d, self.ceil_pool, np.iinfo(np.int32).min, xp)
        x = xp.where(self.flip, d <= self.threshold, d >= self.threshold).astype(xp.uint8)
        if self.pool == "bits":
            x = bit_ops.pool2(x, self.ceil_pool, 0, xp)
        return x

    def reference(self, x):
        padded = bit_ops.pad_bits(x, self.pad, self.pad_bit)
        d = bit_ops.xnor_popcount_sums(bit_ops.patches(padded, self.kernel_size, self.stride), self.weight_bits)
        return self.sums_to_bits(d), d

    def packed(self):
        words = bit_ops.pack_bits_u32(jnp.asarray(self.weight_bits))

        def run(x):
            padded = bit_ops.jax_pad_bits(x, self.pad, self.pad_bit)
            a = bit_ops.pack_bits_u32(bit_ops.jax_patches(padded, self.kernel_size, self.stride))
            return self.sums_to_bits(self.fan_in - 2 * bit_ops.packed_popcount_xor(a, words), jnp)

        return run

    def manifest_entry(self, index, out_dir):
        entry = {**super().manifest_entry(index, out_dir), **self.weight_entry(index, out_dir)}
        entry.update(self.geometry_entry())
        entry.update(
            thresholds=f"thresholds/L{index}.txt",
            thresholds_memb=f"thresholds/L{index}_thr.memb",
            flips_memb=f"thresholds/L{index}_flip.memb",
            rule="bit = (D <= T) if flip else (D >= T), D = K - 2*popcount(a XOR w)",
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

    def golden_extra(self, index, image_input):
        """For the RTL check: the im2col patches and the per-position bits before pooling."""
        p = bit_ops.patches(bit_ops.pad_bits(image_input, self.pad, self.pad_bit), self.kernel_size, self.stride)[0]
        p = p.reshape(-1, p.shape[-1])
        d = bit_ops.xnor_popcount_sums(p, self.weight_bits)
        pre = np.where(self.flip, d <= self.threshold, d >= self.threshold)
        return {
            f"L{index}_patches.memb": [bit_ops.bits_line(r) for r in p],
            f"L{index}_prepool.memb": [bit_ops.bits_line(r) for r in pre],
        }


@dataclasses.dataclass(kw_only=True)
class FloatConvStage(_ConvGeometry, Stage):
    """A full-precision first layer: ``y = conv(x, W)`` (float32, zero padding), pooled ("sums"),
    bit ``= (A y + B >= 0)``, pooled ("bits"). ``weights``: float32 HWIO; ``affine``: ``(A, B)``."""

    kind: ClassVar[str] = "float_conv"
    weights: np.ndarray
    affine: tuple[np.ndarray, np.ndarray]

    def _conv(self, x):
        return jax.lax.conv_general_dilated(
            x,
            jnp.asarray(self.weights),
            (self.stride,) * 2,
            ((self.pad, self.pad),) * 2,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )

    def reference(self, x):
        y = np.asarray(self._conv(jnp.asarray(x)), np.float32)
        if self.pool == "sums":
            y = bit_ops.pool2(y, self.ceil_pool, -np.inf)
        a, b = self.affine
        out = ((y.astype(np.float64) * a + b) >= 0).astype(np.uint8)
        if self.pool == "bits":
            out = bit_ops.pool2(out, self.ceil_pool, 0)
        return out, None

    def packed(self):
        a, b = (jnp.asarray(v, jnp.float32) for v in self.affine)

        def run(x):
            y = self._conv(x)
            if self.pool == "sums":
                y = bit_ops.pool2(y, self.ceil_pool, -jnp.inf, jnp)
            out = (y * a + b >= 0).astype(jnp.uint8)
            if self.pool == "bits":
                out = bit_ops.pool2(out, self.ceil_pool, 0, jnp)
            return out

        return run

    def manifest_entry(self, index, out_dir):
        entry = {**super().manifest_entry(index, out_dir), **self.geometry_entry()}
        entry.update(
            note="full precision first layer: float32 conv on normalized pixels, then bit = (A*y + B >= 0)",
            weights_npz=f"weights/L{index}_float.npz",
        )
        a, b = self.affine
        np.savez(os.path.join(out_dir, entry["weights_npz"]), kernel_hwio=self.weights, A=a, B=b)
        return entry


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
        words = bit_ops.pack_bits_u32(jnp.asarray(self.weight_bits))

        def run(x):
            d = self.fan_in - 2 * bit_ops.packed_popcount_xor(bit_ops.pack_bits_u32(x.reshape(x.shape[0], -1)), words)
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
    """A full-precision classifier: ``logits = (2 a - 1) @ weights + bias`` (float32), ``weights: [K, C]``."""

    kind: ClassVar[str] = "float_dense"
    weights: np.ndarray
    bias: np.ndarray

    def reference(self, x):
        flat = x.reshape(x.shape[0], -1)
        return (2.0 * flat.astype(np.float32) - 1.0) @ self.weights + self.bias, None

    def packed(self):
        def run(x):
            return (2.0 * x.reshape(x.shape[0], -1).astype(jnp.float32) - 1.0) @ self.weights + self.bias

        return run

    def manifest_entry(self, index, out_dir):
        entry = super().manifest_entry(index, out_dir)
        entry.update(
            note="full precision last layer: logits = (2a - 1) @ W + b (float32)",
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
