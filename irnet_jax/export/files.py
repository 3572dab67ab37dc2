"""The export folder: ``manifest.json``, weight and threshold files, and golden vectors.

manifest.json            formats, bit order, folding rule, one entry per stage, sizes
weights/L<i>.memb|.memh  binary weights, one line per output channel ($readmemb / $readmemh)
weights/L<i>_float.npz   a full-precision first/last layer
thresholds/L<i>*.        integer thresholds and flips of binary convs
golden/img<n>/L<i>_*     per image and stage: input bits, integer sums, output bits or logits,
                         and for binary convs the im2col patches and pre-pool bits (RTL)
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from irnet_jax import data as data_lib
from irnet_jax.export import bits as bit_ops
from irnet_jax.export.engine import run_numpy
from irnet_jax.export.stages import FoldedModel, Lines, pixel_rows, write_lines

FORMAT = "irnet_jax binary export v1"


def golden_files(folded: FoldedModel, trace: list[dict], n: int) -> dict[str, Lines]:
    """``{file name: lines}`` of image ``n`` of a ``run_numpy`` trace: per stage ``L<i>_in`` (bits:
    one line per pixel (h, w), channel 0 first, or one line for a vector), ``L<i>_sum.txt`` (integer
    sums, same layout), the stage's outputs and extras."""
    files: dict[str, Lines] = {}
    for i, (stage, record) in enumerate(zip(folded.stages, trace, strict=True)):
        image_input = record["input"][n]
        if image_input.dtype == np.uint8:
            rows = pixel_rows(image_input)
            files[f"L{i}_in.txt"] = [" ".join(bit_ops.bits_line(r)) for r in rows]
            files[f"L{i}_in.memb"] = [bit_ops.bits_line(r) for r in rows]
        if "sums" in record:
            files[f"L{i}_sum.txt"] = [" ".join(map(str, r)) for r in pixel_rows(record["sums"][n])]
        files.update(stage.golden_output(i, record["output"][n]))
        files.update(stage.golden_extra(i, record["input"][n : n + 1]))
    return files


def _sizes(folded: FoldedModel) -> dict[str, int]:
    stages = folded.stages
    return {
        "packed_binary_weights": sum(math.ceil(s.weight_bits.size / 8) for s in stages if hasattr(s, "weight_bits")),
        "float_weights": sum(4 * s.weights.size for s in stages if hasattr(s, "weights")),
        "thresholds_int32": sum(4 * s.threshold.size for s in stages if hasattr(s, "threshold")),
    }


def _normalization(folded: FoldedModel) -> dict[str, Any]:
    """How a float first layer's input is formed from the uint8 image: ``(x / 255 - mean) / std``."""
    mean, std = data_lib.normalization_stats(data_lib.get_dataset_info(folded.dataset), folded.normalization)
    return {"name": folded.normalization, "rule": "(pixel / 255 - mean[c]) / std[c]", "mean": mean, "std": std}


def _manifest(folded: FoldedModel, source: dict, labels: np.ndarray, layers: list[dict]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "source": source,
        "model": folded.model,
        "dataset": folded.dataset,
        "input": {
            "encoding": folded.input_encoding,
            "levels": folded.encoding_levels,
            "image": "uint8 [H, W, C]",
            "planes_order": "channel c, level j -> plane c * levels + j",
            "normalization": _normalization(folded),
        },
        "bit_convention": "bit 1 = +1, bit 0 = -1 (the original's text style)",
        "index_order": {
            "conv_weights_and_patches": "(c, kh, kw), channel-major (FINN uses (kh, kw, c))",
            "feature_maps": "(h, w, c)",
            "dense_input": "feature map flattened in (h, w, c) order",
        },
        "text_files": "MSB first: the first digit is index 0; .memb one line per output channel, exactly K digits",
        "memh": "the K-bit vector left-padded with zeros to a multiple of 4 bits, MSB (index 0 side) first",
        "packed_words": "uint32; bit i of word i // 32 is index i (the JAX/NumPy engines)",
        "folding": "z = A*y + B (BatchNorm: A = gamma/sqrt(var+eps), B = beta - mean*A; offset: A = 1); "
        "y = s*D; M = A*s; bit = D >= ceil(-B/M) (M > 0), D <= floor(-B/M) (M < 0, flip), "
        "constant (M = 0); max-pool before the norm pools D, after it ORs bits",
        "golden": {
            "images": len(labels),
            "labels": [int(label) for label in labels],
            "files": "golden/img<n>/L<i>_{in,sum,out}.txt (text) and .memb; L<i>_patches.memb, "
            "L<i>_prepool.memb (per output position before pooling, for RTL)",
        },
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
