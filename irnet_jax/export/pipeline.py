"""``export_checkpoint``: a training run's workdir -> a verified export folder (what the command runs)."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib
from irnet_jax.errors import ConfigError
from irnet_jax.export.engine import (
    benchmark_engine,
    engine_predictions,
    first_layer_input,
    model_predictions,
    run_numpy,
    stream_equal_layers,
)
from irnet_jax.export.files import write_export
from irnet_jax.export.fixed_point import DEFAULT_FRAC_BITS
from irnet_jax.export.folding import ExportError, fold
from irnet_jax.export.stages import FoldedModel
from irnet_jax.timing import median_seconds
from irnet_jax.train_state import load_model

# Golden vectors are written per image and layer (text files): a few images make a test bench.
MAX_GOLDEN_IMAGES = 1000
GRAPH_FORMATS = ("onnx", "qonnx")
GRAPH_FILES = {"onnx": "model.onnx", "qonnx": "model.qonnx.onnx"}
PACKAGES = {"onnx": ("onnx", "onnxruntime"), "qonnx": ("onnx", "onnxruntime", "qonnx")}
STREAM_CHECK_IMAGES = 1000  # images whose every stream tensor is compared with the model's own
DEFAULT_FINN_IMAGES = 16  # the FINN steps' graphs run image by image (batch 1), node by node
FRAC_BITS_RANGE = (
    1,
    26,
)  # int32 stream; beside an option-B shortcut t and the shortcut clamp to +-2**29, i.e. +-8 at F = 26


def parse_formats(formats: str) -> tuple[str, ...]:
    """``"onnx,qonnx"`` -> the graph formats to write (``""``: none); ``ConfigError`` for another name
    or ``ExportError`` for a missing package (naming the extra that installs it)."""
    names = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in names if f not in GRAPH_FORMATS]
    if bad:
        raise ConfigError(f"formats={formats!r} is not allowed: choose from {list(GRAPH_FORMATS)}, comma-separated")
    for name in names:
        for package in PACKAGES[name]:
            if importlib.util.find_spec(package) is None:
                raise ExportError(
                    f"format {name!r} needs the package {package!r}: pip install 'irnet_jax[export]' "
                    f"(or --formats='' for the integer engine only)"
                )
    return names


def check_arguments(
    out: str, num_images: int, verify: int, bench_batch: int, frac_bits: int, finn_images: int = DEFAULT_FINN_IMAGES
) -> None:
    """``ConfigError`` for an impossible count or an ``out`` that is a file or a non-empty folder."""
    if not 0 <= num_images <= MAX_GOLDEN_IMAGES:
        raise ConfigError(f"num_images={num_images} is not allowed: must be in [0, {MAX_GOLDEN_IMAGES}]")
    if verify < 1:
        raise ConfigError(f"verify={verify} is not allowed: must be >= 1 (test images checked)")
    if finn_images < 0:
        raise ConfigError(f"finn_images={finn_images} is not allowed: must be >= 0 (0: no FINN frontend check)")
    if bench_batch < 0:
        raise ConfigError(f"bench_batch={bench_batch} is not allowed: must be >= 0 (0: no timing)")
    lo, hi = FRAC_BITS_RANGE
    if frac_bits and not lo <= frac_bits <= hi:
        raise ConfigError(
            f"frac_bits={frac_bits} is not allowed: must be 0 (the model's own, else {DEFAULT_FRAC_BITS}) or in [{lo}, {hi}]"
        )
    if not out:
        raise ConfigError("out is empty: name a new folder for the export")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConfigError(f"out {os.path.abspath(out)} already exists and is not an empty folder: choose a new one")


def checkpoint_bytes(workdir: str, step: int) -> int:
    """Bytes on disk of one checkpoint step of a run."""
    root = os.path.join(ckpt.checkpoint_dir(workdir), str(step))
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def verify_graphs(
    folded: FoldedModel,
    graphs: dict[str, Any],
    images_u8: np.ndarray,
    labels: np.ndarray,
    engine: np.ndarray,
    golden: int,
) -> dict[str, Any]:
    """Each graph's predictions against the engine's on ``images_u8``, and its stage tensors against
    the NumPy reference on the first ``golden`` images (those with golden vectors)."""
    from irnet_jax.export import onnx_graph  # the export extra (parse_formats checked it)

    x = onnx_graph.graph_input(first_layer_input(images_u8, folded))
    result: dict[str, Any] = {}
    for name, model in graphs.items():
        qonnx = name == "qonnx"
        predictions = onnx_graph.graph_predictions(model, qonnx, x)
        result[f"{name}_equals_engine"] = float(np.mean(predictions == engine))
        result[f"{name}_test_accuracy"] = float(np.mean(predictions == labels))
        if golden:
            _, trace = run_numpy(folded, images_u8[:golden], trace=True)
            checked = onnx_graph.build_graph(folded, qonnx, intermediates=not qonnx)
            tensors = onnx_graph.run_graph(checked, qonnx, x[:golden], intermediates=True)
            result[f"{name}_tensors_differing_from_golden"] = onnx_graph.mismatched_tensors(tensors, folded, trace)
    return result


def finn_check(folded: FoldedModel, qonnx_model: Any, images_u8: np.ndarray, engine: np.ndarray) -> dict[str, Any]:
    """The FINN frontend steps on the QONNX graph (``finn_frontend``), checked on ``images_u8``."""
    from irnet_jax.export import finn_frontend, onnx_graph

    x = onnx_graph.graph_input(first_layer_input(images_u8, folded))
    report = finn_frontend.frontend_report(qonnx_model, x, engine[: len(images_u8)])
    return {"images": len(images_u8), "steps": report}


def graph_throughput(folded: FoldedModel, graphs: dict[str, Any], images_u8: np.ndarray, repeats: int = 3) -> dict:
    """Median images/s of each graph's runtime on one batch (onnxruntime; qonnx's node-by-node executor)."""
    from irnet_jax.export import onnx_graph

    x = onnx_graph.graph_input(first_layer_input(images_u8, folded))
    rates = {}
    for name, model in graphs.items():
        if name == "qonnx":
            fn = lambda m=model: onnx_graph.run_qonnx(m, x)
        else:
            session = onnx_graph.ort_session(model)
            fn = lambda s=session: s.run(["logits"], {"input": x})
        rates[f"{name}_images_per_second"] = len(x) / median_seconds(fn, repeats)
    return rates


def export_checkpoint(
    checkpoint: str,
    out: str,
    which: str = "best",
    num_images: int = 4,
    verify: int = 1000,
    data_dir: str = "",
    bench_batch: int = 0,
    formats: str = "onnx,qonnx",
    frac_bits: int = 0,
    verify_float64: bool = False,
    finn_images: int = DEFAULT_FINN_IMAGES,
) -> dict[str, Any]:
    """Fold the ``which`` checkpoint of the run in ``checkpoint``, check the packed engine's (and each
    graph's) predictions against the float model's on the first ``verify`` test images (with
    ``verify_float64`` also against the model evaluated in float64, its exact value), and write the
    export folder to ``out`` with golden vectors of the first ``num_images`` test images and the
    ONNX/QONNX graphs of ``formats``, the FINN frontend steps run on the QONNX graph for the first
    ``finn_images`` of them (image by image: the slowest check on a large net); returns the manifest."""
    check_arguments(out, num_images, verify, bench_batch, frac_bits, finn_images)
    graph_formats = parse_formats(formats)
    model, config, step = load_model(checkpoint, which)
    folded = fold(model, config, frac_bits)
    test = data_lib.load_tfds_split(config.dataset, "test", data_dir or config.data_dir)
    n = min(verify, len(test.labels))
    images, labels = test.images[:n], test.labels[:n]
    engine = engine_predictions(folded, images)
    reference = model_predictions(model, config, images)
    verification = {
        "images": n,
        "engine_equals_model": float(np.mean(engine == reference)),
        "engine_test_accuracy": float(np.mean(engine == labels)),
        "model_test_accuracy": float(np.mean(reference == labels)),
    }
    if verify_float64:
        exact = model_predictions(model, config, images, float64=True)
        verification["engine_equals_model_float64"] = float(np.mean(engine == exact))
        verification["model_equals_model_float64"] = float(np.mean(reference == exact))
    if getattr(model, "frac_bits", 0):  # trained with residual_frac_bits: the model's own stream
        verification["model_stream_tensors_equal"] = stream_equal_layers(model, folded, images[:STREAM_CHECK_IMAGES])
        verification["model_stream_images"] = min(n, STREAM_CHECK_IMAGES)
    graphs = build_graphs(folded, graph_formats)
    verification.update(verify_graphs(folded, graphs, images, labels, engine, min(num_images, n)))
    extra: dict[str, Any] = {"verification": verification}
    if "qonnx" in graphs and finn_images:
        extra["finn_frontend"] = finn_check(folded, graphs["qonnx"], images[:finn_images], engine)
    if bench_batch > 0:
        extra["throughput"] = benchmark_engine(folded, model, config, test.images[:bench_batch])
        extra["throughput"].update(graph_throughput(folded, graphs, test.images[:bench_batch]))
    source = {"checkpoint": os.path.abspath(checkpoint), "step": step, "which": which}
    sizes = {"float_checkpoint_step_dir": checkpoint_bytes(checkpoint, step)}
    extra["graphs"], graph_sizes = save_graphs(graphs, out)
    sizes.update(graph_sizes)
    return write_export(folded, out, test.images[:num_images], test.labels[:num_images], source, extra, sizes)


def build_graphs(folded: FoldedModel, formats: tuple[str, ...]) -> dict[str, Any]:
    """``{format: onnx.ModelProto}`` of the graph formats asked for."""
    if not formats:
        return {}
    from irnet_jax.export import onnx_graph

    return {name: onnx_graph.build_graph(folded, qonnx=name == "qonnx") for name in formats}


def save_graphs(graphs: dict[str, Any], out: str) -> tuple[dict[str, str], dict[str, int]]:
    """Save the graphs into ``out``: ``({format: file name}, {file name: bytes})``."""
    if not graphs:
        return {}, {}
    import onnx

    os.makedirs(out, exist_ok=True)
    names, sizes = {}, {}
    for name, model in graphs.items():
        path = os.path.join(out, GRAPH_FILES[name])
        onnx.save(model, path)
        names[name], sizes[GRAPH_FILES[name]] = GRAPH_FILES[name], os.path.getsize(path)
    return names, sizes
