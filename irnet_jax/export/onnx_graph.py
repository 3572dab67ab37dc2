"""A folded model as an ONNX graph: plain ONNX (standard operators, float32 tensors holding exact
+-1 and integer values) or QONNX for FINN (``BipolarQuant`` on the +-1 weights, ``MultiThreshold``
with a BIPOLAR output for every sign: the folded norm's threshold, and ``Z >= 0`` after an integer
first layer).

Both graphs take ``input`` ``[N, C, H, W]`` float32, the first layer's input as the engine has it
(uint8 pixel values as float32 for an integer first layer or stem; +-1 planes for a binary one), and
give ``logits [N, classes]``. Per stage ``i`` they name ``L<i>_sum`` (a binary conv's integer sums
``D`` before the pool, as float32), ``L<i>_out`` (+-1 bits as float32, or the fixed-point integers
``q`` as int64: a ResNet's stream, a float classifier's input; the logits last).

* binary conv: ``Conv`` of the +-1 input with the +-1 weights (``[C_out, C_in, k, k]`` = the weight
  bits in ``(c, kh, kw)`` order). Plain ONNX pads a conv with zeros itself, so a zero-padded conv needs
  no correction there; QONNX pads with +1 bits and subtracts the border table (``Sub`` of a constant
  ``[1, C_out, H', W']``), since FINN takes no 0 in a BIPOLAR tensor; +1/-1/checkerboard borders are a
  ``Pad``/``Add`` before the conv. Every sum is an integer below 2**24: exact in float32 whatever the
  order of accumulation.
* threshold: ``Mul`` by ``g = -1`` where the channel flips (else +1), then ``g D >= g T`` (plain:
  ``GreaterOrEqual`` and ``Where``; QONNX: ``MultiThreshold`` with ``out_scale 2``, ``out_bias -1``).
* fixed point: ``Cast`` to int64, ``Mul`` M, ``Add`` (C + 2**(S-1) + P 2**S), ``Div`` 2**S (on a
  non-negative value: the floor), ``Sub`` P, ``Max``/``Min`` (the clamp); ``q`` stays int64 (a pool of
  it runs in float64, exact). ``P`` (per channel) only keeps the dividend non-negative. A stream's bits
  are the signs of ``Cast(q)`` to float32 (a cast keeps the sign); a float layer takes ``float32(q)
  * float32(2**-F)``, as the engine.
* option-B shortcut: the int64 stream ``Slice``d to every ``s``-th row and column, ``Transpose`` to
  NHWC, an int64 ``MatMul`` with the integer weights (exact), ``Transpose`` back, the fixed point.
* integer first layer / stem: one float32 ``Conv`` per base-``2**P`` weight part (exact), ``Cast`` to
  int64, combined and offset in int64. The float classifier: a float32 ``MatMul``. A dense layer's
  input is flattened in ``(h, w, c)`` order (``Transpose`` to NHWC first), as the model does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from irnet_jax.export import bits as bit_ops
from irnet_jax.export.border import BorderCorrection
from irnet_jax.export.integer_stem import IntegerFirstConvStage, IntegerStemStage, PixelConvStage
from irnet_jax.export.residual import HeadStage, ResidualConvStage, wide_bound
from irnet_jax.export.stages import BinaryConvStage, BinaryDenseStage, FloatDenseStage, FoldedModel, Stage

OPSET = 13
IR_VERSION = 8
QONNX_DOMAIN = "qonnx.custom_op.general"
QONNX_BATCH = 100  # ResNet-20 at batch 500 holds ~10 GB of tensors in qonnx's executor


@dataclasses.dataclass
class GraphBuilder:
    """Nodes and initializers of one graph; ``qonnx`` selects the QONNX forms."""

    qonnx: bool
    nodes: list = dataclasses.field(default_factory=list)
    initializers: list = dataclasses.field(default_factory=list)
    count: int = 0

    def const(self, value: np.ndarray, name: str = "c") -> str:
        self.count += 1
        full = f"{name}_{self.count}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def op(self, op_type: str, inputs: list[str], out: str | None = None, domain: str = "", **attrs: Any) -> str:
        self.count += 1
        out = out or f"{op_type.lower()}_{self.count}"
        self.nodes.append(
            helper.make_node(op_type, inputs, [out], name=f"n{self.count}_{op_type}", domain=domain, **attrs)
        )
        return out


def per_channel(v: np.ndarray, dtype=np.float32) -> np.ndarray:
    """``[C]`` -> ``[1, C, 1, 1]`` (broadcast over an NCHW tensor)."""
    return np.asarray(v, dtype).reshape(1, -1, 1, 1)


def bipolar_weights(g: GraphBuilder, signs: np.ndarray, name: str) -> str:
    """+-1 weights: an initializer (plain) or an initializer through ``BipolarQuant`` (QONNX)."""
    w = g.const(signs.astype(np.float32), name)
    return g.op("BipolarQuant", [w, g.const(np.float32(1.0), "one")], domain=QONNX_DOMAIN) if g.qonnx else w


def pool(g: GraphBuilder, x: str, ceil: bool) -> str:
    return g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=int(ceil))


def sign_threshold(g: GraphBuilder, d: str, threshold: np.ndarray, flip: np.ndarray, flip_mul: bool = True) -> str:
    """``+1 if (D <= T if flip else D >= T) else -1`` per channel of ``D`` (NCHW); ``flip_mul=False``:
    no channel flips and no ``Mul`` by the signs."""
    sgn = np.where(flip, -1.0, 1.0)
    gd = g.op("Mul", [d, g.const(per_channel(sgn), "flip_sign")]) if flip_mul else d
    t = sgn * threshold.astype(np.float64)
    if g.qonnx:
        thr = g.const(t.astype(np.float32).reshape(-1, 1), "thresholds")
        return g.op(
            "MultiThreshold",
            [gd, thr],
            domain=QONNX_DOMAIN,
            out_dtype="BIPOLAR",
            out_scale=2.0,
            out_bias=-1.0,
            data_layout="NCHW",
        )
    cond = g.op("GreaterOrEqual", [gd, g.const(per_channel(t), "thresholds")])
    return g.op("Where", [cond, g.const(np.float32(1.0), "plus"), g.const(np.float32(-1.0), "minus")])


def position_offsets(offset: np.ndarray, dtype=np.int64) -> np.ndarray:
    """A ``[C]`` or ``[H, W, C]`` offset as a constant broadcasting over NCHW."""
    return per_channel(offset, dtype) if offset.ndim == 1 else offset.transpose(2, 0, 1)[None].astype(dtype)


def class_offsets(g: GraphBuilder, classes: BorderCorrection, add: np.ndarray | int = 0) -> str:
    """The per-position int64 offset ``classes.per_position() + add`` (``add``: ``[C]`` or 0) broadcasting
    over NCHW, as a ``Gather`` of the border-class table by each position's class (``[R Q, C]`` and
    ``[H, W]`` constants instead of ``[1, C, H, W]``), then ``Transpose``/``Unsqueeze``."""
    table = np.asarray(classes.table, np.int64) + np.asarray(add, np.int64)
    flat = g.const(table.reshape(-1, table.shape[-1]), "offset_table")
    index = classes.position_class().reshape(len(classes.row_class), len(classes.col_class)).astype(np.int64)
    hwc = g.op("Gather", [flat, g.const(index, "offset_class")], axis=0)
    return g.op("Unsqueeze", [g.op("Transpose", [hwc], perm=[2, 0, 1]), g.const(np.array([0], np.int64), "axes")])


def fixed_point_int64(
    g: GraphBuilder, y: str, fx, max_abs_input: float, bound: int = 1, classes: BorderCorrection | None = None
) -> str:
    """``q`` (``fixed_point.FixedPointAffine.apply``) of an int64 NCHW tensor ``y`` with ``|y| <=
    max_abs_input``, as int64; clamped to ``+-bound 2**F``. ``classes``: a per-position offset's
    border-class table (``class_offsets``), else the offset is a constant."""
    bound_acc = np.abs(fx.multiplier) * max_abs_input + np.max(np.abs(fx.offset).reshape(-1, fx.shift.size), 0)
    positive = (bound_acc + (1 << fx.shift)) // (1 << fx.shift) + 1  # P: P 2**S > |M y + C + 2**(S-1)|
    rounding = (1 << (fx.shift - 1)) + positive * (1 << fx.shift)
    if classes is not None:
        offset = class_offsets(g, classes, rounding)
    else:
        offset = g.const(position_offsets(np.asarray(fx.offset, np.int64) + rounding), "offset")
    x = g.op("Mul", [y, g.const(per_channel(fx.multiplier, np.int64), "multiplier")])
    x = g.op("Add", [x, offset])
    x = g.op("Div", [x, g.const(per_channel(1 << fx.shift, np.int64), "shift")])
    x = g.op("Sub", [x, g.const(per_channel(positive, np.int64), "positive")])
    x = g.op("Max", [x, g.const(np.int64(-bound * fx.one), "lo")])
    return g.op("Min", [x, g.const(np.int64(bound * fx.one), "hi")])


def fixed_point(g: GraphBuilder, d: str, stage: BinaryConvStage) -> str:
    """``q`` (int64) of the float32 sums ``d`` (NCHW)."""
    return fixed_point_int64(g, g.op("Cast", [d], to=TensorProto.INT64), stage.fixed, stage.fan_in)


def int64_pool(g: GraphBuilder, q: str, ceil: bool) -> str:
    """A max-pool of int64 ``q`` (``MaxPool`` takes no int64): through float64, exact for ``|q| < 2**53``."""
    pooled = pool(g, g.op("Cast", [q], to=TensorProto.DOUBLE), ceil)
    return g.op("Cast", [pooled], to=TensorProto.INT64)


def to_value(g: GraphBuilder, q: str, unit: np.float32) -> str:
    """int64 ``q`` -> float32 ``float32(q) * unit`` (the engine's order and rounding)."""
    return g.op("Mul", [g.op("Cast", [q], to=TensorProto.FLOAT), g.const(np.float32(unit), "unit")])


def pad_border(g: GraphBuilder, x: str, stage: BinaryConvStage) -> tuple[str, int]:
    """The border as graph nodes: ``(padded input, the conv's own zero pads)``. Plain ONNX lets the conv
    pad zeros itself; QONNX pads every binary conv with bits (FINN's Im2Col takes no 0 in a BIPOLAR
    tensor), zero padding with +1 bits, whose sums ``border_sums`` corrects."""
    p = stage.pad
    if p == 0 or (stage.pad_bit == "zero" and not g.qonnx):
        return x, p
    pads = g.const(np.array([0, 0, p, p, 0, 0, p, p], np.int64), "pads")
    if stage.datapath_pad_bit in ("one", "minus_one"):
        value = g.const(np.float32(1.0 if stage.datapath_pad_bit == "one" else -1.0), "pad_value")
        return g.op("Pad", [x, pads, value], mode="constant"), 0
    h, w = stage.in_shape[:2]
    frame = 2.0 * bit_ops.pad_bits(np.zeros((1, h, w, 1), np.uint8), p, "checkerboard")[0, :, :, 0] - 1.0
    frame[p:-p, p:-p] = 0.0
    zero = g.const(np.float32(0.0), "pad_value")
    padded = g.op("Pad", [x, pads, zero], mode="constant")
    return g.op("Add", [padded, g.const(frame[None, None].astype(np.float32), "checkerboard")]), 0


def conv(g: GraphBuilder, x: str, weights: str, stage, pads: int, out: str | None = None) -> str:
    k, s = stage.kernel_size, stage.stride
    return g.op(
        "Conv", [x, weights], out, kernel_shape=[k, k], strides=[s, s], pads=[pads] * 4, group=1, dilations=[1, 1]
    )


def binary_sums(g: GraphBuilder, x: str, stage: BinaryConvStage, i: int) -> str:
    """The integer sums ``D`` (float32, NCHW, named ``L<i>_sum``) of a binary conv on the +-1 input ``x``."""
    c_out = stage.weight_bits.shape[0]
    signs = (2.0 * stage.weight_bits - 1.0).reshape(c_out, -1, stage.kernel_size, stage.kernel_size)
    x, pads = pad_border(g, x, stage)
    weights = bipolar_weights(g, signs, f"L{i}_weights")
    if stage.border is not None and pads == 0:  # +1 border bits: D = D_datapath - C[border class]
        correction = g.const(stage.border.per_position().transpose(2, 0, 1)[None].astype(np.float32), "border")
        return g.op("Sub", [conv(g, x, weights, stage, 0), correction], out=f"L{i}_sum")
    return conv(g, x, weights, stage, pads, out=f"L{i}_sum")


def binary_conv(g: GraphBuilder, x: str, stage: BinaryConvStage, i: int) -> str:
    d = binary_sums(g, x, stage, i)
    if stage.pool == "sums":
        d = pool(g, d, stage.ceil_pool)
    if stage.fixed is not None:
        q = fixed_point(g, d, stage)
        return int64_pool(g, q, stage.ceil_pool) if stage.pool == "bits" else q
    y = sign_threshold(g, d, stage.threshold, stage.flip)
    return pool(g, y, stage.ceil_pool) if stage.pool == "bits" else y


def stream_bits(g: GraphBuilder, q: str, channels: int) -> str:
    """+1 where the int64 stream ``q >= 0``, else -1 (QONNX: a BIPOLAR ``MultiThreshold`` at 0), of
    ``Cast(q)`` to float32, which keeps every sign."""
    zeros = np.zeros(channels, np.int64)
    return sign_threshold(g, g.op("Cast", [q], to=TensorProto.FLOAT), zeros, zeros.astype(bool), flip_mul=False)


def residual_conv(g: GraphBuilder, q: str, stage: ResidualConvStage, i: int) -> str:
    """``q' = clamp(t + shortcut(q))`` of the int64 stream ``q`` (``residual``)."""
    d = binary_sums(g, stream_bits(g, q, stage.in_shape[-1]), stage, i)
    t = fixed_point_int64(g, g.op("Cast", [d], to=TensorProto.INT64), stage.fixed, stage.fan_in, bound=stage.t_bound)
    if stage.shortcut != "identity":
        step = stage.shortcut_stride
        starts, ends = g.const(np.array([0, 0], np.int64), "starts"), g.const(np.array([2**62] * 2, np.int64), "ends")
        axes, steps = g.const(np.array([2, 3], np.int64), "axes"), g.const(np.array([step, step], np.int64), "steps")
        q = g.op("Slice", [q, starts, ends, axes, steps])
    if stage.projection is not None:
        q = projection(g, q, stage, i)
    elif stage.shortcut != "identity":
        half = stage.pad_channels // 2
        pads = g.const(np.array([0, half, 0, 0, 0, stage.pad_channels - half, 0, 0], np.int64), "pads")
        q = g.op("Pad", [q, pads, g.const(np.int64(0), "zero")], mode="constant")
    one = stage.fixed.one
    return g.op(
        "Min", [g.op("Max", [g.op("Add", [t, q]), g.const(np.int64(-one), "lo")]), g.const(np.int64(one), "hi")]
    )


def projection(g: GraphBuilder, q: str, stage: ResidualConvStage, i: int) -> str:
    """An option-B shortcut of the subsampled int64 stream ``q`` (NCHW): an int64 ``MatMul`` over the
    channels (exact), then the fixed point (``residual.ResidualConvStage.projected``)."""
    weights = g.const(np.asarray(stage.projection_weights, np.int64), f"L{i}_shortcut_weights")
    y = g.op("Transpose", [g.op("MatMul", [g.op("Transpose", [q], perm=[0, 2, 3, 1]), weights])], perm=[0, 3, 1, 2])
    bound = wide_bound(stage.fixed.frac_bits)
    return fixed_point_int64(g, y, stage.projection, stage.max_abs_projection_sum(), bound=bound)


def pixel_conv(g: GraphBuilder, x: str, stage: PixelConvStage, i: int) -> str:
    """``Y = sum_k conv(p, part_k) 2**(k P)`` (int64 NCHW; each conv exact in float32)."""
    y = None
    for k, w in enumerate(stage.parts()):
        weights = g.const(np.ascontiguousarray(w.transpose(3, 2, 0, 1)), f"L{i}_weights_part{k}")
        part = g.op("Cast", [conv(g, x, weights, stage, stage.pad)], to=TensorProto.INT64)
        if k:
            part = g.op("Mul", [part, g.const(np.int64(1 << (k * stage.part_bits)), "part")])
        y = part if y is None else g.op("Add", [y, part])
    return y


def integer_stem(g: GraphBuilder, x: str, stage: IntegerStemStage, i: int) -> str:
    """The integer conv, then the fixed point (``integer_stem``): the int64 stream."""
    y = pixel_conv(g, x, stage, i)
    return fixed_point_int64(g, y, stage.fixed, stage.max_abs_sum(), classes=stage.offset_classes())


def integer_first_conv(g: GraphBuilder, x: str, stage: IntegerFirstConvStage, i: int) -> str:
    """``Z = Y + C`` (int64), its sign as +-1 (``Cast`` to float32 keeps the sign), then the pool: an OR
    of +-1 bits is a ``MaxPool``, an AND (``pool_and``) a ``MaxPool`` between two ``Mul`` by -1."""
    z = g.op("Add", [pixel_conv(g, x, stage, i), class_offsets(g, stage.offset_classes())])
    channels = stage.offset.shape[-1]
    zeros = np.zeros(channels, np.int64)
    out = sign_threshold(g, g.op("Cast", [z], to=TensorProto.FLOAT), zeros, zeros.astype(bool), flip_mul=False)
    if stage.pool == "none":
        return out
    if stage.pool == "bits" or not stage.flip.any():
        return pool(g, out, stage.ceil_pool)
    sgn = g.const(per_channel(np.where(stage.flip, -1.0, 1.0)), "and_sign")
    return g.op("Mul", [pool(g, g.op("Mul", [out, sgn]), stage.ceil_pool), sgn])


def head(g: GraphBuilder, q: str, stage: HeadStage, i: int) -> str:
    """Average pool of the int64 stream ``q``, head norm, classifier: float32, in the engine's order
    (``residual.HeadStage``)."""
    pooled = g.op("ReduceSum", [q, g.const(np.array([2, 3], np.int64), "axes")], keepdims=0)
    y = to_value(g, pooled, stage.pooled_scale())
    if stage.norm is not None:
        y = g.op("Add", [g.op("Mul", [y, g.const(stage.norm[0], "A")]), g.const(stage.norm[1], "B")])
    y = g.op("MatMul", [y, g.const(stage.weights.astype(np.float32), f"L{i}_weights")])
    return g.op("Add", [y, g.const(stage.bias.astype(np.float32), "bias")])


def flatten_hwc(g: GraphBuilder, x: str) -> str:
    """NCHW -> ``[N, H * W * C]`` in ``(h, w, c)`` order (a vector stays as it is)."""
    return g.op("Flatten", [g.op("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)


def binary_dense(g: GraphBuilder, x: str, stage: BinaryDenseStage, i: int) -> str:
    weights = bipolar_weights(g, (2.0 * stage.weight_bits - 1.0).T, f"L{i}_weights")  # [K, C]
    d = g.op("MatMul", [flatten_hwc(g, x), weights], out=f"L{i}_sum")
    y = g.op("Mul", [d, g.const(stage.logit_scale.astype(np.float32), "logit_scale")])
    return g.op("Add", [y, g.const(stage.bias.astype(np.float32), "bias")])


def float_dense(g: GraphBuilder, x: str, stage: FloatDenseStage, i: int) -> str:
    """``v @ W + b``, float32; ``v`` the +-1 bits, or ``float32(q) * float32(2**-F)`` of int64 ``q``."""
    v = flatten_hwc(g, x)
    if stage.input_frac_bits is not None:
        v = to_value(g, v, np.float32(2.0**-stage.input_frac_bits))
    y = g.op("MatMul", [v, g.const(stage.weights.astype(np.float32), f"L{i}_weights")])
    return g.op("Add", [y, g.const(stage.bias.astype(np.float32), "bias")])


WRITERS = {
    BinaryConvStage: binary_conv,
    ResidualConvStage: residual_conv,
    IntegerStemStage: integer_stem,
    HeadStage: head,
    IntegerFirstConvStage: integer_first_conv,
    BinaryDenseStage: binary_dense,
    FloatDenseStage: float_dense,
}


def stage_tensors(stage: Stage, i: int) -> dict[str, list]:
    """The named tensors of stage ``i`` and their shapes (``N``: the batch): its sums (binary stages,
    before the pool) and its output."""
    if isinstance(stage, BinaryDenseStage | FloatDenseStage | HeadStage):
        classes = [stage.bias.shape[0]]
        return ({f"L{i}_sum": ["N", *classes]} if isinstance(stage, BinaryDenseStage) else {}) | {
            f"L{i}_out": ["N", *classes]
        }
    if isinstance(stage, PixelConvStage):
        return {f"L{i}_out": ["N", stage.weights_int.shape[-1], *stage.output_hw()]}
    c = stage.weight_bits.shape[0]
    out = {f"L{i}_out": ["N", c, *stage.output_hw()]}
    return ({f"L{i}_sum": ["N", c, *stage.conv_output_hw()]} if isinstance(stage, BinaryConvStage) else {}) | out


def tensor_type(stage: Stage, name: str) -> int:
    """The ONNX element type of a stage tensor: int64 for fixed-point integers ``q``, else float32."""
    fixed = getattr(stage, "fixed", None) is not None and not isinstance(stage, IntegerFirstConvStage)
    return TensorProto.INT64 if fixed and name.endswith("_out") else TensorProto.FLOAT


def build_graph(folded: FoldedModel, qonnx: bool = False, intermediates: bool = False) -> onnx.ModelProto:
    """The ONNX (``qonnx=False``, any batch size ``N``) or QONNX model of ``folded`` (batch 1, as
    FINN takes it; ``run_qonnx`` changes it); ``intermediates`` adds every stage's sums and output as
    graph outputs (for checking them against the golden vectors)."""
    batch = 1 if qonnx else "N"
    g = GraphBuilder(qonnx)
    h, w, c = folded.stages[0].in_shape
    x = "input"
    for i, stage in enumerate(folded.stages):
        y = WRITERS[type(stage)](g, x, stage, i)
        x = g.op("Identity", [y], out=f"L{i}_out")
    g.op("Identity", [x], out="logits")
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, folded.stages[-1].bias.shape[0]])]
    if intermediates:
        for i, stage in enumerate(folded.stages):
            shapes = stage_tensors(stage, i)
            outputs += [
                helper.make_tensor_value_info(n, tensor_type(stage, n), [batch, *shape[1:]])
                for n, shape in shapes.items()
            ]
    graph = helper.make_graph(
        g.nodes,
        f"irnet_jax_{folded.model}_{'qonnx' if qonnx else 'onnx'}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, c, h, w])],
        outputs,
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(QONNX_DOMAIN, 1)] if qonnx else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="irnet_jax")
    model.ir_version = IR_VERSION
    if not qonnx:
        onnx.checker.check_model(model)
    return model


