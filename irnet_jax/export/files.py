"""The export folder: ``manifest.json``, weight and threshold files, and golden vectors.

manifest.json            "format" (versioned: every layout, bit order and rounding rule), one entry per
                         stage, the verification figures, sizes
weights/L<i>.memb|.memh  binary weights, one line per output channel ($readmemb / $readmemh)
weights/L<i>_float.npz   a full-precision first/last layer
thresholds/L<i>*.        integer thresholds and flips of binary convs, zero-padding border tables
golden/img<n>/L<i>_*     per image and stage: input bits, integer sums, output bits, fixed-point values
                         or logits, and for binary convs the im2col patches and pre-pool bits (RTL)
model.onnx               plain ONNX, model.qonnx.onnx QONNX for FINN (``onnx_graph``; the pipeline writes them)
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from irnet_jax import data as data_lib
from irnet_jax import encoding
from irnet_jax.export import bits as bit_ops
from irnet_jax.export.engine import run_numpy
from irnet_jax.export.integer_stem import IntegerFirstConvStage
from irnet_jax.export.stages import FoldedModel, Lines, pixel_rows, write_lines

FORMAT_NAME = "irnet_jax binary export"
# 3: the stem's offsets per border class (offset_table); 4: option-B shortcuts (ResNet-18);
# 5: a sequential net's float first layer as an integer conv of the pixels (int_first_conv)
FORMAT_VERSION = 5


def golden_files(folded: FoldedModel, trace: list[dict], n: int) -> dict[str, Lines]:
    """``{file name: lines}`` of image ``n`` of a ``run_numpy`` trace (layouts: ``format_section``)."""
    files: dict[str, Lines] = {}
    for i, (stage, record) in enumerate(zip(folded.stages, trace, strict=True)):
        image_input = record["input"][n]
        if image_input.dtype == np.uint8:
            rows = pixel_rows(image_input) if len(stage.in_shape) == 3 else image_input.reshape(1, -1)
            files[f"L{i}_in.txt"] = [" ".join(bit_ops.bits_line(r)) for r in rows]
            files[f"L{i}_in.memb"] = [bit_ops.bits_line(r) for r in rows]
        elif image_input.dtype == np.int32:  # a fixed-point stream
            files[f"L{i}_in.txt"] = [" ".join(map(str, r)) for r in pixel_rows(image_input)]
        if "sums" in record:
            files[f"L{i}_sum.txt"] = [" ".join(map(str, r)) for r in pixel_rows(record["sums"][n])]
        files.update(stage.golden_output(i, record["output"][n]))
        files.update(stage.golden_extra(i, record["input"][n : n + 1]))
    return files


def format_section(folded: FoldedModel) -> dict[str, Any]:
    """Every format, bit order, layout and rounding rule the export folder relies on."""
    levels = folded.encoding_levels
    thresholds = encoding.thermometer_thresholds(levels).tolist() if folded.input_encoding == "thermometer" else None
    return {
        "name": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "bits": "bit 1 = +1, bit 0 = -1; sign(0) = +1 (a value >= 0 is bit 1)",
        "index_order": {
            "conv_weights_and_patches": "(c, kh, kw): channel-major, then kernel row, then kernel column (FINN: (kh, kw, c))",
            "feature_maps": "(h, w, c)",
            "dense_input": "the feature map flattened in (h, w, c) order: index (h * W + w) * C + c",
        },
        "text_files": {
            ".memb": "one vector per line, exactly its length in '0'/'1' digits, index 0 first (leftmost); "
            "$readmemb puts index 0 at the MSB of a [K-1:0] register",
            ".memh": "the same vector left-padded with '0' bits to a multiple of 4, as hex digits, index 0 side first",
            ".txt": "space-separated decimal integers, or bits grouped per pixel",
            "thresholds/L<i>_thr.memb": "one line per output channel: T as a 32-bit two's complement binary number",
            "thresholds/L<i>_flip.memb": "one line per output channel: 1 = flip (bit = D <= T), 0 = bit = D >= T",
            "thresholds/L<i>.txt": "one line per output channel: '<T> <flip>' (decimal)",
            "thresholds/L<i>_border.txt": "one line per border class (row_class * num_col_classes + col_class): "
            "C for channels 0..C_out-1 (decimal)",
            "thresholds/L<i>_border.memb": "the same table, one 32-bit two's complement C per line, class-major",
            "thresholds/L<i>_posclass.memb": "one line per conv output position in (h, w) order: its border class, 16 bits",
            "packed_words": "uint32; bit i of word i // 32 is index i (the JAX/NumPy engines only)",
        },
        "padding": {
            "zero": "the datapath pads with +1 bits and subtracts the border table (layer 'border_correction')",
            "one": "+1 bits",
            "minus_one": "-1 bits",
            "checkerboard": "bit 1 where (row + col) of the padded map is even (row 0, col 0 = the top-left "
            "border pixel), the same for every channel",
        },
        "pooling": "2x2 windows, stride 2, max; 'sums' pools the integer sums D (or the fixed-point q) before the "
        "threshold, 'bits' pools after it (the OR of bit 1s; the max of q); pool_ceil_mode true: an odd last "
        "row/column forms a partial window holding the values it has; false: it is dropped",
        "input_encoding": {
            "name": folded.input_encoding,
            "levels": levels,
            "thermometer": "plane c * levels + j is bit 1 iff pixel[c] >= T_j (uint8 compare)",
            "thermometer_thresholds": thresholds,
            "bitplanes": "plane c * levels + j is bit 7 - j of pixel[c]",
        },
        "fixed_point": "q: int32 with F fractional bits (value q / 2^F), from D by "
        "clamp(floor((M*D + C + 2^(S-1)) / 2^S), -2^F, 2^F) in int64 (floor = arithmetic right shift: "
        "rounding half up)",
        "residual_stream": "ResNets: q int32 with F fractional bits; stem: Y = conv(uint8 pixels, integer weights), "
        "q = fixed point of Y with the offset of the output position's border class (offset_table[row_class[r], "
        "col_class[c]]); each binary conv takes a = (q >= 0) and gives "
        "q' = clamp(clamp(t, -2^(F+1), 2^(F+1)) + shortcut(q), -2^F, 2^F) with t the fixed point of its sums; "
        "option-A shortcut: q at every second row and column (from 0), zero channels split evenly on both sides; "
        "option-B shortcut (layer 'shortcut_projection'): Y = q at every s-th row and column times integer "
        "weights Wq [C_in, C_out], short = clamp(floor((Y + C + 2^(G-1)) / 2^G), -2^29, 2^29), and t clamped to "
        "+-2^29 instead of +-2^(F+1)",
        "float_order": {
            "binary_dense": "logits = float32(D) * logit_scale, rounded to float32, then + bias (no fused multiply-add)",
            "float_dense": "v = float32(q) * float32(2^-F) (float32(q) rounds to nearest even where |q| > 2^24); logits = v @ W in float32 (any summation order), then + bias",
            "avgpool_float_dense": "v = float32(sum_hw q) * float32(2^-F / (H*W)); v = v * A + B; logits = v @ W + b",
        },
        "argmax": "the predicted class is the lowest index among equal largest logits",
        "golden": {
            "L<i>_in.txt/.memb": "a conv stage's input bits: one line per pixel (h, w), channels 0..C-1; a dense "
            "stage's: one line, the K-vector in dense_input order",
            "L<i>_sum.txt": "the integer sums D before pooling (after the border correction): one line per conv "
            "output position (h, w), channels 0..C_out-1; one line for a dense stage",
            "L<i>_out.txt/.memb": "bits after pooling: one line per output pixel (h, w), channels 0..C_out-1",
            "L<i>_out.txt (fixed-point stage)": "q after pooling: one line per output pixel, decimal, channels in order",
            "L<i>_in.txt (residual stage)": "the stream q it takes: one line per pixel (h, w), decimal, channels in order",
            "L<i>_patches.memb": "one line per conv output position (h, w): the K patch bits as the datapath sees "
            "them (border bits included), (c, kh, kw) order",
            "L<i>_shortcut.txt": "an option-B shortcut's output short: one line per output position (h, w), "
            "decimal, channels in order",
            "L<i>_prepool.memb": "one line per conv output position (h, w): the C_out bits before pooling",
            "L<last>_logits.txt": "the classifier's float32 logits, one line, class 0 first, '%.9g'",
        },
    }


def _sizes(folded: FoldedModel) -> dict[str, int]:
    stages = folded.stages
    binary = [s for s in stages if hasattr(s, "weight_bits")]
    return {
        "packed_binary_weights": sum(math.ceil(s.weight_bits.size / 8) for s in binary),
        "float_weights": sum(4 * s.weights.size for s in stages if hasattr(s, "weights")),
        "thresholds_int32": sum(4 * s.threshold.size for s in binary if getattr(s, "threshold", None) is not None),
        "border_tables_int32": sum(4 * s.border.table.size for s in binary if getattr(s, "border", None) is not None),
        "fixed_point_int64": sum(
            8 * (s.fixed.multiplier.size + _stored_offsets(s).size + s.fixed.shift.size)
            for s in stages
            if getattr(s, "fixed", None) is not None
        ),
        "stem_weights_int64": sum(8 * s.weights_int.size for s in stages if hasattr(s, "weights_int")),
        "first_layer_offsets_int64": sum(
            8 * s.offset_classes().table.size for s in stages if isinstance(s, IntegerFirstConvStage)
        ),
        "shortcut_weights_int64": sum(
            8 * s.projection_weights.size for s in stages if getattr(s, "projection_weights", None) is not None
        ),
    }


def _stored_offsets(stage) -> np.ndarray:
    """The fixed-point offsets as the export folder stores them (the stem's: one row per border class)."""
    return stage.offset_classes().table if hasattr(stage, "offset_classes") else stage.fixed.offset


def _normalization(folded: FoldedModel) -> dict[str, Any]:
    """The normalization the trained model's float first layer saw, ``(x / 255 - mean) / std`` (folded
    into the integer first layer's weights and offsets)."""
    mean, std = data_lib.normalization_stats(data_lib.get_dataset_info(folded.dataset), folded.normalization)
    return {"name": folded.normalization, "rule": "(pixel / 255 - mean[c]) / std[c]", "mean": mean, "std": std}


def _manifest(folded: FoldedModel, source: dict, labels: np.ndarray, layers: list[dict]) -> dict[str, Any]:
    return {
        "format": format_section(folded),
        "source": source,
        "model": folded.model,
        "dataset": folded.dataset,
        "input": {
            "encoding": folded.input_encoding,
            "levels": folded.encoding_levels,
            "image": "uint8 [H, W, C]",
            "normalization": _normalization(folded),
            "onnx_input": "[N, C, H, W] float32: the pixel values 0..255 (an integer first layer or stem, "
            "the normalization folded in) or the +1/-1 planes (binary first layer)",
        },
        "folding": "z = A*y + B (BatchNorm: A = gamma/sqrt(var+eps), B = beta - mean*A; offset: A = 1); "
        "y = s*D; M = A*s; bit = D >= ceil(-B/M) (M > 0), D <= floor(-B/M) (M < 0, flip), "
        "constant (M = 0); before a float classifier: q = fixed-point hardtanh(M*D + B)",
        "golden": {"images": len(labels), "labels": [int(label) for label in labels], "folder": "golden/img<n>/"},
        "layers": layers,
        "size_bytes": _sizes(folded),
    }


def write_export(
    folded: FoldedModel,
    out_dir: str,
    images_u8: np.ndarray,
    labels: np.ndarray,
    source: dict[str, Any],
    extra: dict[str, Any] | None = None,
    extra_sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Write the parameter files, the golden vectors of ``images_u8`` and, once, ``manifest.json``
    (with ``extra`` sections, e.g. the verification, and ``extra_sizes`` under ``size_bytes``)."""
    for sub in ("weights", "thresholds", "golden"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    layers = [stage.manifest_entry(i, out_dir) for i, stage in enumerate(folded.stages)]
    _, trace = run_numpy(folded, images_u8, trace=True)
    for n in range(len(images_u8)):
        image_dir = os.path.join(out_dir, "golden", f"img{n}")
        os.makedirs(image_dir, exist_ok=True)
        for name, lines in golden_files(folded, trace, n).items():
            write_lines(os.path.join(image_dir, name), lines)
    manifest = _manifest(folded, source, labels, layers)
    manifest.update(extra or {})
    manifest["size_bytes"].update(extra_sizes or {})
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    return manifest
