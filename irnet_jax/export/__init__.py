"""Integer-only export of a trained sequential BNN: folding, a NumPy reference and a bit-exact packed
engine, golden vectors for RTL (``python -m irnet_jax.export``).

    folding   model -> ``FoldedModel`` (integer thresholds, weight bits; the math is in its docstring)
    border    zero padding on an XNOR datapath: +1 border bits and a per-border-class correction
    fixed_point  a float classifier's input (hardtanh of the folded norm) as int64 multiply-shift-clamp
    integer_stem  a float first layer as an exact integer conv of the uint8 pixels (sequential nets, ResNets)
    residual  the ResNets' fixed-point residual stream
    stages    one class per stage kind: NumPy reference, packed JAX form, manifest entry, golden files
    bits      bit-level operations (padding, patches, pooling, XNOR-popcount, text lines; the JAX packing
              and popcount are ``irnet_jax.sign_conv``'s)
    engine    running a folded model (NumPy reference, packed JAX engine) and the float model
    files     the export folder and its ``manifest.json``
    pipeline  ``export_checkpoint``: workdir -> verified export folder

**Bit order.** Weights and patches are indexed ``(c, kh, kw)`` (channel-major; FINN uses
``(kh, kw, c)``); feature maps ``(h, w, c)``; a dense layer's input is the feature map flattened in
``(h, w, c)`` order. Text files hold MSB = index 0 first; packed words are uint32 little-endian over
the index (bit ``i`` of word ``i // 32`` is index ``i``).
"""

from irnet_jax.export.border import BorderCorrection, border_correction, class_table
from irnet_jax.export.engine import (
    benchmark_engine,
    engine_predictions,
    first_layer_input,
    make_jax_engine,
    model_predictions,
    run_numpy,
)
from irnet_jax.export.files import FORMAT_VERSION, write_export
from irnet_jax.export.fixed_point import FixedPointAffine, fixed_point_affine
from irnet_jax.export.folding import EXPORTABLE, ExportError, fold, fold_threshold
from irnet_jax.export.pipeline import export_checkpoint
from irnet_jax.export.stages import (
    BinaryConvStage,
    BinaryDenseStage,
    FloatDenseStage,
    FoldedModel,
    Stage,
)

__all__ = [
    "EXPORTABLE",
    "FORMAT_VERSION",
    "BinaryConvStage",
    "BinaryDenseStage",
    "BorderCorrection",
    "FixedPointAffine",
    "ExportError",
    "FloatDenseStage",
    "FoldedModel",
    "Stage",
    "benchmark_engine",
    "border_correction",
    "class_table",
    "engine_predictions",
    "export_checkpoint",
    "first_layer_input",
    "fixed_point_affine",
    "fold",
    "fold_threshold",
    "make_jax_engine",
    "model_predictions",
    "run_numpy",
    "write_export",
]
