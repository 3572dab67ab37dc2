"""Folding a trained sequential BNN into integer stages.

A binary layer ``l`` sees bits ``a`` in {-1, +1}^K (its padded input patch) and binary weights
``sign(W_std) * s_o``. Its output channel ``o`` is ``y_o = s_o * D_o`` with the integer

    D_o = sum_k a_k * w_ok = K - 2 * popcount(a XOR w_o)          (bit 1 = +1, bit 0 = -1)

Its norm is affine in eval mode, ``z = A_o * y + B_o`` (BatchNorm: ``A = gamma / sqrt(var + eps)``,
``B = beta - mean * A``; offset: ``A = 1``, ``B = b``), and the next layer keeps ``sign(z)`` (hardtanh
keeps the sign; ``sign(0) = +1``). With ``M_o = A_o * s_o`` (the power-of-two scale only changes ``M``):

    bit_o = D_o >= T_o   with T_o = ceil(-B_o / M_o)    where M_o > 0
    bit_o = D_o <= T_o   with T_o = floor(-B_o / M_o)   where M_o < 0 (flip: negative BatchNorm scale)
    bit_o = [B_o >= 0]   where M_o = 0 (stored as T = -(K+1), always; or T = K+1, never)

Max-pooling before the norm pools the integer sums (``max D``) and then thresholds; pooling after the
norm (AlexNet) is a bitwise OR of +1 bits. Padding is constant bits, a checkerboard, or zeros: a
zero-padded binary conv runs with +1 border bits and subtracts a per-channel correction per border
class (``border``). A full-precision first layer (the paper's setting) becomes an exact integer conv
of the uint8 pixels with the normalization and the norm folded in, and a sign (``integer_stem``); a
model trained with ``integer_first_layer`` gives its own integers. A full-precision last layer is a
float32 matrix product on what the model gives it, the last block's ``hardtanh(z)``, computed from
``D`` in fixed point (``fixed_point``). Models describe their stages themselves (``models.ConvStage``).
"""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from irnet_jax import binarization as bz
from irnet_jax import data as data_lib
from irnet_jax import fixed_stream
from irnet_jax.errors import UserError
from irnet_jax.export.border import BorderCorrection, border_correction
from irnet_jax.export.fixed_point import DEFAULT_FRAC_BITS, FixedPointAffine, fixed_point_affine
from irnet_jax.export.integer_stem import IntegerFirstConvStage, IntegerStemStage, first_conv_stage, stem_stage
from irnet_jax.export.residual import (
    HeadStage,
    ResidualConvStage,
    projection_from_stream,
    projection_stage_integers,
)
from irnet_jax.export.stages import BinaryConvStage, BinaryDenseStage, FloatDenseStage, FoldedModel, Stage
from irnet_jax.layers import Offset, ShiftBinaryConv
from irnet_jax.models import ConvStage
from irnet_jax.train_state import model_input_shape

EXPORTABLE = ("vgg_small", "alexnet", "mnistnet", "resnet20", "resnet18")


class ExportError(UserError, ValueError):
    """The model or checkpoint cannot be exported as an XNOR-popcount-threshold pipeline."""


def norm_affine(norm: nnx.Module, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, B)`` float64 with ``norm(y) = A * y + B`` in eval mode."""
    if isinstance(norm, Offset):
        return np.ones(channels), np.asarray(norm.bias[...], np.float64)
    if isinstance(norm, nnx.BatchNorm):
        mean = np.asarray(norm.mean[...], np.float64)
        var = np.asarray(norm.var[...], np.float64)
        gamma = np.ones(channels) if norm.scale is None else np.asarray(norm.scale[...], np.float64)
        beta = np.zeros(channels) if norm.bias is None else np.asarray(norm.bias[...], np.float64)
        a = gamma / np.sqrt(var + norm.epsilon)
        return a, beta - mean * a
    raise ExportError(f"cannot fold norm {type(norm).__name__}")


def fold_threshold(m: np.ndarray, b: np.ndarray, fan_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds and flips such that ``(m * D + b >= 0) == (D <= T if flip else D >= T)``
    for every integer ``D`` in ``[-fan_in, fan_in]``; ``m``, ``b`` float64 per channel."""
    m, b = np.asarray(m, np.float64), np.asarray(b, np.float64)
    safe = np.where(m == 0, 1.0, m)
    t = np.where(m > 0, np.ceil(-b / safe), np.floor(-b / safe))
    # -b/m and m*D + b round differently at a tie: settle the boundary by evaluating m*D + b itself.
    step = np.where(m > 0, -1.0, 1.0)  # towards the side that should still be +1
    t = np.where(m * (t + step) + b >= 0, t + step, t)
    t = np.where(m * t + b < 0, t - step, t)
    t = np.where(m == 0, np.where(b >= 0, -(fan_in + 1), fan_in + 1), t)
    t = np.clip(t, -(fan_in + 1), fan_in + 1)
    return t.astype(np.int64), m < 0


