"""The export table: per export folder, agreement of each format with the trained model on the test set,
both accuracies, sizes and the images/s of each runtime, from the folders' own ``manifest.json``.

    python -m irnet_jax.export --checkpoint RUN --out EXPORT --verify 10000 --bench_batch 500
    python bench/export_table.py EXPORT [EXPORT ...]

Prints a Markdown table (one row per folder) and, per folder, the FINN frontend steps that passed.
"""

from __future__ import annotations

import argparse
import json
import pathlib


def row(folder: pathlib.Path) -> tuple[str, list[str]]:
    m = json.loads((folder / "manifest.json").read_text())
    v, sizes, rate = m["verification"], m["size_bytes"], m.get("throughput", {})
    packed = sizes["packed_binary_weights"] + sizes["thresholds_int32"] + sizes.get("border_tables_int32", 0)
    packed += sizes.get("fixed_point_int64", 0) + sizes.get("stem_weights_int64", 0) + sizes["float_weights"]

    def pct(key: str) -> str:
        return f"{100 * v[key]:.2f}" if key in v else "—"

    def speed(key: str) -> str:
        return f"{rate[key]:,.0f}" if key in rate else "—"

    cells = [
        folder.name,
        m["model"],
        str(v["images"]),
        pct("engine_equals_model"),
        pct("onnx_equals_engine"),
        pct("qonnx_equals_engine"),
        f"{pct('model_test_accuracy')} / {pct('engine_test_accuracy')}",
        f"{packed / 1024:.1f} KiB vs {sizes['float_checkpoint_step_dir'] / 1024:.0f} KiB",
        " / ".join(speed(k) for k in ("float_images_per_second", "engine_images_per_second")),
        " / ".join(speed(k) for k in ("onnx_images_per_second", "qonnx_images_per_second")),
    ]
    steps = m.get("finn_frontend", {}).get("steps", [])
    passed = [s["step"] for s in steps if s.get("ran") and s.get("predictions_equal_engine") == 1.0]
    return "| " + " | ".join(cells) + " |", passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    print(
        "| export | model | test images | engine = model % | ONNX = engine % | QONNX = engine % "
        "| accuracy % model / engine | integer export vs float checkpoint | img/s float model / engine "
        "| img/s onnxruntime / qonnx |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    finn = []
    for folder in args.folders:
        line, passed = row(folder)
        print(line)
        finn.append(f"{folder.name}: FINN frontend steps passed: {', '.join(passed) or 'none'}")
    print()
    print("\n".join(finn))


if __name__ == "__main__":
    main()
