"""How close an export of a float ResNet can get to the model: the float32 model against the same
model in float64, the export's engine against both, and the engine's agreement per ``F``.

    PYTHONPATH=. python bench/float_agreement.py RUN_DIR [--images 2000] [--frac_bits 16,20,22,23]

Prints one JSON line. If the float32 model agrees with its float64 self far more often than the engine
does, the export, not float32, is the larger error.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from irnet_jax import data as data_lib
from irnet_jax import export, models, train_state
from irnet_jax.export import pipeline


def float64_predictions(model: nnx.Module, config, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """``argmax`` of ``model`` rebuilt in float64 (parameters and statistics cast exactly)."""
    info = data_lib.get_dataset_info(config.dataset)
    options = {name: config[name] for name in train_state.QUANTIZATION_FIELDS}
    with jax.enable_x64(True):
        wide = models.create_model(
            config.model,
            input_shape=train_state.model_input_shape(config),
            num_classes=info.num_classes,
            rngs=nnx.Rngs(0),
            dtype=jnp.float64,
            **options,
            **config.model_kwargs.to_dict(),
        )
        cast = lambda v: jnp.asarray(v, jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v
        nnx.update(wide, jax.tree.map(cast, nnx.state(model)))
        wide.eval()
        mean, std = data_lib.normalization_stats(info, config.normalization)
        run = nnx.jit(lambda m, x: jnp.argmax(m(x), -1))
        out = []
        for i in range(0, len(images), batch):
            x = (images[i : i + batch] / 255.0 - np.asarray(mean)) / np.asarray(std)
            out.append(np.asarray(run(wide, jnp.asarray(x))))
    return np.concatenate(out)


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
    p64 = float64_predictions(model, config, images)
    row = {"run": args.run, "images": len(images), "float32_equals_float64": float(np.mean(p32 == p64))}
    for f in (int(v) for v in args.frac_bits.split(",")):
        engine = pipeline.engine_predictions(export.fold(model, config, f), images)
        row[f"F{f}_engine_equals_float32"] = float(np.mean(engine == p32))
        row[f"F{f}_engine_equals_float64"] = float(np.mean(engine == p64))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
