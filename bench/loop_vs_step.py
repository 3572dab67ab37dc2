"""Where the training loop's rate could part from the isolated step's (issue 14), one cause at a time,
in one process: the benchmark's compiled call on its synthetic 1,024 images (A), the same step on the
real training split (B), a bare loop with the training loop's host work (batch indices and EDE put
every call, metrics merged, ``DispatchWindow``; also without the merge, and with fixed inputs) (C),
and ``trainer.train_and_evaluate`` itself (D).

    PYTHONPATH=. python bench/loop_vs_step.py --cfg configs/irnet_resnet20_1w1a_cifar10.py

Prints one JSON object of images/s per part (batch 128, the config's steps per call).
"""

from __future__ import annotations

import json
import tempfile
import time

import jax
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("cfg", "configs/irnet_resnet20_1w1a_cifar10.py", "Training config.")
flags.DEFINE_integer("loop_steps", 160, "Steps of part D's train_and_evaluate run.")

BATCH = 128


def main(_) -> None:
    from irnet_jax import runtime

    runtime.configure_runtime(FLAGS.cfg)
    from irnet_jax import bench, optim, timing, trainer
    from irnet_jax import data as data_lib
    from irnet_jax import mesh as mesh_lib
    from irnet_jax.steps import TrainMetrics

    c = FLAGS.cfg.copy_and_resolve_references()
    c.batch_size, c.validation_size = BATCH, 0
    spc = c.steps_per_call = runtime.steps_per_call(c)
    run = bench.synthetic_run(c, BATCH, 256, spc)
    mesh = run.images.sharding.mesh
    out: dict = {"steps_per_call": spc, "devices": jax.device_count(), "cpu": jax.devices()[0].device_kind}
    calls = [0]

    def step(images, labels, idx=None, ede=None):
        calls[0] += 1
        idx = run.orders[calls[0] % 4] if idx is None else idx
        run.state, m = run.train_steps(run.state, images, labels, idx, run.ede if ede is None else ede, run.key)
        return m

    def rate(seconds_per_call: float) -> float:
        return BATCH * spc / seconds_per_call

    out["A_synthetic"] = rate(timing.median_seconds(lambda: step(run.images, run.labels), 10, 2))
    out["A_synthetic_pipelined"] = rate(timing.pipelined_seconds(lambda: step(run.images, run.labels), 20))
    split = trainer.load_splits(c)["train"]
    train = mesh_lib.put_split(split, mesh)
    out["B_real_data"] = rate(timing.median_seconds(lambda: step(*train), 10, 2))
    out["B_real_data_pipelined"] = rate(timing.pipelined_seconds(lambda: step(*train), 20))

    plan = trainer.make_plan(c, len(split.labels))
    order = data_lib.epoch_permutation(len(split.labels), c.seed, 0)
    merge = jax.jit(TrainMetrics.merge)

    def host_loop(n_calls: int, merge_metrics: bool = True, host_inputs: bool = True) -> float:
        metrics, window = None, timing.DispatchWindow()
        jax.block_until_ready(run.state.step)
        t = time.perf_counter()
        for i in range(n_calls):
            if host_inputs:
                idx = mesh_lib.put_batch(plan.batch_indices(order, i * spc, spc), mesh, axis=1)
                m = step(*train, idx, optim.estimator_params_of_steps(c, i * spc, spc, plan.steps_per_epoch))
            else:
                m = step(*train)
            if merge_metrics:
                metrics = m if metrics is None else merge(metrics, m)
            window.add(m)
        window.drain()
        return rate((time.perf_counter() - t) / n_calls)

    host_loop(3)
    out["C_host_loop"] = host_loop(20)
    out["C_host_loop_no_merge"] = host_loop(20, merge_metrics=False)
    out["C_host_loop_fixed_inputs"] = host_loop(20, host_inputs=False)
    d = FLAGS.cfg.copy_and_resolve_references()
    d.num_train_steps, d.validation_size, d.log_every_steps, d.resume_dir = FLAGS.loop_steps, 0, FLAGS.loop_steps, ""
    with tempfile.TemporaryDirectory() as workdir:
        out["D_train_and_evaluate"] = trainer.train_and_evaluate(d, workdir)["train_images_per_second"]
    print(json.dumps(out))


if __name__ == "__main__":
    app.run(main)
