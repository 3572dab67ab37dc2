"""Train or evaluate an IR-Net binary network.

    python train.py --config configs/vgg_small_cifar10.py --workdir runs/vgg_small
    python train.py --config configs/vgg_small_cifar10.py --workdir runs/vgg_small \
        --config.resume_dir=runs/vgg_small
    python train.py --config configs/smoke.py --workdir runs/smoke --config.eval_only=True
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host TPU/GPU).")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from irnet_jax import runtime, trainer

    runtime.configure_runtime(FLAGS.config)  # xla_flags, cpu_devices: before JAX starts its backends
    if FLAGS.distributed:
        jax.distributed.initialize()

    logging.info(
        "JAX %s: process %d/%d, devices %s", jax.__version__, jax.process_index(), jax.process_count(), jax.devices()
    )
    if FLAGS.config.eval_only:
        trainer.evaluate_checkpoint(FLAGS.config, FLAGS.config.resume_dir or FLAGS.workdir)
    else:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
