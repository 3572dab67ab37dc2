"""Faults and mistakes: every bad command line is one line and exit 2 with nothing on disk changed, a
diverging run stops without saving, ``resume_dir=auto`` and stray or damaged checkpoints never strand a
run, and one run never resumes into another's workdir."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_trainer import snapshot, tiny_config  # the MNIST net on 2,048 images; {file: (size, mtime)}

from irnet_jax import checkpointing as ckpt
from irnet_jax import trainer
from irnet_jax.errors import ConfigError, Diverged
from irnet_jax.export.pipeline import check_arguments
from irnet_jax.train_state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]


def params_of(config, workdir, step):
    abstract = create_train_state(config, steps_per_epoch=16).state
    return ckpt.restore_state(str(workdir), step, abstract).params


def assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def finished_run(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    config = tiny_config(tfds_dir)
    summary = trainer.train_and_evaluate(config, str(workdir))
    return config, workdir, summary


# ------------------------------------------------------------------- one line, exit 2, nothing changed

SMOKE = ["--config=configs/smoke.py", "--config.train_size=256"]
CLI_CASES = [
    # (name, command after the program, expected fragment of the one error line)
    ("unknown field", [*SMOKE, "--config.num_epoch=3"], "unknown config field 'num_epoch'"),
    ("wrong type", [*SMOKE, "--config.num_epochs=abc"], "--config.num_epochs=abc"),
    ("missing config file", ["--config=configs/nope.py"], "configs/nope.py"),
    ("negative batch", [*SMOKE, "--config.batch_size=-4"], "batch_size=-4 is not allowed: must be >= 1"),
    ("zero eval batch", [*SMOKE, "--config.eval_batch_size=0"], "eval_batch_size=0 is not allowed"),
    ("zero epochs", [*SMOKE, "--config.num_epochs=0"], "num_epochs=0 is not allowed: must be > 0"),
    ("nan learning rate", [*SMOKE, "--config.learning_rate=nan"], "learning_rate=nan is not allowed"),
    ("negative learning rate", [*SMOKE, "--config.learning_rate=-0.1"], "learning_rate=-0.1 is not allowed"),
    ("zero log interval", [*SMOKE, "--config.log_every_steps=0"], "log_every_steps=0 is not allowed"),
    ("zero t_min", [*SMOKE, "--config.t_min=0"], "t_min=0.0 is not allowed: must be > 0"),
    ("t_max below t_min", [*SMOKE, "--config.t_max=0.01"], "t_max=0.01 must be >= t_min="),
    ("zero keep", [*SMOKE, "--config.keep_checkpoints=0"], "keep_checkpoints=0 is not allowed"),
    ("odd batch on 2 devices", [*SMOKE, "--config.batch_size=127"], "multiples of the device count 2"),
    ("too many devices", [*SMOKE, "--config.cpu_devices=100000"], "cpu_devices=100000 is not allowed"),
    (
        "fixed-point stream on a net without one",
        [*SMOKE, "--config.residual_frac_bits=16"],
        "residual_frac_bits > 0 applies to the ResNets (a residual stream), not 'mnistnet'",
    ),
    ("fixed-point stream too wide", [*SMOKE, "--config.residual_frac_bits=23"], "residual_frac_bits=23 is not allowed"),
    (
        "integer first layer on a binary first layer",
        [*SMOKE, "--config.integer_first_layer=True", "--config.binary_first_layer=True"],
        "integer_first_layer does not apply to a binary first layer",
    ),
    ("unknown pad", [*SMOKE, "--config.pad_value=two"], "unknown pad_value 'two'; valid: ['zero'"),
    ("unknown model", [*SMOKE, "--config.model=vgg7"], "unknown model 'vgg7'; valid:"),
    ("unknown norm", [*SMOKE, "--config.norm=layernorm"], "unknown norm 'layernorm'; valid:"),
    ("unknown eval checkpoint", [*SMOKE, "--config.eval_checkpoint=first"], "eval_checkpoint must be 'best'"),
    ("validation too large", [*SMOKE, "--config.validation_size=70000"], "validation_size=70000 must be in [0, 60000)"),
    ("batch larger than data", [*SMOKE, "--config.batch_size=512"], "batch_size=512 exceeds the 256 training examples"),
    (
        "missing data dir",
        [*SMOKE, "--config.data_dir=/nonexistent/tfds"],
        "data dir '/nonexistent/tfds' does not exist",
    ),
    ("resume from nothing", [*SMOKE, "--config.resume_dir=/nonexistent/run"], "no checkpoint directory"),
    ("eval of nothing", [*SMOKE, "--config.eval_only=True", "--config.resume_dir=/nonexistent/run"], "no checkpoint"),
    ("positional argument", [*SMOKE, "extra"], "unexpected arguments ['extra']"),
]


def run_command(argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(r, fragment, prog="train.py"):
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert last.startswith(f"{prog}: error: ") and fragment in last, last


@pytest.mark.parametrize("name,argv,fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_train_mistakes_are_one_line_and_change_nothing(tmp_path, name, argv, fragment):
    workdir = tmp_path / "w"
    r = run_command([str(REPO / "train.py"), *argv, f"--workdir={workdir}"], cwd=REPO)
    assert_one_line_error(r, fragment)
    assert not workdir.exists()


def test_bad_workdirs_are_refused(tmp_path, finished_run):
    config, workdir, _ = finished_run
    a_file = tmp_path / "file"
    a_file.write_text("x")
    r = run_command([str(REPO / "train.py"), *SMOKE, f"--workdir={a_file}"], cwd=REPO)
    assert_one_line_error(r, f"workdir {a_file} is a file")
    r = run_command([str(REPO / "train.py"), *SMOKE, "--workdir="], cwd=REPO)
    assert_one_line_error(r, "workdir is empty")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root ignores permissions
        r = run_command([str(REPO / "train.py"), *SMOKE, f"--workdir={locked / 'run'}"], cwd=REPO)
        assert_one_line_error(r, "cannot be written")
    before = snapshot(workdir)
    r = run_command([str(REPO / "train.py"), *SMOKE, f"--workdir={workdir}"], cwd=REPO)
    assert_one_line_error(r, "already holds checkpoints")
    assert snapshot(workdir) == before


def test_export_and_bench_mistakes_are_one_line(tmp_path, finished_run):
    _, workdir, _ = finished_run
    export = ["-m", "irnet_jax.export", f"--checkpoint={workdir}"]
    prog = "python -m irnet_jax.export"
    r = run_command([*export, f"--out={tmp_path / 'e'}", "--num_images=-1"], cwd=REPO)
    assert_one_line_error(r, "num_images=-1 is not allowed", prog)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("keep me")
    r = run_command([*export, f"--out={tmp_path / 'full'}"], cwd=REPO)
    assert_one_line_error(r, "already exists and is not an empty folder", prog)
    assert (tmp_path / "full" / "old.txt").read_text() == "keep me"
    r = run_command(["-m", "irnet_jax.export", f"--checkpoint={tmp_path / 'nope'}", f"--out={tmp_path / 'e'}"], REPO)
    assert_one_line_error(r, "has no config.json", prog)
    r = run_command([*export, f"--out={tmp_path / 'e'}", "--formats=onnx,tflite"], REPO)
    assert_one_line_error(r, "formats='onnx,tflite' is not allowed: choose from ['onnx', 'qonnx']", prog)
    r = run_command([*export, f"--out={tmp_path / 'e'}", "--frac_bits=30"], REPO)
    assert_one_line_error(r, "frac_bits=30 is not allowed: must be 0 (the model's own, else 24) or in [1, 26]", prog)
    with pytest.raises(ConfigError, match=r"^finn_images=-1 is not allowed: must be >= 0"):
        check_arguments(str(tmp_path / "e"), 4, 10, 0, 0, finn_images=-1)  # the CLI's check, in process
    assert not (tmp_path / "e").exists()
    r = run_command(["-m", "irnet_jax.bench", "--config=configs/smoke.py", "--binary=maybe"], REPO)
    assert_one_line_error(r, "--binary takes true/false values, got 'maybe'", "python -m irnet_jax.bench")


# ------------------------------------------------------------------------------------------ divergence


def test_a_diverging_run_stops_and_saves_nothing(tfds_dir, tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(
        Diverged, match=r"train loss became nan in steps 1\.\.8 \(learning rate .*last good checkpoint: none"
    ):
        trainer.train_and_evaluate(tiny_config(tfds_dir, learning_rate=3e38), str(workdir))
    assert ckpt.complete_steps(str(workdir)) == []
    assert "stopped: the train loss became nan" in (workdir / "train.log").read_text()


def test_divergence_after_a_checkpoint_names_it_and_saves_nothing_new(tfds_dir, tmp_path, finished_run):
    """A checkpoint at step 16 whose classifier holds a NaN (saved with valid checksums): the resumed
    run's loss is NaN in its first log interval, it stops naming step 16, and saves nothing."""
    config, done, _ = finished_run
    workdir = tmp_path / "w"
    setup = create_train_state(config, steps_per_epoch=16)
    state = ckpt.restore_state(str(done), 16, setup.state)
    poisoned = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(np.nan) if a.ndim == 2 else a, state.params)
    manager = ckpt.open_manager(str(workdir))
    ckpt.save(manager, 16, state._replace(params=poisoned), ckpt.read_meta(str(done), 16), None)
    manager.close()
    resumed = tiny_config(tfds_dir, resume_dir=str(workdir))
    with pytest.raises(Diverged, match=r"became nan in steps 17\.\.24 .*last good checkpoint: step 16"):
        trainer.train_and_evaluate(resumed, str(workdir))
    assert ckpt.complete_steps(str(workdir)) == [16]