def graph_input(first_layer_input: np.ndarray) -> np.ndarray:
    """The engine's first-layer input ``[N, H, W, C]`` (bits or float pixels) as the graphs' ``input``."""
    x = first_layer_input
    if x.dtype == np.uint8:
        x = 2.0 * x.astype(np.float32) - 1.0
    return np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2))


def ort_session(model: onnx.ModelProto):
    """An onnxruntime CPU inference session of a plain ONNX model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run a plain ONNX model with onnxruntime on ``input`` ``x``; ``{name: array}`` of ``names``
    (default: the logits)."""
    names = names or ["logits"]
    return dict(zip(names, ort_session(model).run(names, {"input": x})))


def run_qonnx(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a QONNX model with ``qonnx.core.onnx_exec.execute_onnx`` (its custom ops in Python, the
    standard ones node by node in onnxruntime); every tensor of the graph by name."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    wrapped = ModelWrapper(model).transform(ChangeBatchSize(len(x))).transform(InferShapes())
    return execute_onnx(wrapped, {"input": x}, return_full_exec_context=True)


def run_graph(model: onnx.ModelProto, qonnx: bool, x: np.ndarray, intermediates: bool = False) -> dict[str, np.ndarray]:
    """``{name: array}``: the logits (and with ``intermediates`` every stage's named tensors) of a graph
    built by ``build_graph(..., qonnx, intermediates)`` on ``input`` ``x``."""
    if qonnx:
        return run_qonnx(model, x)
    names = [o.name for o in model.graph.output] if intermediates else ["logits"]
    return run_onnxruntime(model, x, names)


def graph_predictions(model: onnx.ModelProto, qonnx: bool, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Argmax of the graph's logits on ``input`` ``x``, ``batch`` images at a time (at most
    ``QONNX_BATCH`` for qonnx's executor, which holds every tensor of the graph at once)."""
    if qonnx:
        batch = min(batch, QONNX_BATCH)
        run = lambda xb: run_qonnx(model, xb)["logits"]
    else:
        session = ort_session(model)
        run = lambda xb: session.run(["logits"], {"input": xb})[0]
    return np.concatenate([np.argmax(run(x[i : i + batch]), -1) for i in range(0, len(x), batch)])


def mismatched_tensors(tensors: dict[str, np.ndarray], folded: FoldedModel, trace: list[dict]) -> list[str]:
    """The stage tensors of a graph run (``run_graph``) that differ from a ``run_numpy`` trace of the same
    images: sums exactly, bits as ``> 0``, fixed-point integers ``q`` exactly; the float logits are
    not compared (their summation order is free)."""
    bad = []
    for i, record in enumerate(trace[: len(folded.stages) - 1]):
        d, out = tensors.get(f"L{i}_sum"), tensors[f"L{i}_out"]
        if d is not None and not np.array_equal(d.transpose(0, 2, 3, 1), record["sums"]):
            bad.append(f"L{i}_sum")
        expected = record["output"]
        if expected.dtype == np.uint8:
            same = set(np.unique(out)) <= {-1.0, 1.0} and np.array_equal(out.transpose(0, 2, 3, 1) > 0, expected == 1)
        else:
            same = out.dtype == np.int64 and np.array_equal(out.transpose(0, 2, 3, 1), expected)
        if not same:
            bad.append(f"L{i}_out")
    return bad
