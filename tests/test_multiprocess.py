"""Multi-process training on one machine: 2 processes of ``train.py`` on 127.0.0.1 (gloo CPU
collectives, one CPU device each) against 1 process with 2 CPU devices: the same global batch, data
order and device count, so only the summation order of the cross-device reductions may differ."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import mnistnet_mnist
from irnet_jax import checkpointing as ckpt
from irnet_jax.train_state import create_train_state

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--config=configs/mnistnet_mnist.py",
    "--config.train_size=2048",
    "--config.num_epochs=2",
    "--config.warmup_epochs=0.5",
    "--config.log_every_steps=8",
    "--config.eval_batch_size=1000",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(tfds_dir):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return {**env, "TFDS_DATA_DIR": tfds_dir, "PYTHONPATH": str(REPO)}


def start_processes(tfds_dir, workdir, n, *extra, heartbeat=100):
    port = free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "train.py",
                *TINY,
                f"--workdir={workdir}",
                "--config.cpu_devices=1",
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={n}",
                f"--process_id={i}",
                f"--heartbeat_timeout_seconds={heartbeat}",
                *extra,
            ],
            cwd=REPO,
            env=environment(tfds_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(n)
    ]


def finish(processes, timeout=600):
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    return [p.returncode for p in processes], outputs


def run_single(tfds_dir, workdir, *extra):
    r = subprocess.run(
        [sys.executable, "train.py", *TINY, f"--workdir={workdir}", "--config.cpu_devices=2", *extra],
        cwd=REPO,
        env=environment(tfds_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]


def latest_state(workdir):
    config = mnistnet_mnist.get_config()
    abstract = create_train_state(config).state
    step = ckpt.find_step(str(workdir), "latest")
    return step, ckpt.restore_state(str(workdir), step, abstract)


def max_param_difference(a, b):
    import jax

    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.fixture(scope="module")
def runs(tfds_dir, tmp_path_factory):
    """A 2-process run, the 1-process reference, and each one resumed by the other kind."""
    root = tmp_path_factory.mktemp("multiprocess")
    codes, outputs = finish(start_processes(tfds_dir, root / "two", 2))
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    run_single(tfds_dir, root / "one")
    # Stopped after one epoch by one kind, finished by the other.
    codes, outputs = finish(start_processes(tfds_dir, root / "two_then_one", 2, "--config.num_train_steps=20"))
    assert codes == [0, 0], outputs[0][-3000:]
    run_single(tfds_dir, root / "two_then_one", f"--config.resume_dir={root / 'two_then_one'}")
    run_single(tfds_dir, root / "one_then_two", "--config.num_train_steps=20")
    codes, outputs = finish(start_processes(tfds_dir, root / "one_then_two", 2, "--config.resume_dir=auto"))
    assert codes == [0, 0], outputs[0][-3000:]
    return root, outputs


def test_two_processes_train_what_one_process_trains(runs):
    root, _ = runs
    step_two, two = latest_state(root / "two")
    step_one, one = latest_state(root / "one")
    assert step_two == step_one == 40
    # Same data, same order, same global batch: only the all-reduce summation order differs (gloo
    # between processes vs XLA:CPU's in-process all-reduce). Per-process BatchNorm statistics, a missing
    # gradient all-reduce or another data order would differ by 1e-2 and more.
    assert max_param_difference(two.params, one.params) < 1e-4
    s2 = json.loads((root / "two" / "summary.json").read_text())
    s1 = json.loads((root / "one" / "summary.json").read_text())
    assert s2["device_count"] == s1["device_count"] == 2
    assert abs(s2["final_test_accuracy"] - s1["final_test_accuracy"]) < 0.01


def test_only_process_zero_writes_and_each_feeds_its_own_shard(runs):
    root, outputs = runs
    log = (root / "two" / "train.log").read_text()
    assert log.count("devices: 2 x cpu (2 process(es))") == 1  # one writer: no line twice
    rows = [json.loads(line) for line in (root / "two" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train_loss" in r]
    assert steps == sorted(set(steps))
    assert ckpt.complete_steps(str(root / "two")) == [20, 40]
    assert "[Gloo] Rank 1" in outputs[1] and "test: loss" not in outputs[1]  # process 1 logs nothing of the run
    # Each process builds only its own half of every global batch (mesh.put_batch): checked by the
    # per-process shard count the multi-process step reports.
    assert "local batch shards 1 of 2" in outputs[0] and "local batch shards 1 of 2" in outputs[1]


def test_checkpoints_move_between_process_counts(runs):
    root, _ = runs
    _, reference = latest_state(root / "one")
    for name in ("two_then_one", "one_then_two"):
        step, state = latest_state(root / name)
        assert step == 40
        assert max_param_difference(state.params, reference.params) < 1e-4, name


def test_a_killed_process_stops_the_others(tfds_dir, tmp_path):
    """Kill process 1 after its first checkpoint; process 0 must exit with an error (not hang), and the
    run resumes from that checkpoint to the end."""
    workdir = tmp_path / "w"
    processes = start_processes(tfds_dir, workdir, 2, "--config.num_epochs=6", heartbeat=10)
    deadline = time.time() + 300
    while not ckpt.complete_steps(str(workdir)) and time.time() < deadline:
        time.sleep(0.5)
    assert ckpt.complete_steps(str(workdir)), "no checkpoint within 300 s"
    processes[1].send_signal(signal.SIGKILL)
    codes, outputs = finish(processes, timeout=180)  # a hang would raise TimeoutExpired here
    assert codes[0] != 0, outputs[0][-2000:]
    run_single(tfds_dir, workdir, "--config.num_epochs=6", "--config.resume_dir=auto")
    assert ckpt.complete_steps(str(workdir))[-1] == 120
