"""How close an export of a float ResNet can get to the model: the float32 model against the same
model in float64, the export's engine against both, and the engine's agreement per ``F``.

    PYTHONPATH=. python bench/float_agreement.py RUN_DIR [--images 2000] [--frac_bits 16,20,22,23]

Prints one JSON line. If the float32 model agrees with its float64 self far more often than the engine
does, the export, not float32, is the larger error.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from irnet_jax import data as data_lib
from irnet_jax import export
from irnet_jax.export import pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--frac_bits", default="16,20,22,23")
    parser.add_argument("--data_dir", default="")
    args = parser.parse_args()
    model, config, _ = pipeline.load_model(args.run, "best")
    test = data_lib.load_tfds_split(config.dataset, "test", args.data_dir or config.data_dir)
    images = test.images[: args.images]
    p32 = pipeline.model_predictions(model, config, images)
    p64 = pipeline.model_predictions(model, config, images, float64=True)
    row = {"run": args.run, "images": len(images), "float32_equals_float64": float(np.mean(p32 == p64))}
    for f in (int(v) for v in args.frac_bits.split(",")):
        engine = pipeline.engine_predictions(export.fold(model, config, f), images)
        row[f"F{f}_engine_equals_float32"] = float(np.mean(engine == p32))
        row[f"F{f}_engine_equals_float64"] = float(np.mean(engine == p64))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
