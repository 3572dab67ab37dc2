"""Run in a fresh process with 2 CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``):
the same global batch through the 1-device and the 2-device train step, then a whole 2-device run.
Prints one JSON line. Used by test_multidevice.py (JAX's device count is fixed per process)."""

import json
import sys

import jax
import numpy as np

from configs import mnistnet_mnist
from irnet_jax import mesh as mesh_lib
from irnet_jax import optim, trainer
from irnet_jax.steps import make_train_step
from irnet_jax.train_state import create_train_state


def main(data_dir: str, workdir: str) -> None:
    assert jax.device_count() == 2, jax.devices()
    config = mnistnet_mnist.get_config()
    config.data_dir, config.train_size, config.num_epochs, config.batch_size = data_dir, 1024, 1, 128
    config.eval_batch_size, config.log_every_steps = 1000, 4
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 28, 28, 1), np.uint8)
    labels = rng.integers(0, 10, (512,), np.int32)
    results = {}
    for n in (1, 2):
        mesh = mesh_lib.make_mesh(jax.devices()[:n])
        graphdef, state, tx, _ = create_train_state(config, mesh, 8)
        step = make_train_step(graphdef, tx, config, mesh)
        dev_images, dev_labels = mesh_lib.put_replicated(images, mesh), mesh_lib.put_replicated(labels, mesh)
        losses = []
        for i in range(3):
            idx = mesh_lib.put_batch(np.arange(128 * i, 128 * (i + 1), dtype=np.int32), mesh)
            state, m = step(state, dev_images, dev_labels, idx, optim.estimator_params(config, i, 8), jax.random.key(0))
            losses.append(float(m.compute()["loss"]))
        shardings = {str(x.sharding.spec) for x in jax.tree.leaves(state)}
        results[n] = (jax.device_get(state), losses, shardings, len(idx.sharding.device_set))
    (s1, l1, _, _), (s2, l2, spec2, batch_devices) = results[1], results[2]
    diffs = [
        float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
        for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2))
    ]
    stats1 = jax.tree.leaves(s1.batch_stats)
    summary = trainer.train_and_evaluate(config, workdir)
    print(
        json.dumps(
            {
                "max_abs_param_diff": max(diffs),
                "losses_1": l1,
                "losses_2": l2,
                "state_specs_2": sorted(spec2),
                "batch_devices_2": batch_devices,
                "max_abs_batch_stat": max(float(np.max(np.abs(s))) for s in stats1),
                "run_device_count": summary["device_count"],
                "run_test_accuracy": summary["final_test_accuracy"],
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
