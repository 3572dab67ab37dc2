"""Topologies of IR-Net, chosen by name from a registry (``create_model``, ``list_models``).

All models map ``x: [B, H, W, C] float -> logits [B, num_classes]`` and take the estimator's
``ede: EstimatorParams`` (``None`` = constant, fine for inference: the forward pass ignores it).
BatchNorm layers follow ``model.train()`` / ``model.eval()`` (or ``nnx.view``).

The paper's setting is the default: first and last layers full precision, every other conv binary
(1w1a). ``binarize_activations=False`` gives 1w32a, ``binary=False`` the same network in full
precision (for measuring the cost of binarization), ``binary_first_layer`` / ``binary_last_layer``
binarize those layers too.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irnet_jax import fixed_stream
from irnet_jax import integer_first_layer as int_first
from irnet_jax import mesh as mesh_lib
from irnet_jax.binarization import EstimatorParams
from irnet_jax.layers import (
    BinaryConv,
    BinaryDense,
    ShiftBinaryConv,
    batch_norm,
    hardtanh,
    materialize,
    max_pool,
    norm_layer,
)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ConvStage:
    """One conv stage of a sequential model as an integer pipeline sees it: ``conv``, then a 2x2
    max-pool before the norm (``pool="sums"``: it pools the conv's outputs), after it (``"bits"``: it
    pools the signs the next layer takes) or none (``"none"``; ``ceil_mode``: a partial window at an
    odd edge is kept), then ``norm``, whose sign the next layer takes (hardtanh keeps the sign).

    Sequential models list theirs with ``export_stages() -> (list[ConvStage], classifier)``; models
    whose signs see real-valued shortcuts (the ResNets) have no such method.
    """

    conv: BinaryConv
    norm: nnx.Module
    pool: str = "none"
    ceil_mode: bool = False


@dataclasses.dataclass(frozen=True)
class ResidualStage:
    """One binary conv of a Bi-Real ResNet block as an integer pipeline sees it:
    ``out = hardtanh(norm(conv(sign(x))) + shortcut(x))`` with ``x`` the stage's real-valued input and
    ``shortcut`` the identity, option A (``stride``-subsampling, ``pad_channels`` zero channels split
    evenly on both sides) or option B (``projection``: a float 1x1 conv of stride ``stride`` + norm). Bi-Real ResNets list theirs with ``export_residual_stages() -> (stem, stages,
    head_norm, classifier)``: the stem a ``ConvStage`` whose hardtanh (not its sign) starts the stream,
    the head a global average pool, ``head_norm`` (or ``None``) and the classifier."""

    conv: BinaryConv
    norm: nnx.Module
    shortcut: str = "identity"
    stride: int = 1
    pad_channels: int = 0
    projection: tuple[BinaryConv, nnx.Module] | None = None  # option B: its float 1x1 conv and norm


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How a model builds its conv/dense/norm layers (every field is a model option of ``create_model``).

    ``binary=False`` makes every layer full precision; otherwise conv/dense layers are binary except
    the first and last (unless ``binary_first_layer`` / ``binary_last_layer``), with activations
    binarized unless ``binarize_activations=False`` (1w32a). The remaining fields select the
    hardware-oriented variants: ``pad_value`` of binary-input convs, the ``norm`` before each sign,
    ``shift_conv`` (2-base activations), and IE-Net's ``weight_scale="learned"`` and
    ``activation_std_norm``. ``materialize_residuals`` stores the residual stream of the ResNets once
    per block (``layers.materialize``: an XLA:CPU speed-up, values unchanged). Likewise
    ``binary_conv_products``: how every 1w1a conv computes its forward sums (``sign_conv.PRODUCTS``:
    "float", "int8", "popcount"; the same numbers).

    ``residual_frac_bits = F > 0`` (Bi-Real ResNets only): the residual stream is int32 fixed point
    with ``F`` fractional bits (``fixed_stream``): computed in integers in eval mode, rounded to that
    grid with a straight-through gradient in training. Such a model takes pixel values (float,
    0..255) and normalizes them itself with ``pixel_mean`` / ``pixel_std`` (in [0, 1] units), so that
    its stem is an integer conv of the pixels.

    ``integer_first_layer`` (sequential nets with a float first layer): likewise pixels in, and in eval
    mode the first layer computed in exact int32 arithmetic (``integer_first_layer``), so the export's
    integer first layer is the model's own.
    """

    binary: bool = True
    binarize_activations: bool = True
    binary_first_layer: bool = False
    binary_last_layer: bool = False
    estimator: str = "ede"
    weight_scale: str = "power_of_two"
    activation_std_norm: bool = False
    pad_value: str = "zero"
    norm: str = "batchnorm"
    shift_conv: bool = False
    shift_learn_second_scale: bool = False
    shift_second_scale: float = 1.0
    last_layer_output_scale: str = "learned"
    dtype: Any = jnp.float32
    materialize_residuals: bool = False
    binary_conv_products: str = "float"
    residual_frac_bits: int = 0
    integer_first_layer: bool = False
    pixel_mean: tuple[float, ...] = ()
    pixel_std: tuple[float, ...] = ()

    def _layer_options(self, on: bool) -> dict[str, Any]:
        return dict(
            binarize_weights=on,
            binarize_activations=on and self.binarize_activations,
            estimator=self.estimator,
            weight_scale=self.weight_scale,
            activation_std_norm=self.activation_std_norm,
            dtype=self.dtype,
        )

    def conv(
        self, c_in: int, c_out: int, kernel_size: int = 3, *, binary: bool = True, rngs: nnx.Rngs, **kw
    ) -> BinaryConv:
        on = self.binary and binary
        binary_input = on and self.binarize_activations
        options = self._layer_options(on)
        if binary_input:
            options["pad_value"] = self.pad_value
            options["products"] = self.binary_conv_products
        if binary_input and self.shift_conv:
            return ShiftBinaryConv(
                c_in,
                c_out,
                kernel_size,
                learn_second_branch_scale=self.shift_learn_second_scale,
                second_branch_scale=self.shift_second_scale,
                rngs=rngs,
                **options,
                **kw,
            )
        return BinaryConv(c_in, c_out, kernel_size, rngs=rngs, **options, **kw)

    def dense(
        self, c_in: int, c_out: int, *, binary: bool = True, output_scale: str = "none", rngs: nnx.Rngs
    ) -> BinaryDense:
        return BinaryDense(
            c_in, c_out, output_scale=output_scale, rngs=rngs, **self._layer_options(self.binary and binary)
        )

    def first_conv(self, c_in: int, c_out: int, kernel_size: int = 3, *, rngs: nnx.Rngs, **kw) -> BinaryConv:
        return self.conv(c_in, c_out, kernel_size, binary=self.binary_first_layer, rngs=rngs, **kw)

    def last_dense(self, c_in: int, c_out: int, *, rngs: nnx.Rngs) -> BinaryDense:
        binary = self.binary and self.binary_last_layer
        return self.dense(
            c_in,
            c_out,
            binary=self.binary_last_layer,
            output_scale=self.last_layer_output_scale if binary else "none",
            rngs=rngs,
        )

    def norm_layer(self, num_features: int, rngs: nnx.Rngs) -> nnx.Module:
        return norm_layer(self.norm, num_features, self.dtype, rngs)


