"""The FINN frontend steps that exist as Python (qonnx), applied one after another to an export's
QONNX graph, each checked by running the transformed graph against the integer engine.

Steps (cumulative, in FINN's order):

    cleanup                  qonnx.util.cleanup.cleanup_model (constant folding, names, shapes)
    infer_shapes             InferShapes
    infer_datatypes          InferDataTypes (BIPOLAR weights and MultiThreshold outputs)
    fold_bipolar_weights     BipolarQuant(initializer) -> a BIPOLAR initializer: what FINN's
                             ConvertQONNXtoFINN (FoldQuantWeights) does first, written here because FINN
                             itself does not install beside this project (finn-plus pins onnx 1.21,
                             onnxruntime 1.25, protobuf 5 and brevitas/torch)
    lower_convs_to_matmul    LowerConvsToMatMul (Im2Col + MatMul)
    bipolar_to_xnor_popcount ConvertBipolarMatMulToXnorPopcount (XnorPopcountMatMul on {0, 1})

A step "passes" when it runs and the transformed graph's predictions equal the engine's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx


def fold_bipolar_weights(model):
    """Replace every ``BipolarQuant`` whose input is an initializer by that initializer's +-1 values
    times the scale, annotated BIPOLAR (scale 1) (FINN's FoldQuantWeights for BipolarQuant)."""
    from qonnx.core.datatype import DataType

    for node in list(model.graph.node):
        if node.op_type != "BipolarQuant":
            continue
        w, scale = (model.get_initializer(name) for name in node.input)
        if w is None or scale is None:
            continue
        model.set_initializer(node.output[0], (np.where(w >= 0, 1.0, -1.0) * scale).astype(np.float32))
        if np.all(scale == 1.0):
            model.set_tensor_datatype(node.output[0], DataType["BIPOLAR"])
        model.graph.node.remove(node)
    return model


def steps() -> list[tuple[str, Callable[[Any], Any]]]:
    """The frontend steps as ``(name, ModelWrapper -> ModelWrapper)``, in order."""
    from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
    from qonnx.util.cleanup import cleanup_model

    return [
        ("cleanup", cleanup_model),
        ("infer_shapes", lambda m: m.transform(InferShapes())),
        ("infer_datatypes", lambda m: m.transform(InferDataTypes())),
        ("fold_bipolar_weights", lambda m: fold_bipolar_weights(m).transform(InferDataTypes())),
        ("lower_convs_to_matmul", lambda m: m.transform(LowerConvsToMatMul())),
        ("bipolar_to_xnor_popcount", lambda m: m.transform(ConvertBipolarMatMulToXnorPopcount())),
    ]


def run_wrapped(model, x: np.ndarray) -> np.ndarray:
    """Logits of a transformed QONNX graph (batch 1, as FINN keeps it) on ``input`` ``x``, image by image;
    a graph input retyped BINARY by the XNOR conversion gets ``{0, 1}`` for ``{-1, +1}``."""
    from qonnx.core.datatype import DataType
    from qonnx.core.onnx_exec import execute_onnx

    name = model.graph.input[0].name
    if model.get_tensor_datatype(name) == DataType["BINARY"]:
        x = (x > 0).astype(np.float32)
    out = model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {name: x[i : i + 1]})[out] for i in range(len(x))])


def frontend_report(qonnx_model: onnx.ModelProto, x: np.ndarray, engine_predictions: np.ndarray) -> list[dict]:
    """Apply ``steps`` in order to the (batch-1) QONNX graph; per step: whether it ran (``error``
    otherwise, and the later steps are not tried), the share of the ``x`` images whose prediction
    equals the engine's, and the node types it leaves."""
    from qonnx.core.modelwrapper import ModelWrapper

    model = ModelWrapper(qonnx_model)
    report = []
    for name, step in steps():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = step(model)
                predictions = np.argmax(run_wrapped(model, x), -1)
        except Exception as e:  # a FINN step that fails is a finding to report, not a crash
            report.append({"step": name, "ran": False, "error": f"{type(e).__name__}: {e}"[:300]})
            break
        report.append(
            {
                "step": name,
                "ran": True,
                "predictions_equal_engine": float(np.mean(predictions == engine_predictions)),
                "node_types": sorted({n.op_type for n in model.graph.node}),
            }
        )
    return report
