"""Per-layer parameter/MAC summary of a model, as ``larq.models.summary`` prints it.

For each conv/dense layer: its parameters split into 1-bit (binarized latent kernels) and 32-bit
(kernels of full-precision layers, biases), and its multiply-accumulates per image split into
binary (1-bit weights *and* 1-bit inputs: XNOR-popcount) and float (a shift conv counts both of its
branches). Other parameters (BatchNorm scale and bias, offsets, learned scales, shifts) are 32-bit.
The input encoding (comparators on uint8 pixels) has no MACs. Model size in bits = binary params x 1 + float params x 32. The per-channel
power-of-two scales of Libra-PB are derived from the kernel, not stored parameters (on hardware,
a shift folded into the following threshold), and are not counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irnet_jax.layers import BinaryConv, BinaryDense, record_layer_calls


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    name: str
    kind: str  # "conv" or "dense"
    weights: str  # "1-bit" or "float"
    inputs: str  # "1-bit" or "float"
    output_shape: tuple[int, ...]
    binary_params: int
    float_params: int
    binary_macs: int
    float_macs: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    layers: tuple[LayerSummary, ...]
    other_float_params: int  # BatchNorm scale/bias and any parameter outside conv/dense layers

    @property
    def binary_params(self) -> int:
        return sum(l.binary_params for l in self.layers)

    @property
    def float_params(self) -> int:
        return sum(l.float_params for l in self.layers) + self.other_float_params

    @property
    def binary_macs(self) -> int:
        return sum(l.binary_macs for l in self.layers)

    @property
    def float_macs(self) -> int:
        return sum(l.float_macs for l in self.layers)

    @property
    def size_bits(self) -> int:
        return self.binary_params + 32 * self.float_params


def summarize(model: nnx.Module, input_shape: Sequence[int]) -> ModelSummary:
    """Run one eager forward pass on a ``[1, H, W, C]`` zero image and account for every layer. The
    pass runs a copy in training mode: in eval mode a model with integer arithmetic (``residual_frac_bits``,
    ``integer_first_layer``) skips the float layers it was trained as."""
    copy = nnx.clone(model)
    names = {id(m): "/".join(str(p) for p in path) for path, m in nnx.iter_modules(copy)}
    copy.train()
    with record_layer_calls() as calls:
        copy(jnp.zeros((1, *input_shape), jnp.float32))
    layers, counted = [], 0
    for call in calls:
        m = call.module
        kernel_size = int(m.kernel[...].size)
        bias_size = 0 if m.bias is None else int(m.bias[...].size)
        counted += kernel_size + bias_size
        if isinstance(m, BinaryConv):
            macs = int(np.prod(call.output_shape[1:])) * m.kernel_size**2 * m.in_features * m.branches
            kind = "conv"
        else:
            assert isinstance(m, BinaryDense)
            macs, kind = m.in_features * m.out_features, "dense"
        layers.append(
            LayerSummary(
                name=names.get(id(m), "?"),
                kind=kind,
                weights="1-bit" if m.binarize_weights else "float",
                inputs="1-bit" if m.binarize_activations else "float",
                output_shape=tuple(call.output_shape[1:]),
                binary_params=kernel_size if m.binarize_weights else 0,
                float_params=bias_size + (0 if m.binarize_weights else kernel_size),
                binary_macs=macs if m.is_binary else 0,
                float_macs=0 if m.is_binary else macs,
            )
        )
    total = sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return ModelSummary(tuple(layers), other_float_params=total - counted)


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def format_summary(s: ModelSummary, title: str = "") -> str:
    """A fixed-width table: one row per layer, then totals and the model size."""
    head = ("layer", "weights", "inputs", "output", "1-bit params", "float params", "1-bit MACs", "float MACs")
    rows = [
        (
            l.name,
            l.weights,
            l.inputs,
            "x".join(map(str, l.output_shape)),
            _fmt(l.binary_params),
            _fmt(l.float_params),
            _fmt(l.binary_macs),
            _fmt(l.float_macs),
        )
        for l in s.layers
    ]
    rows.append(("(norms, scales, shifts)", "", "", "", "0", _fmt(s.other_float_params), "0", "0"))
    rows.append(
        ("total", "", "", "", _fmt(s.binary_params), _fmt(s.float_params), _fmt(s.binary_macs), _fmt(s.float_macs))
    )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    sep = "-" * len(line(head))
    out = ([title] if title else []) + [line(head), sep, *map(line, rows[:-1]), sep, line(rows[-1])]
    float_size = 32 * (s.binary_params + s.float_params)
    out.append(
        f"model size: {s.size_bits / 8 / 2**20:.3f} MiB ({_fmt(s.size_bits)} bits) vs "
        f"{float_size / 8 / 2**20:.3f} MiB all-float32 ({float_size / max(s.size_bits, 1):.1f}x smaller); "
        f"binary MACs {100 * s.binary_macs / max(s.binary_macs + s.float_macs, 1):.1f}% of all"
    )
    return "\n".join(out)
