"""End-to-end trainer tests on real MNIST: the smoke run, exact resume (also after SIGTERM),
evaluate-only, and bad inputs that must fail clearly without removing anything on disk."""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import mnistnet_mnist, smoke
from irnet_jax import checkpointing as ckpt
from irnet_jax import data as data_lib
from irnet_jax import mesh as mesh_lib
from irnet_jax import optim, trainer
from irnet_jax.steps import make_multi_step, make_train_step
from irnet_jax.train_state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(tfds_dir, **overrides):
    """The MNIST net on 2,048 training images, 16 steps per epoch, 2 epochs."""
    config = mnistnet_mnist.get_config()
    config.data_dir = tfds_dir
    config.train_size = 2048
    config.batch_size = 128
    config.num_epochs = 2
    config.warmup_epochs = 0.5
    config.log_every_steps = 8
    config.eval_batch_size = 1000
    for k, v in overrides.items():
        setattr(config, k, v)
    return config


def snapshot(root):
    """{relative path: (size, mtime)} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def final_state(config, workdir):
    abstract = create_train_state(config, steps_per_epoch=16).state
    return ckpt.restore_state(workdir, ckpt.find_step(workdir, "latest"), abstract)


def assert_same_state(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def smoke_run(tfds_dir, tmp_path_factory):
    """The README's main job: configs/smoke.py, a real 2-epoch MNIST run."""
    workdir = str(tmp_path_factory.mktemp("smoke"))
    config = smoke.get_config()
    config.data_dir = tfds_dir
    summary = trainer.train_and_evaluate(config, workdir)
    return config, workdir, summary


