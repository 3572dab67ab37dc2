"""Binarized Flax (``flax.nnx``) layers: ``BinaryConv`` and ``BinaryDense``, plus small helpers.

A binary layer computes ``y = conv(pad(Qa(x)), Qw(W))`` where

* ``Qa(x) = estimator(x, k_a, t_a)`` in {-1, +1} when ``binarize_activations`` (1w1a), else ``x`` (1w32a);
  with ``activation_std_norm`` (IE-Net) ``x`` is first divided by its per-sample standard deviation,
  which changes the backward pass only;
* ``Qw(W) = estimator(W_std, k_w, t_w) * s`` when ``binarize_weights`` (Libra-PB: ``W_std`` standardized
  per output channel), with ``s`` per output channel: ``2**round(log2(mean|W_std|))`` (IR-Net,
  ``weight_scale="power_of_two"``), a learned scale initialised to ``mean|W|`` (IE-Net, ``"learned"``),
  or 1 (``"none"``); else ``W``;
* ``pad`` pads with zeros, or with constant +1 / -1, or a +1/-1 checkerboard (``pad_value``) so that a
  binary layer's input stays in {-1, +1} including its border.

Latent weights are float32 parameters; the convolution itself runs in the compute ``dtype``
(bfloat16 on TPU/GPU), where +-1 and +-2**n are exact, so it uses the matrix units. With both
flags off the layer is an ordinary convolution: full-precision layers of a model use the same class,
so the binary/float cost compares the same network in the same harness.

Layout: NHWC activations ``[B, H, W, C]``, HWIO kernels ``[kh, kw, C_in, C_out]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irnet_jax import binarization as bz
from irnet_jax import sign_conv

Array = jax.Array
Dtype = Any


@dataclasses.dataclass
class LayerCall:
    """One recorded call of a conv/dense layer: the module, what its matmul saw (padded), its output
    (before bias and output scale)."""

    module: nnx.Module
    matmul_input: Array
    output: Array

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.output.shape)


_recorded_calls: list[LayerCall] | None = None


@contextlib.contextmanager
def record_layer_calls() -> Iterator[list[LayerCall]]:
    """Within this context (eager, not under ``jit``), every BinaryConv/BinaryDense call is appended
    to the yielded list; used by the model summary and by tests that check binary inputs."""
    global _recorded_calls
    previous, _recorded_calls = _recorded_calls, []
    try:
        yield _recorded_calls
    finally:
        _recorded_calls = previous


def _record(module: nnx.Module, matmul_input: Array, output: Array) -> None:
    if _recorded_calls is not None:
        _recorded_calls.append(LayerCall(module, matmul_input, output))


def materialize(x: Array, on: bool = True) -> Array:
    """``x`` behind an optimization barrier (when ``on``): XLA computes and stores it once.

    Without it XLA:CPU fuses a value that has several consumers into each of them, recomputing it,
    and for a residual stream (``x_{l+1} = ht(BN(conv(x_l)) + x_l)``) every fusion re-derives the
    whole chain of earlier blocks: quadratic in depth, forward and backward (BENCHMARKS.md). The
    barrier acts only where the ``cse_barrier_expander`` pass is disabled for the compilation (the
    trainer does so where it uses barriers, on CPU); elsewhere XLA removes it. Values are unchanged.
    """
    return jax.lax.optimization_barrier(x) if on else x


def hardtanh(x: Array) -> Array:
    """``clip(x, -1, 1)``; gradient 1 inside (-1, 1), 0 outside."""
    return jnp.clip(x, -1.0, 1.0)


def max_pool(x: Array, window: int = 2, *, ceil_mode: bool = False) -> Array:
    """Non-overlapping ``window x window`` max-pooling of ``[B, H, W, C]``.

    Output size ``floor(H / window)``, or ``ceil(H / window)`` with ``ceil_mode`` (PyTorch's flag:
    the partial last window is kept; the missing positions never win the max).
    """
    pads = [(0, 0)] * 4
    if ceil_mode:
        pads = [(0, 0)] + [(0, -size % window) for size in x.shape[1:3]] + [(0, 0)]
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, window, window, 1), pads)


def batch_norm(num_features: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5), float32 statistics."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class Offset(nnx.Module):
    """A learnable per-channel offset ``y = x + b`` (the original's "BN -> offset").

    Before a sign, ``sign(x + b)`` is a per-channel threshold compare ``x >= -b`` on hardware."""

    def __init__(self, num_features: int, dtype: Dtype = jnp.float32):
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        return x + self.bias[...].astype(x.dtype)


NORMS = ("batchnorm", "offset", "frozen_scale_batchnorm")


def norm_layer(kind: str, num_features: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Module:
    """The normalization before each sign, by name.

    * ``batchnorm``: ``gamma * (x - mean) / sqrt(var + eps) + beta``; inference: a threshold compare
      whose direction flips where ``gamma < 0``.
    * ``offset``: ``x + b`` (:class:`Offset`); inference: threshold ``-b``.
    * ``frozen_scale_batchnorm``: BatchNorm with ``gamma = 1`` fixed, ``beta`` trained; inference:
      ``x >= mean - beta * sqrt(var + eps)``, a threshold with no direction flip.
    """
    if kind == "batchnorm":
        return batch_norm(num_features, dtype, rngs)
    if kind == "offset":
        return Offset(num_features, dtype)
    if kind == "frozen_scale_batchnorm":
        return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, use_scale=False, dtype=dtype, rngs=rngs)
    raise ValueError(f"unknown norm {kind!r}; valid: {list(NORMS)}")


WEIGHT_SCALES = ("power_of_two", "learned", "none")
PAD_VALUES = ("zero", "one", "minus_one", "checkerboard")
OUTPUT_SCALES = ("none", "fixed", "learned")


def pad_spatial(x: Array, pad: int, pad_value: str) -> Array:
    """Pad ``[B, H, W, C]`` by ``pad`` pixels per side with zeros, +1, -1 or a +1/-1 checkerboard
    (``+1`` where ``(row + col)`` of the padded image is even)."""
    if pad_value not in PAD_VALUES:
        raise ValueError(f"unknown pad_value {pad_value!r}; valid: {list(PAD_VALUES)}")
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    if pad == 0:
        return x
    if pad_value in ("zero", "one", "minus_one"):
        return jnp.pad(x, widths, constant_values={"zero": 0, "one": 1, "minus_one": -1}[pad_value])
    h, w = x.shape[1] + 2 * pad, x.shape[2] + 2 * pad
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    border = np.ones((h, w), bool)
    border[pad : h - pad, pad : w - pad] = False
    fill = np.where(border, np.where((rows + cols) % 2 == 0, 1.0, -1.0), 0.0)
    return jnp.pad(x, widths) + jnp.asarray(fill[None, :, :, None], x.dtype)


class _BinaryLayer(nnx.Module):
    """Shared options and the two quantizers of BinaryConv and BinaryDense."""

    kernel_reduce_axes: tuple[int, ...] = ()

    def _init_options(
        self,
        *,
        binarize_weights: bool,
        binarize_activations: bool,
        estimator: str,
        weight_scale: str,
        activation_std_norm: bool,
        dtype: Dtype,
        kernel: Array,
    ):
        if weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"unknown weight_scale {weight_scale!r}; valid: {list(WEIGHT_SCALES)}")
        self.binarize_weights = binarize_weights
        self.binarize_activations = binarize_activations
        self.estimator = estimator
        self.weight_scale = weight_scale
        self.activation_std_norm = activation_std_norm
        self.dtype = dtype
        self._estimator_fn = bz.get_estimator(estimator)  # validates the name early
        self.kernel = nnx.Param(kernel)
        learned = binarize_weights and weight_scale == "learned"
        self.scale = nnx.Param(jnp.mean(jnp.abs(kernel), axis=self.kernel_reduce_axes)) if learned else None

    @property
    def is_binary(self) -> bool:
        """True when both weights and activations are 1-bit (the matmul is XNOR-popcount)."""
        return self.binarize_weights and self.binarize_activations

    def quantized_kernel(self, ede: bz.EstimatorParams) -> Array:
        """``Qw(W)``: Libra-PB of the float32 latent kernel (scaled as ``weight_scale``), or the kernel."""
        w = self.kernel[...]
        if not self.binarize_weights:
            return w
        wq = bz.libra_pb(
            w,
            ede.k_w,
            ede.t_w,
            reduce_axes=self.kernel_reduce_axes,
            estimator=self._estimator_fn,
            scale=self.weight_scale == "power_of_two",
        )
        return wq * self.scale[...] if self.scale is not None else wq

    def quantized_input(self, x: Array, ede: bz.EstimatorParams) -> Array:
        """``Qa(x)``: the estimator's sign of ``x``, or ``x`` itself."""
        if not self.binarize_activations:
            return x
        if self.activation_std_norm:
            axes = tuple(range(1, x.ndim))
            x = x / (jnp.std(x.astype(jnp.float32), axis=axes, keepdims=True) + 1e-5).astype(x.dtype)
        return self._estimator_fn(x, ede.k_a, ede.t_a)


def _value(v: nnx.Param | float) -> Array | float:
    """The value of a learnable (``Param``) or fixed (``float``) scalar."""
    return v[...] if isinstance(v, nnx.Variable) else v


class BinaryConv(_BinaryLayer):
    """2-D convolution with optional IR-Net binarization of weights and/or input activations.

    ``x: [B, H, W, C_in] -> [B, H', W', C_out]``; ``padding`` pixels per side filled as ``pad_value``.
    ``products`` (``sign_conv.PRODUCTS``; other than "float" for 1w1a only): how the forward conv
    computes its sums, "int8" or "popcount" (XNOR-popcount of packed bits): the same numbers, a speed
    choice of the backend policy.
    """

    kernel_reduce_axes = (0, 1, 2)
    branches = 1  # convolutions per call (ShiftBinaryConv: 2)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        strides: int = 1,
        padding: int | None = None,
        pad_value: str = "zero",
        use_bias: bool = False,
        binarize_weights: bool = True,
        binarize_activations: bool = True,
        estimator: str = "ede",
        weight_scale: str = "power_of_two",
        activation_std_norm: bool = False,
        dtype: Dtype = jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.kaiming_normal(),
        products: str = "float",
        rngs: nnx.Rngs,
    ):
        if pad_value not in PAD_VALUES:
            raise ValueError(f"unknown pad_value {pad_value!r}; valid: {list(PAD_VALUES)}")
        shape = (kernel_size, kernel_size, in_features, out_features)
        self._init_options(
            binarize_weights=binarize_weights,
            binarize_activations=binarize_activations,
            estimator=estimator,
            weight_scale=weight_scale,
            activation_std_norm=activation_std_norm,
            dtype=dtype,
            kernel=kernel_init(rngs.params(), shape, jnp.float32),
        )
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.strides = kernel_size, strides
        self.padding = kernel_size // 2 if padding is None else padding
        self.pad_value = pad_value
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        if products not in sign_conv.PRODUCTS:
            raise ValueError(f"unknown products {products!r}; valid: {list(sign_conv.PRODUCTS)}")
        if products != "float" and not self.is_binary:
            raise ValueError(f"products={products!r} needs a 1w1a conv (binary weights and activations)")
        self.products = products

    def _check_input(self, x: Array) -> None:
        if x.ndim != 4 or x.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expects [B, H, W, {self.in_features}] input, got shape {x.shape}")

    def _conv(self, x: Array, w: Array, strides: int, pad: int) -> Array:
        return sign_conv.PRODUCTS[self.products](x, w, strides, pad)

    def _binary_conv(self, xq: Array, wq: Array) -> Array:
        """Pad ``xq`` as configured and convolve (zero padding is left to the convolution itself)."""
        if self.pad_value == "zero":
            y = self._conv(xq, wq, self.strides, self.padding)
            if _recorded_calls is not None:
                _record(self, pad_spatial(xq, self.padding, "zero"), y)
            return y
        xp = pad_spatial(xq, self.padding, self.pad_value)
        y = self._conv(xp, wq, self.strides, 0)
        _record(self, xp, y)
        return y

    @property
    def fan_in(self) -> int:
        """``K = kh kw C_in``: the largest ``|D|`` of a 1w1a conv."""
        return self.kernel_size**2 * self.in_features

    def integer_sums(self, q: Array, weight_signs: Array) -> Array:
        """1w1a: ``D`` int32 ``[B, H', W', C_out]`` of the bits ``sign(q)`` (``q >= 0`` is +1) and the
        ``+-1`` HWIO ``weight_signs`` (padded as ``pad_value``)."""
        bits = jnp.where(q >= 0, 1.0, -1.0).astype(jnp.float32)
        d = self._binary_conv(bits, weight_signs.astype(jnp.float32))  # +-1 products: exact in float32
        return jnp.round(d).astype(jnp.int32)

    def __call__(self, x: Array, ede: bz.EstimatorParams | None = None) -> Array:
        self._check_input(x)
        ede = bz.EstimatorParams.constant() if ede is None else ede
        xq = self.quantized_input(x, ede).astype(self.dtype)
        y = self._binary_conv(xq, self.quantized_kernel(ede).astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class ShiftBinaryConv(BinaryConv):
    """Shift conv (the original's ShiftIRConv2d, IE-Net's IE-BC): a 2-base binary activation.

    ``y = conv(Qa(x + s1), Qw(W)) + a * conv(Qa(x + s2), Qw(W))`` with learnable per-input-channel
    shifts ``s1`` (init +0.5) and ``s2`` (init -0.5) and the same binary kernel; ``a = 1`` (the
    original) or a learnable scalar initialised to ``second_branch_scale`` (IE-Net: small).
    """

    branches = 2

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        learn_second_branch_scale: bool = False,
        second_branch_scale: float = 1.0,
        **kw,
    ):
        super().__init__(in_features, out_features, kernel_size, **kw)
        self.shift1 = nnx.Param(jnp.full((in_features,), 0.5, jnp.float32))
        self.shift2 = nnx.Param(jnp.full((in_features,), -0.5, jnp.float32))
        self.branch_scale = (
            nnx.Param(jnp.asarray(second_branch_scale, jnp.float32))
            if learn_second_branch_scale
            else float(second_branch_scale)
        )

    def __call__(self, x: Array, ede: bz.EstimatorParams | None = None) -> Array:
        self._check_input(x)
        ede = bz.EstimatorParams.constant() if ede is None else ede
        wq = self.quantized_kernel(ede).astype(self.dtype)
        shifted = jnp.concatenate([x + self.shift1[...].astype(x.dtype), x + self.shift2[...].astype(x.dtype)])
        y1, y2 = jnp.split(self._binary_conv(self.quantized_input(shifted, ede).astype(self.dtype), wq), 2)
        y = y1 + jnp.asarray(_value(self.branch_scale), self.dtype) * y2
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class BinaryDense(_BinaryLayer):
    """Fully-connected layer with optional binarization. ``x: [B, C_in] -> [B, C_out]``.

    ``output_scale`` keeps the logits of a binary last layer (integers in [-C_in, C_in]) usable:
    ``"fixed"`` multiplies by ``1/sqrt(C_in)``, ``"learned"`` by ``alpha/sqrt(C_in)`` with a learnable
    ``alpha`` initialised to 1 (parametrized so that its gradient is O(1) and plain SGD stays stable),
    ``"none"`` leaves them raw.
    """

    kernel_reduce_axes = (0,)
    branches = 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        binarize_weights: bool = True,
        binarize_activations: bool = True,
        estimator: str = "ede",
        weight_scale: str = "power_of_two",
        activation_std_norm: bool = False,
        output_scale: str = "none",
        dtype: Dtype = jnp.float32,
        kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
        rngs: nnx.Rngs,
    ):
        if output_scale not in OUTPUT_SCALES:
            raise ValueError(f"unknown output_scale {output_scale!r}; valid: {list(OUTPUT_SCALES)}")
        self._init_options(
            binarize_weights=binarize_weights,
            binarize_activations=binarize_activations,
            estimator=estimator,
            weight_scale=weight_scale,
            activation_std_norm=activation_std_norm,
            dtype=dtype,
            kernel=kernel_init(rngs.params(), (in_features, out_features), jnp.float32),
        )
        self.in_features, self.out_features = in_features, out_features
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.output_normalizer = float(1.0 / np.sqrt(in_features))
        self.output_scale = {"learned": nnx.Param(jnp.ones((), jnp.float32)), "fixed": 1.0, "none": None}[output_scale]

    def output_multiplier(self) -> Array | float | None:
        """What the matmul output is multiplied by: ``alpha / sqrt(C_in)`` (``alpha`` learned or 1), or
        ``None`` without an output scale."""
        if self.output_scale is None:
            return None
        return _value(self.output_scale) * self.output_normalizer

    def __call__(self, x: Array, ede: bz.EstimatorParams | None = None) -> Array:
        if x.ndim != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryDense expects [B, {self.in_features}] input, got shape {x.shape}")
        ede = bz.EstimatorParams.constant() if ede is None else ede
        xq = self.quantized_input(x, ede).astype(self.dtype)
        y = xq @ self.quantized_kernel(ede).astype(self.dtype)
        _record(self, xq, y)
        multiplier = self.output_multiplier()
        if multiplier is not None:
            y = y * jnp.asarray(multiplier, self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
