"""Binarized Flax (``flax.nnx``) layers: ``BinaryConv`` and ``BinaryDense``, plus small helpers.

A binary layer computes ``y = conv(Qa(x), Qw(W))`` where

* ``Qa(x) = estimator(x, k_a, t_a)`` in {-1, +1} when ``binarize_activations`` (1w1a), else ``x`` (1w32a);
* ``Qw(W) = libra_pb(W, k_w, t_w)`` in {+-2**n} per output channel when ``binarize_weights``, else ``W``.

Latent weights are float32 parameters; the convolution itself runs in the compute ``dtype``
(bfloat16 on TPU/GPU), where +-1 and +-2**n are exact, so it uses the matrix units. With both
flags off the layer is an ordinary convolution: full-precision layers of a model use the same class,
so the binary/float cost compares the same network in the same harness.

Layout: NHWC activations ``[B, H, W, C]``, HWIO kernels ``[kh, kw, C_in, C_out]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from irnet_jax import binarization as bz

Array = jax.Array
Dtype = Any


@dataclasses.dataclass
class LayerCall:
    """One recorded call of a conv/dense layer: the module, what its matmul saw, its output shape."""

    module: nnx.Module
    matmul_input: Array
    output_shape: tuple[int, ...]


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
        _recorded_calls.append(LayerCall(module, matmul_input, tuple(output.shape)))


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
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, window, window, 1), pads
    )


def batch_norm(num_features: int, dtype: Dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5), float32 statistics."""
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class _BinaryLayer(nnx.Module):
    """Shared options and the two quantizers of BinaryConv and BinaryDense."""

    kernel_reduce_axes: tuple[int, ...] = ()

    def _init_options(self, binarize_weights, binarize_activations, estimator, weight_scale, dtype,
                      materialize_input):
        self.materialize_input = materialize_input
        self.binarize_weights = binarize_weights
        self.binarize_activations = binarize_activations
        self.estimator = estimator
        self.weight_scale = weight_scale
        self.dtype = dtype
        self._estimator_fn = bz.get_estimator(estimator)  # validates the name early

    def set_view(self, materialize_input: bool | None = None) -> None:
        """Used by ``nnx.view``: e.g. ``nnx.view(model, materialize_input=False)`` for inference."""
        if materialize_input is not None:
            self.materialize_input = materialize_input

    @property
    def is_binary(self) -> bool:
        """True when both weights and activations are 1-bit (the matmul is XNOR-popcount)."""
        return self.binarize_weights and self.binarize_activations

    def quantized_kernel(self, ede: bz.EstimatorParams) -> Array:
        """``Qw(W)``: Libra-PB of the float32 latent kernel, or the kernel itself."""
        w = self.kernel[...]
        if not self.binarize_weights:
            return w
        return bz.libra_pb(
            w, ede.k_w, ede.t_w, reduce_axes=self.kernel_reduce_axes,
            estimator=self._estimator_fn, scale=self.weight_scale,
        )

    def quantized_input(self, x: Array, ede: bz.EstimatorParams) -> Array:
        """``Qa(x)``: the estimator's sign of ``x``, or ``x`` itself.

        With ``materialize_input`` the input first passes an optimization barrier, so it is stored
        once instead of being recomputed: without it XLA CPU re-derives the whole chain of preceding
        elementwise ops (residual adds, BatchNorm, hardtanh: quadratic in depth for the Bi-Real
        ResNet) inside every backward transpose. It acts only where the ``cse_barrier_expander``
        pass is disabled for the compilation (the trainer does so on CPU); elsewhere XLA removes it.
        """
        if self.materialize_input:
            x = jax.lax.optimization_barrier(x)
        if not self.binarize_activations:
            return x
        return self._estimator_fn(x, ede.k_a, ede.t_a)


class BinaryConv(_BinaryLayer):
    """2-D convolution with optional IR-Net binarization of weights and/or input activations.

    ``x: [B, H, W, C_in] -> [B, H', W', C_out]``, zero padding of ``padding`` pixels per side.
    """

    kernel_reduce_axes = (0, 1, 2)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        strides: int = 1,
        padding: int | None = None,
        use_bias: bool = False,
        binarize_weights: bool = True,
        binarize_activations: bool = True,
        estimator: str = "ede",
        weight_scale: bool = True,
        dtype: Dtype = jnp.float32,
        materialize_input: bool = False,
        kernel_init: nnx.Initializer = nnx.initializers.kaiming_normal(),
        rngs: nnx.Rngs,
    ):
        self._init_options(binarize_weights, binarize_activations, estimator, weight_scale, dtype,
                           materialize_input)
        self.in_features, self.out_features = in_features, out_features
        self.kernel_size, self.strides = kernel_size, strides
        self.padding = kernel_size // 2 if padding is None else padding
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

    def __call__(self, x: Array, ede: bz.EstimatorParams | None = None) -> Array:
        if x.ndim != 4 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryConv expects [B, H, W, {self.in_features}] input, got shape {x.shape}")
        ede = bz.EstimatorParams.constant() if ede is None else ede
        xq = self.quantized_input(x, ede).astype(self.dtype)
        wq = self.quantized_kernel(ede).astype(self.dtype)
        p = self.padding
        y = jax.lax.conv_general_dilated(
            xq, wq, window_strides=(self.strides, self.strides), padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        _record(self, xq, y)
        return y


class BinaryDense(_BinaryLayer):
    """Fully-connected layer with optional binarization. ``x: [B, C_in] -> [B, C_out]``."""

    kernel_reduce_axes = (0,)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        binarize_weights: bool = True,
        binarize_activations: bool = True,
        estimator: str = "ede",
        weight_scale: bool = True,
        dtype: Dtype = jnp.float32,
        materialize_input: bool = False,
        kernel_init: nnx.Initializer = nnx.initializers.lecun_normal(),
        rngs: nnx.Rngs,
    ):
        self._init_options(binarize_weights, binarize_activations, estimator, weight_scale, dtype,
                           materialize_input)
        self.in_features, self.out_features = in_features, out_features
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

    def __call__(self, x: Array, ede: bz.EstimatorParams | None = None) -> Array:
        if x.ndim != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"BinaryDense expects [B, {self.in_features}] input, got shape {x.shape}")
        ede = bz.EstimatorParams.constant() if ede is None else ede
        xq = self.quantized_input(x, ede).astype(self.dtype)
        wq = self.quantized_kernel(ede).astype(self.dtype)
        y = xq @ wq
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        _record(self, xq, y)
        return y