def test_smoke_run_reaches_accuracy_and_writes_outputs(smoke_run):
    config, workdir, summary = smoke_run
    # Measured 0.984 test / 0.981 validation (seed 0, 2 epochs, CPU); threshold leaves a margin.
    assert summary["final_test_accuracy"] >= 0.97
    assert summary["best_val_accuracy"] >= 0.97
    on_disk = json.load(open(os.path.join(workdir, "summary.json")))
    for key in (
        "final_test_accuracy",
        "best_val_accuracy",
        "epochs_completed",
        "wall_seconds",
        "train_images_per_second",
    ):
        assert key in on_disk, key
    assert on_disk["epochs_completed"] == 2 and 0 <= on_disk["final_test_accuracy"] <= 1
    assert on_disk["train_images_per_second"] > 0
    lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
    assert {"train_loss", "learning_rate", "ede_t", "ede_k", "images_per_second"} <= set(lines[0])
    assert sum("val_accuracy" in l for l in lines) == 2
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    log = open(os.path.join(workdir, "train.log")).read()
    assert "img/s" in log and "ETA" in log and "val acc" in log
    assert on_disk["validation_examples"] == 5000 and "nan" not in log
    png = pathlib.Path(workdir, "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    # In-process, JAX started before the run: a cpu_devices it cannot apply is said, not ignored.
    applied = len(jax.devices("cpu")) == config.cpu_devices
    assert applied != (f"cpu_devices={config.cpu_devices} not applied" in log)
    # Warm-up then cosine: the logged learning rate rises, then falls to ~0.
    lrs = [l["learning_rate"] for l in lines if "learning_rate" in l]
    assert lrs[0] < max(lrs) and lrs[-1] < 1e-6


def test_curves_of_a_workdir_and_a_run_without_matplotlib(smoke_run, tmp_path, monkeypatch):
    from matplotlib import image

    from irnet_jax import curves
    from irnet_jax.metric_writers import MetricWriter

    _, workdir, _ = smoke_run
    path = curves.write_curves(workdir, str(tmp_path / "c.png"))
    assert image.imread(path).shape[:2] == (400, 1800)  # four panels, 18 x 4 inches at 100 dpi
    epochs, values = curves.series(curves.read_metrics(workdir), "val_accuracy")
    assert epochs == [1, 2] and all(0.9 < v <= 1 for v in values)
    train_epochs, _ = curves.series(curves.read_metrics(workdir), "train_loss")
    assert 0 < train_epochs[0] < 1 and train_epochs[-1] == 2
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the import itself fails, as without the package
    writer = MetricWriter(str(tmp_path / "w"))
    trainer._write_curves(str(tmp_path / "w"), writer)
    writer.close()
    assert "matplotlib is not installed" in (tmp_path / "w" / "train.log").read_text()
    assert not (tmp_path / "w" / "curves.png").exists()


def test_no_validation_split_trains_on_everything_and_keeps_the_last_checkpoint(tfds_dir, tmp_path, caplog):
    full = trainer.load_splits(tiny_config(tfds_dir, validation_size=0, train_size=-1))
    assert len(full["train"].labels) == 60000 and len(full["validation"].labels) == 0
    workdir = str(tmp_path / "w")
    with caplog.at_level(logging.WARNING):
        summary = trainer.train_and_evaluate(tiny_config(tfds_dir, validation_size=0), workdir)
    assert not [r for r in caplog.records if "tracked_metric" in r.getMessage()]  # no best-metric warning per save
    assert summary["validation_examples"] == 0 and summary["steps"] == 32
    assert summary["best_val_accuracy"] is None and summary["final_val_accuracy"] is None
    assert summary["best_checkpoint_step"] == 32
    assert summary["best_checkpoint_test_accuracy"] == summary["final_test_accuracy"] > 0.5
    log = open(os.path.join(workdir, "train.log")).read()
    assert "nan" not in log and log.count("no validation split (validation_size=0)") == 2
    assert not any("val_loss" in json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl")))
    result = trainer.evaluate_checkpoint(tiny_config(tfds_dir, validation_size=0), workdir)  # "best": the last
    assert result["checkpoint_step"] == 32 and result["val_accuracy"] is None
    assert result["test_accuracy"] == pytest.approx(summary["final_test_accuracy"], abs=1e-9)


def test_eval_only_reproduces_recorded_accuracy_and_touches_nothing(smoke_run):
    config, workdir, summary = smoke_run
    before = snapshot(workdir)
    config = config.copy_and_resolve_references()
    config.eval_only = True
    config.eval_checkpoint = "best"
    result = trainer.evaluate_checkpoint(config, workdir)
    assert result["val_accuracy"] == pytest.approx(result["recorded_val_accuracy"], abs=1e-9)
    assert result["val_accuracy"] == pytest.approx(summary["best_val_accuracy"], abs=1e-9)
    assert result["test_accuracy"] == pytest.approx(summary["best_checkpoint_test_accuracy"], abs=1e-9)
    assert snapshot(workdir) == before


def test_resume_equals_uninterrupted_run(tfds_dir, tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    s1 = trainer.train_and_evaluate(tiny_config(tfds_dir), straight)
    # Stop mid-epoch (step 20 of 32), then resume in the same workdir.
    trainer.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=20), split)
    s2 = trainer.train_and_evaluate(tiny_config(tfds_dir, resume_dir=split), split)
    assert s1["steps"] == s2["steps"] == 32
    # The resumed run logs step 24 right after its first (compiling, untimed) call: no rate, no 0 img/s.
    assert "(first call: no rate yet)" in open(os.path.join(split, "train.log")).read()
    lines = [json.loads(l) for l in open(os.path.join(split, "metrics.jsonl"))]
    assert all(line.get("images_per_second", 1) > 0 for line in lines)
    assert_same_state(final_state(tiny_config(tfds_dir), straight), final_state(tiny_config(tfds_dir), split))
    assert s1["final_test_accuracy"] == s2["final_test_accuracy"]


def test_sigterm_saves_and_resume_is_exact(tfds_dir, tmp_path):
    """A real process gets SIGTERM mid-run (TPU preemption), checkpoints, exits 0; the resumed run
    ends with the parameters of an uninterrupted one."""
    workdir, straight = str(tmp_path / "preempted"), str(tmp_path / "straight")
    args = [
        sys.executable,
        "train.py",
        "--config",
        "configs/mnistnet_mnist.py",
        "--workdir",
        workdir,
        f"--config.data_dir={tfds_dir}",
        "--config.train_size=2048",
        "--config.num_epochs=6",
        "--config.log_every_steps=1",
        "--config.eval_batch_size=1000",
        # As many devices as the in-process runs below (fixed when this process started JAX, which
        # depends on the tests run before): the same programs, so a bit-exact comparison.
        f"--config.cpu_devices={len(jax.devices())}",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = pathlib.Path(workdir) / "train.log"
    deadline = time.time() + 240
    while time.time() < deadline and not (log.exists() and "step       4/" in log.read_text()):  # 4 per call
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["preempted"] and 4 <= summary["steps"] < 120, summary  # 6 epochs of 20 steps
    config = tiny_config(
        tfds_dir,
        num_epochs=6,
        batch_size=mnistnet_mnist.get_config().batch_size,
        warmup_epochs=0.0,
        log_every_steps=100,
    )
    assert ckpt.find_step(workdir, "latest") == summary["steps"]
    trainer.train_and_evaluate(config.copy_and_resolve_references(), straight)
    config.resume_dir = workdir
    trainer.train_and_evaluate(config, workdir)
    assert_same_state(final_state(config, straight), final_state(config, workdir))


def max_abs_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.mark.parametrize("unroll", ["on", "off"])
def test_multi_step_call_equals_single_steps(tfds_dir, unroll):
    """S steps in one call (lax.scan, rolled or unrolled) = S calls of the single step: the same batches,
    augmentation keys, learning rates and per-step EDE (k, t); metrics over all S steps."""
    config = tiny_config(tfds_dir, batch_size=32, unroll_steps=unroll)
    mesh = mesh_lib.make_mesh()
    rng = np.random.default_rng(0)
    images = mesh_lib.put_replicated(rng.integers(0, 256, (256, 28, 28, 1), np.uint8), mesh)
    labels = mesh_lib.put_replicated(rng.integers(0, 10, (256,), np.int32), mesh)
    order = rng.permutation(256).astype(np.int32)[:128].reshape(4, 32)
    edes = [optim.estimator_params(config, 4 * i, 4) for i in range(4)]  # (k, t) differ per step
    assert len({float(e.t_w) for e in edes}) > 1
    key = jax.random.key(3)

    graphdef, single, tx, _ = create_train_state(config, mesh, 4)
    step = make_train_step(graphdef, tx, config, mesh)
    losses = []
    for i in range(4):
        single, m = step(single, images, labels, mesh_lib.put_batch(order[i], mesh), edes[i], key)
        losses.append(float(m.compute()["loss"]))
    multi = create_train_state(config, mesh, 4).state
    multi, m = make_multi_step(graphdef, tx, config, mesh)(
        multi, images, labels, mesh_lib.put_batch(order, mesh, axis=1), optim.stack_estimator_params(edes), key
    )
    assert int(multi.step) == int(single.step) == 4
    assert int(m.loss.count) == 4 and float(m.compute()["loss"]) == pytest.approx(np.mean(losses), rel=1e-5)
    # Only float summation order may differ (fusions inside the loop body); a wrong batch, key or EDE
    # row moves parameters by >= 1e-2.
    assert max_abs_diff(single.params, multi.params) < 1e-4
    assert max_abs_diff(single.batch_stats, multi.batch_stats) < 1e-4


def test_steps_per_call_run_matches_single_step_run_and_resumes(tfds_dir, tmp_path):
    """A run with 5 steps per call (16 steps per epoch: calls of 5, 5, 5, 1) stopped at step 20 and
    resumed with 3 per call ends where the one-step-per-call run does; logs fall on call boundaries."""
    straight, multi = str(tmp_path / "straight"), str(tmp_path / "multi")
    s1 = trainer.train_and_evaluate(tiny_config(tfds_dir, steps_per_call=1), straight)
    trainer.train_and_evaluate(tiny_config(tfds_dir, steps_per_call=5, num_train_steps=20), multi)
    assert ckpt.find_step(multi, "latest") == 20
    s2 = trainer.train_and_evaluate(tiny_config(tfds_dir, steps_per_call=3, resume_dir=multi), multi)
    assert s1["steps"] == s2["steps"] == 32
    # Throughput leaves out the calls that compile: the first of each size (1 | 5, the tail 1, the run's
    # end 4 | 3).
    assert (s1["train_timed_steps"], s2["train_timed_steps"]) == (31, 9)
    config = tiny_config(tfds_dir)
    assert max_abs_diff(final_state(config, straight).params, final_state(config, multi).params) < 1e-3
    assert s2["final_test_accuracy"] == pytest.approx(s1["final_test_accuracy"], abs=0.01)
    logged = [json.loads(l)["step"] for l in open(os.path.join(multi, "metrics.jsonl")) if "train_loss" in l]
    # log_every_steps=8: the first call ending at or after each multiple of 8, and every run's last step.
    assert logged == [10, 16, 20, 26, 32], logged


def test_train_and_eval_models_compute_popcount_products_on_cpu(tfds_dir):
    """On CPU the train state's model and the eval step's (``eval_graphdef``) compute every 1w1a conv by
    XNOR-popcount (``binary_conv_products="auto"``), the eval graph in evaluation mode, on the same
    parameters and with the train graph's eval logits bit for bit; "float" builds float products."""
    from flax import nnx

    from irnet_jax.layers import BinaryConv
    from irnet_jax.train_state import eval_graphdef

    config = tiny_config(tfds_dir)  # the MNIST net: 1w1a convs of 32 and 64 input channels
    setup = create_train_state(config)
    products = lambda model: [  # noqa: E731
        (m.in_features, m.products) for _, m in nnx.iter_modules(model) if isinstance(m, BinaryConv) and m.is_binary
    ]
    train_model = nnx.merge(setup.graphdef, setup.state.params, setup.state.batch_stats)
    eval_model = nnx.merge(eval_graphdef(config), setup.state.params, setup.state.batch_stats)
    assert products(train_model) == products(eval_model) == [(32, "popcount"), (64, "popcount")]
    assert eval_model.bns[0].use_running_average and not train_model.bns[0].use_running_average
    train_model.eval()
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    np.testing.assert_array_equal(np.asarray(train_model(x)), np.asarray(eval_model(x)))
    config.binary_conv_products = "float"
    assert products(nnx.merge(eval_graphdef(config), setup.state.params, setup.state.batch_stats)) == [
        (32, "float"),
        (64, "float"),
    ]


def test_train_step_does_not_recompile_when_lr_and_ede_change(tfds_dir):
    config = tiny_config(tfds_dir)
    mesh = mesh_lib.make_mesh()
    graphdef, state, tx, _ = create_train_state(config, mesh, 16)
    step_fn = make_train_step(graphdef, tx, config, mesh)
    images = mesh_lib.put_replicated(np.random.default_rng(0).integers(0, 255, (256, 28, 28, 1), np.uint8), mesh)
    labels = mesh_lib.put_replicated(np.arange(256, dtype=np.int32) % 10, mesh)
    key = jax.random.key(0)
    ts = []
    for step in range(4):  # lr warms up (opt_state count); EDE (k, t) changes every epoch
        ede = optim.estimator_params(config, step * 16, 16)
        ts.append(float(ede.t_w))
        idx = mesh_lib.put_batch(np.arange(128, dtype=np.int32) + step, mesh)
        state, _ = step_fn(state, images, labels, idx, ede, key)
    assert len(set(ts)) > 1
    assert step_fn._cache_size() == 1
    multi_fn = make_multi_step(graphdef, tx, config, mesh)
    for call in range(3):  # 2 steps per call; (k, t) of each step change between calls
        edes = [optim.estimator_params(config, (2 * call + i) * 16, 16) for i in range(2)]
        idx = mesh_lib.put_batch(np.arange(256, dtype=np.int32).reshape(2, 128), mesh, axis=1)
        state, _ = multi_fn(state, images, labels, idx, optim.stack_estimator_params(edes), key)
    assert multi_fn._cache_size() == 1


# ------------------------------------------------------------------------------------ bad inputs


def run_cli(*args):
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_unknown_config_field_is_rejected(tmp_path):
    r = run_cli("--config", "configs/smoke.py", "--workdir", str(tmp_path / "w"), "--config.num_epoch=3")
    assert r.returncode != 0 and "num_epoch" in r.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "model",
            "vgg7",
            r"unknown model 'vgg7'; valid: \['alexnet', 'mnistnet', 'resnet18', 'resnet20', 'vgg_small'\]",
        ),
        ("dataset", "imagenet", r"unknown dataset 'imagenet'; valid: \['cifar10', 'mnist'\]"),
        ("optimizer", "lamb", r"unknown optimizer 'lamb'; valid: \['sgd', 'adam', 'adamw'\]"),
        ("estimator", "approx", r"unknown estimator 'approx'; valid: \['ede', 'ie', 'ste'\]"),
        ("augment", "mixup", r"unknown augment 'mixup'; valid: \['default', 'none', 'crop', 'crop_flip'\]"),
        ("crop_padding", -2, r"crop_padding=-2 is not allowed: must be >= 0"),
        ("normalization", "zca", r"unknown normalization 'zca'; valid: \['dataset', 'imagenet'\]"),
        ("steps_per_call", 0, r"steps_per_call must be >= 1 or -1 \(auto\), got 0"),
        ("unroll_steps", "yes", r"unroll_steps must be one of \['auto', 'on', 'off'\], got 'yes'"),
        ("fusion_barriers", "always", r"fusion_barriers must be one of \['auto', 'on', 'off'\], got 'always'"),
        (
            "binary_conv_products",
            "int4",
            r"binary_conv_products must be one of \['auto', 'float', 'int8', 'popcount'\], got 'int4'",
        ),
        (
            "train_ynn_fusions",
            "all",
            r"train_ynn_fusions must be one of \['auto', 'reduce', 'default'\], got 'all'",
        ),
    ],
)
def test_unknown_names_list_valid_ones(tfds_dir, tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        trainer.train_and_evaluate(tiny_config(tfds_dir, **{field: value}), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_missing_data_dir_names_directory(tmp_path):
    config = tiny_config(str(tmp_path / "no_such_dir"))
    with pytest.raises(data_lib.DataError, match=r"no_such_dir.*prepare it"):
        trainer.train_and_evaluate(config, str(tmp_path / "w"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data_lib.DataError, match=r"'mnist' is not prepared in .*empty"):
        trainer.train_and_evaluate(tiny_config(str(empty)), str(tmp_path / "w"))


def test_missing_checkpoint(tfds_dir, tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint directory .*old"):
        trainer.train_and_evaluate(tiny_config(tfds_dir, resume_dir=str(tmp_path / "old")), str(tmp_path / "w"))
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint directory"):
        trainer.evaluate_checkpoint(tiny_config(tfds_dir, eval_only=True), str(tmp_path / "old"))


def test_corrupt_checkpoint_is_a_clear_error_and_nothing_is_removed(smoke_run, tmp_path):
    """Every step's array files overwritten: evaluation names the step, resuming finds no intact step;
    the damaged steps are moved to checkpoints_unreadable/, not deleted."""
    config, workdir, _ = smoke_run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    steps = ckpt.complete_steps(str(copy))
    for step in steps:
        for dirpath, _, files in os.walk(copy / "checkpoints" / str(step) / "state"):
            for f in files:
                pathlib.Path(dirpath, f).write_bytes(b"garbage" * 10)
    before = snapshot(copy)
    config = config.copy_and_resolve_references()
    config.eval_only, config.eval_checkpoint = True, "latest"
    with pytest.raises(ckpt.CheckpointError, match=rf"checkpoint .*checkpoints/{steps[-1]} cannot be restored"):
        trainer.evaluate_checkpoint(config, str(copy))
    assert snapshot(copy) == before
    config.eval_only, config.resume_dir = False, str(copy)
    with pytest.raises(ckpt.CheckpointError, match=r"no intact checkpoint in .*skipped checkpoint step"):
        trainer.train_and_evaluate(config, str(copy))
    after = snapshot(copy)
    assert sorted(after.values()) == sorted(before.values())  # the same files (sizes, times), moved aside
    assert sorted(p.name.split("-")[0] for p in (copy / "checkpoints_unreadable").iterdir()) == sorted(map(str, steps))


def test_checkpoint_of_another_model_is_refused(smoke_run, tmp_path):
    config, workdir, _ = smoke_run
    before = snapshot(workdir)
    other = config.copy_and_resolve_references()
    other.model, other.resume_dir = "vgg_small", workdir
    with pytest.raises(
        ckpt.CheckpointError, match=r"another config \(.*model: checkpoint 'mnistnet' vs config 'vgg_small'"
    ):
        trainer.train_and_evaluate(other, str(tmp_path / "w"))
    other.eval_only = True
    with pytest.raises(ckpt.CheckpointError, match=r"model: checkpoint 'mnistnet' vs config 'vgg_small'"):
        trainer.evaluate_checkpoint(other, other.resume_dir)
    with pytest.raises(ValueError, match=r"eval_only=True: call trainer.evaluate_checkpoint"):
        trainer.train_and_evaluate(other, str(tmp_path / "w"))
    assert snapshot(workdir) == before


def test_fresh_run_into_a_workdir_with_checkpoints_is_refused(smoke_run):
    config, workdir, _ = smoke_run
    before = snapshot(workdir)
    with pytest.raises(
        ckpt.CheckpointError, match=r"already holds checkpoints \(steps \[.*\]\); resume with --config.resume_dir="
    ):
        trainer.train_and_evaluate(config, workdir)
    assert snapshot(workdir) == before