ModelBuilder = Callable[..., nnx.Module]
_MODELS: dict[str, ModelBuilder] = {}
SEQUENTIAL = ("vgg_small", "alexnet", "mnistnet")  # the SequentialBNN models


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Class/function decorator recording a model builder under ``name``."""

    def wrap(builder: ModelBuilder) -> ModelBuilder:
        _MODELS[name] = builder
        return builder

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern``."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    rngs: nnx.Rngs,
    **options: Any,
) -> nnx.Module:
    """Build model ``name`` for ``input_shape = (H, W, C)``.

    ``options`` are ``Quantization`` fields (shared by every model) or the model's own architecture
    keywords (e.g. ``block`` of the ResNets, ``widths`` of VGG-Small).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {list_models()}")
    builder = _MODELS[name]
    q_fields = {f.name for f in dataclasses.fields(Quantization)}
    arch_fields = set(architecture_options(name))
    bad = sorted(set(options) - q_fields - arch_fields)
    if bad:
        raise ValueError(f"unknown model option(s) {bad} for {name!r}; valid: {sorted(q_fields | arch_fields)}")
    q = Quantization(**{k: v for k, v in options.items() if k in q_fields})
    arch = {k: v for k, v in options.items() if k in arch_fields}
    h, w, c = (int(v) for v in input_shape)
    model = builder(input_shape=(h, w, c), num_classes=num_classes, q=q, rngs=rngs, **arch)
    if q.residual_frac_bits and not isinstance(model, CifarResNet):
        raise ValueError(f"residual_frac_bits > 0 applies to the ResNets (a residual stream), not {name!r}")
    if q.integer_first_layer and not isinstance(model, SequentialBNN):
        raise ValueError(
            f"integer_first_layer applies to the sequential nets {sorted(SEQUENTIAL)}, not {name!r}"
            + (" (a ResNet's stem is integer with residual_frac_bits)" if isinstance(model, CifarResNet) else "")
        )
    return model


