"""Export a trained run as an integer-only XNOR-popcount-threshold pipeline with golden vectors, a
plain ONNX graph and a QONNX graph for FINN.

python -m irnet_jax.export --checkpoint runs/smoke --out export/ --num_images 4
"""

import json

from absl import flags

from irnet_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Workdir of a training run.")
flags.DEFINE_string("out", None, "Output directory (new, or empty: an existing export is never overwritten).")
flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of the run.")
flags.DEFINE_integer("num_images", 4, "Test images with golden vectors (0..MAX_GOLDEN_IMAGES).")
flags.DEFINE_integer("verify", 1000, "Test images on which engine == model is checked (>= 1).")
flags.DEFINE_string("data_dir", "", "TFDS data dir (default: the run's, else $TFDS_DATA_DIR).")
flags.DEFINE_integer("bench_batch", 0, "If > 0: also time the engine, the float model and each graph at this batch.")
flags.DEFINE_string("formats", "onnx,qonnx", "Graphs to write and verify: onnx, qonnx (comma-separated; '' for none).")
flags.DEFINE_integer(
    "frac_bits",
    0,
    "Fractional bits of the fixed-point values (a float classifier's input, a ResNet's stream; 1..26); "
    "0: the model's residual_frac_bits if it was trained with one, else 24.",
)
flags.DEFINE_bool(
    "verify_float64",
    False,
    "Also compare the engine and the float32 model with the model evaluated in float64 (its exact value; slow).",
)
flags.DEFINE_integer(
    "finn_images",
    16,
    "Test images on which each FINN frontend step's QONNX graph is checked (batch 1, node by node: "
    "minutes on a ResNet); 0: no FINN check.",
)
flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
    from irnet_jax.export import export_checkpoint

    manifest = export_checkpoint(
        FLAGS.checkpoint,
        FLAGS.out,
        FLAGS.which,
        FLAGS.num_images,
        FLAGS.verify,
        FLAGS.data_dir,
        FLAGS.bench_batch,
        FLAGS.formats,
        FLAGS.frac_bits,
        FLAGS.verify_float64,
        FLAGS.finn_images,
    )
    print(json.dumps({"out": FLAGS.out, **manifest["verification"], **manifest["size_bytes"]}))


if __name__ == "__main__":
    cli.run(main, "python -m irnet_jax.export")