def kernel_rows(kernel: np.ndarray) -> np.ndarray:
    """A kernel as one row per output channel: HWIO -> ``[C_out, C_in kh kw]`` in (c, kh, kw) order;
    a dense ``[K, C_out]`` -> ``[C_out, K]``."""
    if kernel.ndim == 4:
        return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1)
    return kernel.T


def binary_weight_bits(layer, ede: bz.EstimatorParams) -> tuple[np.ndarray, np.ndarray]:
    """``(bits [C_out, K] (c, kh, kw) order, per-channel scale s)`` with ``Qw(W) = (2 bits - 1) * s``."""
    wq = kernel_rows(np.asarray(layer.quantized_kernel(ede), np.float64))
    s = np.abs(wq[:, 0])
    if not np.all(np.abs(wq) == s[:, None]):
        raise ExportError("binary weights do not share one magnitude per output channel")
    return (wq > 0).astype(np.uint8), s  # Qw = s * (2 bits - 1), also for a negative learned scale


def binary_conv_weights(conv, in_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, BorderCorrection | None]:
    """A binary conv's weight bits and scale (``binary_weight_bits``) and, for zero padding, its
    border correction table on an ``in_shape`` input."""
    bits, scale = binary_weight_bits(conv, bz.EstimatorParams.constant())
    return bits, scale, _border(conv, bits, in_shape)


def _border(conv, bits: np.ndarray, in_shape: tuple[int, int, int]) -> BorderCorrection | None:
    if conv.pad_value != "zero" or conv.padding == 0:
        return None
    return border_correction(bits, in_shape[:2], conv.kernel_size, conv.strides, conv.padding)


def fold_conv(
    spec: ConvStage,
    in_shape: tuple[int, int, int],
    first: bool,
    fixed_output: bool,
    frac_bits: int,
    pixel_stats: tuple[tuple[float, ...], tuple[float, ...]],
) -> Stage:
    """One conv stage (conv, pool, norm, sign) of a model as a binary or integer first conv stage;
    ``fixed_output``: a float layer follows, so the stage outputs ``hardtanh(norm)`` in fixed point;
    ``pixel_stats``: the ``(mean, std)`` a full-precision first layer's input was normalized with."""
    conv = spec.conv
    if isinstance(conv, ShiftBinaryConv):
        raise ExportError("shift convs (two thresholds per input) are not exportable yet")
    a, b = norm_affine(spec.norm, conv.out_features)
    geometry = dict(
        in_shape=in_shape,
        kernel_size=conv.kernel_size,
        stride=conv.strides,
        pad=conv.padding,
        pool=spec.pool,
        ceil_pool=spec.ceil_mode,
    )
    if conv.is_binary:
        bits, scale, border = binary_conv_weights(conv, in_shape)
        if fixed_output:
            fixed = fixed_point_affine(a * scale, b, bits.shape[1], frac_bits)
            return BinaryConvStage(**geometry, pad_bit=conv.pad_value, weight_bits=bits, border=border, fixed=fixed)
        threshold, flip = fold_threshold(a * scale, b, bits.shape[1])
        return BinaryConvStage(
            **geometry, pad_bit=conv.pad_value, weight_bits=bits, threshold=threshold, flip=flip, border=border
        )
    if first and not conv.binarize_weights and not conv.binarize_activations and not fixed_output:
        weights = np.asarray(conv.kernel[...], np.float64)
        return first_conv_stage(weights, (a, b), *pixel_stats, **geometry)
    raise ExportError(
        "only the first conv may be full precision (and not the only conv), and no conv may be 1w32a, to export"
    )


def model_first_conv(model: nnx.Module, spec: ConvStage, in_shape: tuple[int, int, int]) -> IntegerFirstConvStage:
    """The first layer of a model trained with ``integer_first_layer``, with the model's own integers
    (int32 ``Wq`` in two base-``2**P`` parts, the offsets, the AND channels)."""
    ints = model.first_layer_integers(host=True)
    k, _, c_in, _ = ints.weights.shape
    return IntegerFirstConvStage(
        in_shape=in_shape,
        kernel_size=k,
        stride=spec.conv.strides,
        pad=spec.conv.padding,
        pool=spec.pool,
        ceil_pool=spec.ceil_mode,
        weights_int=np.asarray(ints.weights, np.int64),
        weight_frac_bits=np.asarray(ints.shift).tolist(),
        part_bits=fixed_stream.pixel_part_bits(k * k * c_in),
        num_parts=2,
        offset=np.asarray(ints.offset, np.int64),
        flip=np.asarray(ints.flip, bool),
    )