# --------------------------------------------------------------------- resume=auto, stray, damaged, other


def test_resume_auto_starts_fresh_then_resumes_and_ignores_stray_folders(tfds_dir, tmp_path, finished_run):
    config, done, summary = finished_run
    workdir = tmp_path / "w"
    # What a SIGKILL during the first save leaves, and a folder a user made: neither is a checkpoint.
    (workdir / "checkpoints" / "16.orbax-checkpoint-tmp-1700000000").mkdir(parents=True)
    (workdir / "checkpoints" / "notes").mkdir()
    auto = tiny_config(tfds_dir, resume_dir="auto", num_train_steps=16)
    first = trainer.train_and_evaluate(auto, str(workdir))
    assert first["steps"] == 16 and ckpt.complete_steps(str(workdir)) == [16]
    auto.num_train_steps = -1
    second = trainer.train_and_evaluate(auto, str(workdir))  # resumes: the same command, unchanged
    assert second["steps"] == 32
    assert_same(params_of(config, workdir, 32), params_of(config, done, 32))
    assert (workdir / "checkpoints" / "notes").is_dir()  # nothing it cannot read is removed
    before = snapshot(workdir)
    third = trainer.train_and_evaluate(auto, str(workdir))  # finished: nothing to do, nothing changed
    assert third == json.loads((workdir / "summary.json").read_text())
    assert snapshot(workdir) == before