def architecture_options(name: str) -> dict[str, Any]:
    """The architecture keywords of model ``name`` and their defaults."""
    builder = _MODELS[name]
    fn = builder.__init__ if isinstance(builder, type) else builder
    common = {"self", "input_shape", "num_classes", "q", "rngs"}
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.name not in common and p.kind is p.KEYWORD_ONLY
    }


def _pooled(size: int, times: int, ceil_mode: bool = False) -> int:
    for _ in range(times):
        size = -(-size // 2) if ceil_mode else size // 2
    return size


def normalize_pixels(pixels: Array, mean: Sequence[float], std: Sequence[float], dtype) -> Array:
    """``(p / 255 - mean) / std`` per channel, as ``data.normalize``, in ``dtype``."""
    x = pixels.astype(jnp.float32) / 255.0
    return ((x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)).astype(dtype)


class SequentialBNN(nnx.Module):
    """The sequential nets' first layer with ``integer_first_layer``: pixels in, normalized here in
    training, the first layer in exact int32 arithmetic in eval mode (``integer_first_layer``).
    Subclasses set ``convs``, ``bns`` and ``export_stages()`` and call ``setup_first_layer``."""

    def setup_first_layer(self, q: Quantization, input_shape: Sequence[int]) -> None:
        self.integer_first = q.integer_first_layer
        self.pixel_mean, self.pixel_std = tuple(q.pixel_mean), tuple(q.pixel_std)
        self.input_hw = tuple(input_shape[:2])
        spec = self.export_stages()[0][0]
        self.first_pool = (spec.pool, spec.ceil_mode)  # how the first layer pools: "none", "sums", "bits"
        if self.integer_first:
            _check_integer_first_layer(q, input_shape[2])

    def first_layer_layout(self) -> fixed_stream.StreamLayout:
        conv = self.convs[0]
        return fixed_stream.StreamLayout(
            frac_bits=0,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            input_hw=self.input_hw,
            stem_stride=conv.strides,
            stem_pad=conv.padding,
            weight_scale="none",
            norm_eps=float(self.bns[0].epsilon),
        )

    def first_layer_integers(self, host: bool = False) -> int_first.FirstLayerIntegers:
        """The eval-mode integers (``integer_first_layer.derive``): through a host callback (usable in
        ``jit`` on one device) or (``host``) derived here from this process's copies, as NumPy arrays."""
        get = (lambda v: mesh_lib.local_copy(v[...]).astype(np.float32)) if host else (lambda v: v[...])
        kernel, norm = get(self.convs[0].kernel), _norm_params(self.bns[0], get)
        if host:
            return int_first.derive(kernel, norm, self.first_layer_layout())
        return int_first.integers(kernel, norm, self.first_layer_layout())

    def enter(self, x: Array, integers: int_first.FirstLayerIntegers | None) -> tuple[Array, int]:
        """``(input of layer i, i)``: the model's input (layer 0; pixels normalized here with the
        option) or, in eval mode with the option, the first layer's integer signs (layer 1)."""
        if not self.integer_first:
            return x, 0
        if not self.bns[0].use_running_average:
            return normalize_pixels(x, self.pixel_mean, self.pixel_std, self.convs[0].dtype), 0
        ints = self.first_layer_integers() if integers is None else integers
        conv = self.convs[0]
        return int_first.first_layer_signs(x, ints, conv.strides, conv.padding, *self.first_pool), 1


@register_model("vgg_small")
class VGGSmall(SequentialBNN):
    """VGG-Small of IR-Net (widths 128,128,256,256,512,512):
    conv-bn, conv-pool-bn-hardtanh, conv-bn-hardtanh, conv-pool-bn-hardtanh, conv-bn-hardtanh,
    conv-pool-bn-hardtanh, fc. 3x3 convs, stride 1, padding 1; 2x2 max-pools."""

    def __init__(
        self,
        *,
        input_shape,
        num_classes,
        q: Quantization,
        rngs: nnx.Rngs,
        widths: Sequence[int] = (128, 128, 256, 256, 512, 512),
    ):
        h, w, c = input_shape
        self.widths = tuple(widths)
        ins = (c,) + self.widths[:-1]
        self.convs = nnx.List(
            [q.first_conv(ins[0], widths[0], rngs=rngs)]
            + [q.conv(i, o, rngs=rngs) for i, o in zip(ins[1:], widths[1:])]
        )
        self.bns = nnx.List([q.norm_layer(o, rngs) for o in widths])
        self.pool_after = (False, True, False, True, False, True)
        flat = _pooled(h, 3) * _pooled(w, 3) * widths[-1]
        self.fc = q.last_dense(flat, num_classes, rngs=rngs)
        self.setup_first_layer(q, input_shape)

    def __call__(
        self, x: Array, ede: EstimatorParams | None = None, integers: int_first.FirstLayerIntegers | None = None
    ) -> Array:
        x, start = self.enter(x, integers)
        for i in range(start, len(self.convs)):
            conv, bn, pool = self.convs[i], self.bns[i], self.pool_after[i]
            x = conv(x, ede)
            if pool:
                x = max_pool(x)
            x = bn(x)
            if i > 0:
                x = hardtanh(x)
        return self.fc(x.reshape(x.shape[0], -1), ede)

    def export_stages(self) -> tuple[list[ConvStage], BinaryDense]:
        """The conv stages (pools before the norm) and the classifier, in order (see ``ConvStage``)."""
        pools = ("sums" if p else "none" for p in self.pool_after)
        return [ConvStage(c, n, p) for c, n, p in zip(self.convs, self.bns, pools)], self.fc


@register_model("alexnet")
class AlexNet(SequentialBNN):
    """CIFAR AlexNet with the widths of bearpaw/pytorch-classification's ``cifar/alexnet.py``
    (convs 64@11x11/4, 192@5x5, 384@3x3, 256@3x3, 256@3x3; fc) in the original's layer order
    conv-bn-pool-hardtanh x2, conv-bn-hardtanh x2, conv-bn-pool-hardtanh, fc. Pools use ceil mode so
    28x28 MNIST keeps a 1x1 map (CIFAR: 32 -> 8 -> 4 -> 2 -> 1, MNIST: 28 -> 7 -> 4 -> 2 -> 1)."""

    # (out channels, kernel, stride, pool after)
    layers_spec = ((64, 11, 4, True), (192, 5, 1, True), (384, 3, 1, False), (256, 3, 1, False), (256, 3, 1, True))

    def __init__(self, *, input_shape, num_classes, q: Quantization, rngs: nnx.Rngs):
        h, w, c_in = input_shape
        convs, bns = [], []
        for i, (c_out, k, s, pool) in enumerate(self.layers_spec):
            make = q.first_conv if i == 0 else q.conv
            convs.append(make(c_in, c_out, k, strides=s, padding=k // 2, rngs=rngs))
            bns.append(q.norm_layer(c_out, rngs))
            h, w = (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1
            if pool:
                h, w = _pooled(h, 1, True), _pooled(w, 1, True)
            c_in = c_out
        self.convs, self.bns = nnx.List(convs), nnx.List(bns)
        self.fc = q.last_dense(h * w * c_in, num_classes, rngs=rngs)
        self.setup_first_layer(q, input_shape)

    def __call__(
        self, x: Array, ede: EstimatorParams | None = None, integers: int_first.FirstLayerIntegers | None = None
    ) -> Array:
        x, start = self.enter(x, integers)
        for conv, bn, spec in list(zip(self.convs, self.bns, self.layers_spec))[start:]:
            x = bn(conv(x, ede))
            if spec[3]:
                x = max_pool(x, ceil_mode=True)
            x = hardtanh(x)
        return self.fc(x.reshape(x.shape[0], -1), ede)

    def export_stages(self) -> tuple[list[ConvStage], BinaryDense]:
        """The conv stages (ceil-mode pools after the norm) and the classifier (see ``ConvStage``)."""
        pools = ("bits" if spec[3] else "none" for spec in self.layers_spec)
        return [ConvStage(c, n, p, ceil_mode=True) for c, n, p in zip(self.convs, self.bns, pools)], self.fc


class Shortcut(nnx.Module):
    """Identity, or for a change of shape: option ``"A"`` (parameter-free: stride-2 subsampling and
    zero channels padded on both sides, as IR-Net's ResNet-20) or ``"B"`` (full-precision 1x1 conv + BN)."""

    def __init__(self, c_in: int, c_out: int, stride: int, option: str, q: Quantization, rngs: nnx.Rngs):
        self.kind = "identity" if (stride == 1 and c_in == c_out) else option
        self.stride, self.pad = stride, (c_out - c_in)
        if self.kind == "B":
            self.conv = q.conv(c_in, c_out, 1, strides=stride, padding=0, binary=False, rngs=rngs)
            self.bn = batch_norm(c_out, q.dtype, rngs)
        elif self.kind == "A" and (c_out - c_in) % 2:
            raise ValueError(f"shortcut option A needs an even channel increase, got {c_in} -> {c_out}")
        elif self.kind not in ("identity", "A"):
            raise ValueError(f"unknown shortcut option {option!r}; valid: ['A', 'B']")

    def __call__(self, x: Array) -> Array:
        if self.kind == "identity":
            return x
        if self.kind == "B":
            return self.bn(self.conv(x))
        x = x[:, :: self.stride, :: self.stride, :]
        half = self.pad // 2
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (half, half)))


class BiRealBlock(nnx.Module):
    """IR-Net's 1w1a basic block: a shortcut around every binary conv (Bi-Real form).
    ``y = ht(BN(conv1(x)) + S(x))``, ``out = ht(BN(conv2(y)) + y)``."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str, q: Quantization, rngs: nnx.Rngs):
        self.conv1 = q.conv(c_in, c_out, strides=stride, rngs=rngs)
        self.bn1 = q.norm_layer(c_out, rngs)
        self.conv2 = q.conv(c_out, c_out, rngs=rngs)
        self.bn2 = q.norm_layer(c_out, rngs)
        self.shortcut = Shortcut(c_in, c_out, stride, shortcut, q, rngs)
        self.materialize = q.materialize_residuals

    def __call__(self, x: Array, ede: EstimatorParams | None = None, frac_bits: int = 0) -> Array:
        """Float stream ``x``; with ``frac_bits`` each output is rounded to ``2**-frac_bits`` (``ste_round``)."""
        grid = (lambda v: fixed_stream.ste_round(v, frac_bits)) if frac_bits else (lambda v: v)
        y = materialize(grid(hardtanh(self.bn1(self.conv1(x, ede)) + self.shortcut(x))), self.materialize)
        return materialize(grid(hardtanh(self.bn2(self.conv2(y, ede)) + y)), self.materialize)

    def fixed_point(
        self,
        q: Array,
        convs: Sequence[tuple[Array, fixed_stream.Requantizer]],
        frac_bits: int,
        projection: fixed_stream.Projection | None = None,
    ) -> tuple[Array, Array]:
        """The int32 stream ``q`` through both convs, given each conv's ``(weight signs, requantizer)``
        and an option-B shortcut's ``projection`` (``fixed_stream``): ``(y, out)``."""
        (s1, r1), (s2, r2) = convs
        if projection is None:
            y = _residual_step(self.conv1, s1, r1, q, self.shortcut(q), frac_bits, 2 << frac_bits)
        else:
            short = fixed_stream.project(q, projection, self.shortcut.stride, frac_bits)
            y = _residual_step(self.conv1, s1, r1, q, short, frac_bits, fixed_stream.WIDE_BOUND)
        return y, _residual_step(self.conv2, s2, r2, y, y, frac_bits, 2 << frac_bits)


def _residual_step(
    conv: BinaryConv,
    signs: Array,
    r: fixed_stream.Requantizer,
    q: Array,
    shortcut: Array,
    frac_bits: int,
    bound: int,
) -> Array:
    """``clamp(clamp(requantize(D), +-bound) + shortcut, +-2**F)`` of the bits of ``q``."""
    d = conv.integer_sums(q, signs)
    t = fixed_stream.requantize(d, r, bound)
    return jnp.clip(t + shortcut, -(1 << frac_bits), 1 << frac_bits)


class BasicBlock(BiRealBlock):
    """The standard two-conv basic block: ``out = ht(BN(conv2(ht(BN(conv1(x))))) + S(x))``."""

    def __call__(self, x: Array, ede: EstimatorParams | None = None, frac_bits: int = 0) -> Array:
        y = hardtanh(self.bn1(self.conv1(x, ede)))
        return materialize(hardtanh(self.bn2(self.conv2(y, ede)) + self.shortcut(x)), self.materialize)


BLOCKS = {"bireal": BiRealBlock, "basic": BasicBlock}


class CifarResNet(nnx.Module):
    """CIFAR ResNet: 3x3 stem conv-BN-hardtanh (no max-pool), stages of blocks (the first block of
    every stage but the first has stride 2), global average pool, optional BatchNorm, linear."""

    def __init__(
        self,
        *,
        input_shape,
        num_classes,
        q: Quantization,
        rngs: nnx.Rngs,
        widths: Sequence[int],
        blocks: Sequence[int],
        shortcut: str,
        bn_before_fc: bool,
        block: str = "bireal",
    ):
        if block not in BLOCKS:
            raise ValueError(f"unknown block {block!r}; valid: {sorted(BLOCKS)}")
        c = input_shape[2]
        self.stem = q.first_conv(c, widths[0], rngs=rngs)
        self.stem_bn = q.norm_layer(widths[0], rngs)
        layers, c_in = [], widths[0]
        for stage, (c_out, n) in enumerate(zip(widths, blocks)):
            for i in range(n):
                stride = 2 if (i == 0 and stage > 0) else 1
                layers.append(BLOCKS[block](c_in, c_out, stride, shortcut, q, rngs))
                c_in = c_out
        self.blocks = nnx.List(layers)
        self.head_bn = q.norm_layer(c_in, rngs) if bn_before_fc else None
        self.fc = q.last_dense(c_in, num_classes, rngs=rngs)
        self.materialize = q.materialize_residuals
        self.frac_bits = q.residual_frac_bits
        if self.frac_bits:
            _check_fixed_point_stream(self, q, block, shortcut, c)
        self.pixel_mean, self.pixel_std = tuple(q.pixel_mean), tuple(q.pixel_std)
        self.input_hw = tuple(input_shape[:2])

    def export_residual_stages(self) -> tuple[ConvStage, list[ResidualStage], nnx.Module | None, BinaryDense]:
        """The stem, one ``ResidualStage`` per binary conv, the norm before the classifier and the
        classifier (see ``ResidualStage``); ``ValueError`` for blocks that are not Bi-Real."""
        stages = []
        for blk in self.blocks:
            if type(blk) is not BiRealBlock:
                raise ValueError(f"only Bi-Real blocks export as a residual stream, not {type(blk).__name__}")
            sc = blk.shortcut
            projection = (sc.conv, sc.bn) if sc.kind == "B" else None
            first = ResidualStage(blk.conv1, blk.bn1, sc.kind, sc.stride, sc.pad, projection)
            stages += [first, ResidualStage(blk.conv2, blk.bn2)]
        return ConvStage(self.stem, self.stem_bn), stages, self.head_bn, self.fc

    def __call__(
        self, x: Array, ede: EstimatorParams | None = None, integers: fixed_stream.StreamIntegers | None = None
    ) -> Array:
        """Logits; in eval mode with ``residual_frac_bits``, the integer stream on pixels ``x``, with
        ``integers`` (``host_stream_integers``) or derived through ``stream_integers``."""
        if self.frac_bits and self.stem_bn.use_running_average:
            ints = self.stream_integers() if integers is None else integers
            return self.fixed_point_head(self.fixed_point_stream(x, ints)[-1], ints)
        if self.frac_bits:  # pixels in; the stream rounded to its grid (straight-through)
            x = self.normalize_pixels(x)
        x = hardtanh(self.stem_bn(self.stem(x, ede)))
        x = materialize(fixed_stream.ste_round(x, self.frac_bits) if self.frac_bits else x, self.materialize)
        for blk in self.blocks:
            x = blk(x, ede, self.frac_bits)
        x = jnp.mean(x, axis=(1, 2))
        if self.head_bn is not None:
            x = self.head_bn(x)
        return self.fc(x, ede)

    def normalize_pixels(self, pixels: Array) -> Array:
        """``(p / 255 - mean) / std`` per channel, as ``data.normalize``, in the stem's dtype."""
        return normalize_pixels(pixels, self.pixel_mean, self.pixel_std, self.stem.dtype)

    def stream_params(self, host: bool = False) -> fixed_stream.StreamParams:
        """The raw parameters the eval-mode integers derive from (stream order: ``export_residual_stages``),
        as JAX arrays or (``host``) this process's NumPy copies."""
        get = (lambda v: mesh_lib.local_copy(v[...]).astype(np.float32)) if host else (lambda v: v[...])
        convs = [pair for blk in self.blocks for pair in ((blk.conv1, blk.bn1), (blk.conv2, blk.bn2))]
        return fixed_stream.StreamParams(
            stem_kernel=get(self.stem.kernel),
            stem_norm=_norm_params(self.stem_bn, get),
            conv_kernels=tuple(get(conv.kernel) for conv, _ in convs),
            conv_scales=tuple(
                np.ones(conv.out_features, np.float32) if conv.scale is None else get(conv.scale) for conv, _ in convs
            ),
            conv_norms=tuple(_norm_params(norm, get) for _, norm in convs),
            head_norm=None if self.head_bn is None else _norm_params(self.head_bn, get),
            shortcut_kernels=tuple(
                get(b.shortcut.conv.kernel) if b.shortcut.kind == "B" else None for b in self.blocks
            ),
            shortcut_norms=tuple(
                _norm_params(b.shortcut.bn, get) if b.shortcut.kind == "B" else None for b in self.blocks
            ),
        )

    def stream_layout(self) -> fixed_stream.StreamLayout:
        conv = self.blocks[0].conv1
        return fixed_stream.StreamLayout(
            frac_bits=self.frac_bits,
            pixel_mean=self.pixel_mean,
            pixel_std=self.pixel_std,
            input_hw=self.input_hw,
            stem_stride=self.stem.strides,
            stem_pad=self.stem.padding,
            weight_scale=conv.weight_scale,
            norm_eps=float(self.stem_bn.epsilon),
        )

    def stream_integers(self) -> fixed_stream.StreamIntegers:
        """The eval-mode integers (``fixed_stream.derive_integers``) through a host callback: usable
        inside ``jit`` on one device; a multi-device program passes ``host_stream_integers()`` in
        instead (on CPU, a callback there deadlocks the collectives that follow it)."""
        return fixed_stream.stream_integers(self.stream_params(), self.stream_layout())

    def host_stream_integers(self) -> fixed_stream.StreamIntegers:
        """The eval-mode integers derived here, outside any ``jit`` (NumPy arrays)."""
        return fixed_stream.derive_integers(self.stream_params(host=True), self.stream_layout())

    def fixed_point_stream(self, pixels: Array, ints: fixed_stream.StreamIntegers | None = None) -> list[Array]:
        """Eval mode, ``residual_frac_bits = F``: the int32 stream ``[B, H, W, C]`` after the stem and
        after every binary conv (``fixed_stream``), of pixels ``[B, H, W, C]`` (float, 0..255)."""
        ints = self.stream_integers() if ints is None else ints
        y = fixed_stream.stem_sums(pixels, ints.stem_weights, self.stem.strides, self.stem.padding)
        stream = [fixed_stream.requantize(y, ints.stem, 1 << self.frac_bits)]
        convs = list(zip(ints.conv_signs, ints.convs))
        for i, blk in enumerate(self.blocks):
            stream += list(blk.fixed_point(stream[-1], convs[2 * i : 2 * i + 2], self.frac_bits, ints.projections[i]))
        return stream

    def fixed_point_head(self, q: Array, ints: fixed_stream.StreamIntegers) -> Array:
        """``v = float32(sum_hw q) float32(2**-F / (H W))``, ``v A + B`` (head norm), ``v @ W + b``."""
        h, w = q.shape[1:3]
        v = jnp.sum(q, axis=(1, 2)).astype(jnp.float32) * jnp.float32(2.0**-self.frac_bits / (h * w))
        if self.head_bn is not None:
            v = v * ints.head_scale + ints.head_bias
        return v @ self.fc.kernel[...].astype(jnp.float32) + self.fc.bias[...].astype(jnp.float32)


def _norm_params(norm: nnx.Module, get: Callable) -> fixed_stream.NormParams:
    n = norm.num_features
    gamma = np.ones(n, np.float32) if norm.scale is None else get(norm.scale)
    beta = np.zeros(n, np.float32) if norm.bias is None else get(norm.bias)
    return fixed_stream.NormParams(get(norm.mean), get(norm.var), gamma, beta)


EvalIntegers = fixed_stream.StreamIntegers | int_first.FirstLayerIntegers


def eval_integers(model: nnx.Module) -> EvalIntegers | None:
    """A model with a fixed-point stream (``residual_frac_bits``) or an integer first layer: its
    eval-mode integers, derived on the host; ``None`` for every other model."""
    if getattr(model, "frac_bits", 0):
        return model.host_stream_integers()
    if getattr(model, "integer_first", False):
        return model.first_layer_integers(host=True)
    return None


def eval_logits(model: nnx.Module, x: Array, integers: EvalIntegers | None) -> Array:
    """``model(x)`` in eval mode, given ``eval_integers(model)`` (computed outside the jitted step)."""
    return model(x) if integers is None else model(x, integers=integers)


def _check_fixed_point_stream(model: CifarResNet, q: Quantization, block: str, shortcut: str, channels: int) -> None:
    """``ValueError`` unless ``residual_frac_bits`` can apply: Bi-Real blocks, option-A or -B shortcuts, a float
    stem and classifier, 1w1a convs (no shift convs), pixel statistics for every channel."""
    lo, hi = fixed_stream.FRAC_BITS_RANGE
    if not lo <= q.residual_frac_bits <= hi:
        raise ValueError(
            f"residual_frac_bits={q.residual_frac_bits} is not allowed: must be 0 (off) or in [{lo}, {hi}]"
        )
    problems = [
        (block != "bireal", f"block={block!r} (needs 'bireal')"),
        (shortcut not in ("A", "B"), f"option-{shortcut} shortcuts (needs option A or B)"),
        (q.binary_first_layer or q.binary_last_layer, "a binary first or last layer"),
    ]
    _refuse_integer_eval("residual_frac_bits > 0", problems, q, channels)


def _check_integer_first_layer(q: Quantization, channels: int) -> None:
    """``ValueError`` unless ``integer_first_layer`` can apply: a float first layer whose sign a binary
    layer takes (1w1a), a BatchNorm, pixel statistics for every channel."""
    problems = [(q.binary_first_layer, "a binary first layer")]
    _refuse_integer_eval("integer_first_layer", problems, q, channels, " (set integer_first_layer=False)")


def _refuse_integer_eval(option: str, problems: list, q: Quantization, channels: int, hint: str = "") -> None:
    """``ValueError`` naming every failed ``(condition, what)`` of ``problems`` and of what every
    integer eval mode needs: 1w1a convs without shift convs, a BatchNorm (its eval mode selects the
    integers), pixel statistics for all ``channels``."""
    problems = problems + [
        (not q.binary or not q.binarize_activations, "a model that is not 1w1a"),
        (q.shift_conv, "shift convs"),
        (q.norm == "offset", "norm='offset' (needs a BatchNorm, whose eval mode selects the integers)"),
        (
            len(q.pixel_mean) != channels or len(q.pixel_std) != channels,
            f"pixel_mean/pixel_std of {channels} channel(s)",
        ),
    ]
    bad = [what for failed, what in problems if failed]
    if bad:
        raise ValueError(f"{option} does not apply to {', '.join(bad)}{hint}")


@register_model("resnet20")
def resnet20(*, input_shape, num_classes, q: Quantization, rngs: nnx.Rngs, block: str = "bireal") -> CifarResNet:
    """ResNet-20 as IR-Net's official 1w1a code: 16/32/64 x 3 Bi-Real blocks, option-A shortcuts,
    BatchNorm before the linear layer. ``block="basic"`` gives the standard two-conv block."""
    return CifarResNet(
        input_shape=input_shape,
        num_classes=num_classes,
        q=q,
        rngs=rngs,
        widths=(16, 32, 64),
        blocks=(3, 3, 3),
        shortcut="A",
        bn_before_fc=True,
        block=block,
    )


@register_model("resnet18")
def resnet18(*, input_shape, num_classes, q: Quantization, rngs: nnx.Rngs, block: str = "bireal") -> CifarResNet:
    """CIFAR ResNet-18 (IR-Net's CIFAR code): 3x3 stem, no max-pool, 64/128/256/512 x 2 blocks,
    option-B (full-precision 1x1 conv + BN) downsampling shortcuts, no BatchNorm before the linear."""
    return CifarResNet(
        input_shape=input_shape,
        num_classes=num_classes,
        q=q,
        rngs=rngs,
        widths=(64, 128, 256, 512),
        blocks=(2, 2, 2, 2),
        shortcut="B",
        bn_before_fc=False,
        block=block,
    )


@register_model("mnistnet")
class MNISTNet(SequentialBNN):
    """The original's small MNIST net: three 3x3 convs (32, 64, 128), each conv-pool-bn-hardtanh, fc."""

    def __init__(
        self, *, input_shape, num_classes, q: Quantization, rngs: nnx.Rngs, widths: Sequence[int] = (32, 64, 128)
    ):
        h, w, c = input_shape
        ins = (c,) + tuple(widths[:-1])
        self.convs = nnx.List(
            [q.first_conv(ins[0], widths[0], rngs=rngs)]
            + [q.conv(i, o, rngs=rngs) for i, o in zip(ins[1:], widths[1:])]
        )
        self.bns = nnx.List([q.norm_layer(o, rngs) for o in widths])
        self.fc = q.last_dense(_pooled(h, 3) * _pooled(w, 3) * widths[-1], num_classes, rngs=rngs)
        self.setup_first_layer(q, input_shape)

    def __call__(
        self, x: Array, ede: EstimatorParams | None = None, integers: int_first.FirstLayerIntegers | None = None
    ) -> Array:
        x, start = self.enter(x, integers)
        for conv, bn in list(zip(self.convs, self.bns))[start:]:
            x = hardtanh(bn(max_pool(conv(x, ede))))
        return self.fc(x.reshape(x.shape[0], -1), ede)

    def export_stages(self) -> tuple[list[ConvStage], BinaryDense]:
        """The conv stages (each pooled before the norm) and the classifier (see ``ConvStage``)."""
        return [ConvStage(c, n, "sums") for c, n in zip(self.convs, self.bns)], self.fc