def fold_classifier(fc, in_features: int, input_frac_bits: int | None) -> Stage:
    """The last layer: binary (integer sums times a float32 scale) or full precision."""
    bias = np.asarray(fc.bias[...], np.float32)
    if fc.is_binary:
        bits, scale = binary_weight_bits(fc, bz.EstimatorParams.constant())
        multiplier = fc.output_multiplier()
        out_scale = 1.0 if multiplier is None else float(np.asarray(multiplier))
        logit_scale = (scale * out_scale).astype(np.float32)
        return BinaryDenseStage(in_shape=(in_features,), weight_bits=bits, logit_scale=logit_scale, bias=bias)
    if not fc.binarize_weights and not fc.binarize_activations:
        weights = np.asarray(fc.kernel[...], np.float32)
        return FloatDenseStage(in_shape=(in_features,), weights=weights, bias=bias, input_frac_bits=input_frac_bits)
    raise ExportError("the last layer must be fully binary or full precision to export")


def residual_conv(
    spec,
    in_shape: tuple[int, int, int],
    frac_bits: int,
    own: tuple[np.ndarray, FixedPointAffine] | None = None,
    own_projection: fixed_stream.Projection | None = None,
) -> ResidualConvStage:
    """One binary conv of a Bi-Real block (``models.ResidualStage``) on the fixed-point stream: its
    weight bits, norm and option-B shortcut folded here (``fixed_point_affine``,
    ``projection_stage_integers``), or ``own``, a model's own ``(weight signs HWIO, fixed point)`` and
    ``own_projection``."""
    conv = spec.conv
    if not conv.is_binary or isinstance(conv, ShiftBinaryConv):
        raise ExportError("every conv of a residual block must be 1w1a (not 1w32a, not a shift conv) to export")
    if own is None:
        a, b = norm_affine(spec.norm, conv.out_features)
        bits, scale, border = binary_conv_weights(conv, in_shape)
        fixed = fixed_point_affine(a * scale, b, bits.shape[1], frac_bits)
    else:
        signs, fixed = own
        bits = (kernel_rows(signs) > 0).astype(np.uint8)
        border = _border(conv, bits, in_shape)
    projection = None, None
    if spec.projection is not None and own_projection is not None:
        projection = projection_from_stream(own_projection, frac_bits)
    elif spec.projection is not None:
        proj_conv, proj_norm = spec.projection
        affine = norm_affine(proj_norm, proj_conv.out_features)
        projection = projection_stage_integers(np.asarray(proj_conv.kernel[...]), affine, frac_bits)
    return ResidualConvStage(
        in_shape=in_shape,
        kernel_size=conv.kernel_size,
        stride=conv.strides,
        pad=conv.padding,
        pad_bit=conv.pad_value,
        weight_bits=bits,
        border=border,
        fixed=fixed,
        shortcut=spec.shortcut,
        shortcut_stride=spec.stride,
        pad_channels=spec.pad_channels,
        projection_weights=projection[0],
        projection=projection[1],
    )


def _int64(r: fixed_stream.Requantizer, frac_bits: int) -> FixedPointAffine:
    return FixedPointAffine(*(np.asarray(v, np.int64) for v in r), frac_bits)