def test_a_run_is_not_resumed_into_another_runs_workdir(tfds_dir, tmp_path, finished_run):
    _, done, _ = finished_run
    other = tmp_path / "other"
    trainer.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=16), str(other))
    before = snapshot(other)
    with pytest.raises(ckpt.CheckpointError, match="holds another run's checkpoints"):
        trainer.train_and_evaluate(tiny_config(tfds_dir, resume_dir=str(done)), str(other))
    assert snapshot(other) == before


def test_a_damaged_latest_checkpoint_is_detected_set_aside_and_the_run_resumes(tfds_dir, tmp_path, finished_run):
    """Step 32's arrays replaced by step 16's (readable files, wrong content: only the checksums
    recorded at save can tell): resume skips it, moves it aside, and retrains to the same result."""
    config, done, _ = finished_run
    workdir = tmp_path / "w"
    shutil.copytree(done, workdir)
    state_32 = workdir / "checkpoints" / "32" / "state"
    shutil.rmtree(state_32)
    shutil.copytree(workdir / "checkpoints" / "16" / "state", state_32)
    resumed = tiny_config(tfds_dir, resume_dir=str(workdir))
    with pytest.raises(ckpt.DamagedCheckpoint, match=r"does not match its recorded checksum"):
        trainer.evaluate_checkpoint(tiny_config(tfds_dir, eval_checkpoint="latest"), str(workdir))
    summary = trainer.train_and_evaluate(resumed, str(workdir))
    assert summary["steps"] == 32
    log = (workdir / "train.log").read_text()
    assert "skipped checkpoint step 32" in log and "does not match its recorded checksum" in log
    aside = list((workdir / "checkpoints_unreadable").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("32-")
    assert_same(params_of(config, workdir, 32), params_of(config, done, 32))


def test_a_checkpoint_of_another_structure_is_refused(tfds_dir, tmp_path, finished_run):
    """A checkpoint whose arrays are not this model's (an extra array, same config) is not loaded."""
    config, done, _ = finished_run
    workdir = tmp_path / "w"
    setup = create_train_state(config, steps_per_epoch=16)
    meta = ckpt.read_meta(str(done), 32)
    manager = ckpt.open_manager(str(workdir))
    ckpt.save(manager, 32, {"state": setup.state, "extra": np.zeros(3, np.float32)}, meta, None)
    manager.close()
    with pytest.raises(ckpt.CheckpointError):
        trainer.evaluate_checkpoint(tiny_config(tfds_dir, eval_checkpoint="latest"), str(workdir))


def test_sigterm_during_start_up_exits_0_without_training(tfds_dir, tmp_path):
    """SIGTERM while train.py is still importing: remembered, answered like a preemption (exit 0)."""
    import signal
    import time

    workdir = tmp_path / "w"
    env = dict(os.environ, PYTHONPATH=str(REPO), TFDS_DATA_DIR=tfds_dir)
    env.pop("XLA_FLAGS", None)
    p = subprocess.Popen(
        [sys.executable, "train.py", *SMOKE, f"--workdir={workdir}"], cwd=REPO, env=env, stderr=subprocess.PIPE
    )
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-2000:]
    assert ckpt.complete_steps(str(workdir)) == []
    assert json.loads((workdir / "summary.json").read_text())["preempted"] is True
