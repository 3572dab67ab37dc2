"""Train or evaluate an IR-Net binary network.

    python train.py --config configs/vgg_small_cifar10.py --workdir runs/vgg_small
    python train.py --config configs/vgg_small_cifar10.py --workdir runs/vgg_small \
        --config.resume_dir=runs/vgg_small          # or --config.resume_dir=auto: resume if possible
    python train.py --config configs/smoke.py --workdir runs/smoke --config.eval_only=True

A mistake in the command line or the config is one line on stderr and exit status 2; a run whose loss
becomes NaN stops with exit status 3 (``irnet_jax.cli``). Several processes (one per host; README
"Multi-host training"): ``--distributed``, with ``--coordinator_address``, ``--num_processes`` and
``--process_id`` where the cluster does not set them (on a TPU pod slice JAX finds them itself).
"""

import signal

# Before anything heavy is imported: a SIGTERM during start-up is remembered, and the trainer then
# exits 0 without training (irnet_jax.preemption) instead of dying with status 143.
SIGTERM_BEFORE_TRAINING: list = []
signal.signal(signal.SIGTERM, lambda *_: SIGTERM_BEFORE_TRAINING.append(True))

from absl import flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from irnet_jax import cli, preemption  # noqa: E402

preemption.EARLY_REQUESTS = SIGTERM_BEFORE_TRAINING

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (one process per host).")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (--distributed; '' = JAX's cluster detection).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (--distributed; 0 = JAX's cluster detection).")
flags.DEFINE_integer("process_id", -1, "This process's index (--distributed; -1 = JAX's cluster detection).")
flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "--distributed: a process silent this long stops the run.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    import jax

    from irnet_jax import distributed, runtime, trainer

    runtime.configure_runtime(FLAGS.config)  # xla_flags, cpu_devices: before JAX starts its backends
    if FLAGS.distributed:
        distributed.initialize(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.heartbeat_timeout_seconds
        )
    logging.info(
        "JAX %s: process %d/%d, devices %s", jax.__version__, jax.process_index(), jax.process_count(), jax.devices()
    )
    if FLAGS.config.eval_only:
        trainer.evaluate_checkpoint(FLAGS.config, FLAGS.config.resume_dir or FLAGS.workdir)
    else:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, "train.py")