def fold_fixed_point_resnet(model: nnx.Module, frac_bits: int) -> list[Stage]:
    """A ResNet trained with ``residual_frac_bits``: its own integers (``fixed_stream``), which it
    computes in eval mode, so the export equals it bit for bit."""
    if frac_bits != model.frac_bits:
        raise ExportError(
            f"frac_bits={frac_bits} is not allowed: this model computes its stream with residual_frac_bits="
            f"{model.frac_bits} (pass 0 or {model.frac_bits})"
        )
    _, specs, head_norm, fc = model.export_residual_stages()
    stem = model.stem
    ints = model.host_stream_integers()
    fixed = _int64(ints.stem, frac_bits)
    stages: list[Stage] = [
        IntegerStemStage(
            in_shape=(*model.input_hw, stem.in_features),
            kernel_size=stem.kernel_size,
            stride=stem.strides,
            pad=stem.padding,
            weights_int=ints.stem_weights.astype(np.int64),
            weight_frac_bits=(fixed.shift + frac_bits).tolist(),
            part_bits=fixed_stream.pixel_part_bits(stem.fan_in),
            fixed=fixed,
        )
    ]
    shape = (*stages[0].conv_output_hw(), stem.out_features)
    for i, (spec, signs, r) in enumerate(zip(specs, ints.conv_signs, ints.convs)):
        own_projection = ints.projections[i // 2] if i % 2 == 0 else None  # two convs per block
        stages.append(residual_conv(spec, shape, frac_bits, (signs, _int64(r, frac_bits)), own_projection))
        shape = (*stages[-1].conv_output_hw(), spec.conv.out_features)
    norm = None if head_norm is None else (ints.head_scale, ints.head_bias)
    weights, bias = np.asarray(fc.kernel[...], np.float32), np.asarray(fc.bias[...], np.float32)
    stages.append(HeadStage(in_shape=shape, frac_bits=frac_bits, norm=norm, weights=weights, bias=bias))
    return stages


def fold_resnet(model: nnx.Module, config: ml_collections.ConfigDict, frac_bits: int) -> list[Stage]:
    """A Bi-Real ResNet as an integer stem, residual binary convs on the fixed-point stream, and a
    float32 head (``residual``); a model trained with ``residual_frac_bits`` with its own integers."""
    try:
        stem_spec, specs, head_norm, fc = model.export_residual_stages()
    except ValueError as e:
        raise ExportError(f"{config.model} cannot be exported: {e}") from None
    stem = stem_spec.conv
    if stem.binarize_weights or stem.binarize_activations or fc.binarize_weights or fc.binarize_activations:
        raise ExportError("a ResNet exports with a full-precision first conv and classifier (the paper's setting)")
    if model.frac_bits:
        return fold_fixed_point_resnet(model, frac_bits or model.frac_bits)
    frac_bits = frac_bits or DEFAULT_FRAC_BITS
    mean, std = data_lib.normalization_stats(data_lib.get_dataset_info(config.dataset), config.normalization)
    shape = model_input_shape(config)
    a, b = norm_affine(stem_spec.norm, stem.out_features)
    weights = np.asarray(stem.kernel[...], np.float64)
    stages: list[Stage] = [stem_stage(weights, (a, b), shape, stem.strides, stem.padding, mean, std, frac_bits)]
    shape = (*stages[0].conv_output_hw(), stem.out_features)
    for spec in specs:
        stages.append(residual_conv(spec, shape, frac_bits))
        shape = (*stages[-1].conv_output_hw(), spec.conv.out_features)
    norm = None if head_norm is None else tuple(v.astype(np.float32) for v in norm_affine(head_norm, shape[-1]))
    weights, bias = np.asarray(fc.kernel[...], np.float32), np.asarray(fc.bias[...], np.float32)
    stages.append(HeadStage(in_shape=shape, frac_bits=frac_bits, norm=norm, weights=weights, bias=bias))
    return stages


def fold(model: nnx.Module, config: ml_collections.ConfigDict, frac_bits: int = 0) -> FoldedModel:
    """Fold a trained model (float32, eval mode) into integer thresholds and weight bits; a float
    classifier's input (the last block's hardtanh) and a ResNet's residual stream as fixed point with
    ``frac_bits`` fractional bits (0: the model's ``residual_frac_bits``, else ``DEFAULT_FRAC_BITS``)."""
    meta = (config.input_encoding, config.encoding_levels, config.dataset, config.model, config.normalization)
    if hasattr(model, "export_residual_stages"):
        return FoldedModel(fold_resnet(model, config, frac_bits), *meta)
    if not hasattr(model, "export_stages"):
        raise ExportError(f"export supports {list(EXPORTABLE)}; {config.model!r} has no description of its stages")
    conv_specs, fc = model.export_stages()
    frac_bits = frac_bits or DEFAULT_FRAC_BITS
    shape = model_input_shape(config)
    pixel_stats = data_lib.normalization_stats(data_lib.get_dataset_info(config.dataset), config.normalization)
    stages: list[Stage] = []
    float_classifier = not fc.binarize_activations
    for i, spec in enumerate(conv_specs):
        fixed = float_classifier and i == len(conv_specs) - 1
        if not stages and getattr(model, "integer_first", False):
            stages.append(model_first_conv(model, spec, shape))
        else:
            stages.append(fold_conv(spec, shape, not stages, fixed, frac_bits, pixel_stats))
        shape = (*stages[-1].output_hw(), spec.conv.out_features)
    stages.append(fold_classifier(fc, int(np.prod(shape)), frac_bits if float_classifier else None))
    return FoldedModel(stages, *meta)
