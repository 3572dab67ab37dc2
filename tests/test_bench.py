"""The benchmark command in tiny mode: every row has every field (no timing is asserted), and the
training loop's own rate."""

import gzip
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FIELDS = {
    "model",
    "binary",
    "dtype",
    "batch_size",
    "train_images_per_second",
    "eval_images_per_second",
    "compile_seconds",
    "backend",
    "device_count",
    "peak_host_mb",
    "peak_device_mb",
    "eval_batch_size",
    "train_images_per_second_pipelined",
    "steps_per_call",
    "unroll_steps",
    "binary_conv_products",
    "train_ynn_reduce_only",
    "xla_flags",
}


# One binary float32 row at batch 8, 2 timed steps after 1 warm-up step.
ONE_TINY_ROW = ["--binary=true", "--dtypes=float32", "--batch_size=8", "--eval_batch_size=8", "--steps=2", "--warmup=1"]


def run_bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m irnet_jax.bench --config configs/smoke.py ARGS`` (the loop rate off unless ARGS set it)."""
    loop = [] if any(a.startswith("--loop_steps") for a in args) else ["--loop_steps=0"]
    command = [sys.executable, "-m", "irnet_jax.bench", "--config", "configs/smoke.py", *loop, *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_bench_cli_tiny_mode(tmp_path):
    out = tmp_path / "rows.jsonl"
    r = run_bench(
        "--binary=true,false",
        "--dtypes=bfloat16",  # float32: the other tests' row
        "--batch_size=8,16",
        "--eval_batch_size=8",
        "--steps=2",
        "--warmup=1",
        f"--output={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [(row["binary"], row["dtype"], row["batch_size"]) for row in rows] == [
        (b, "bfloat16", n) for b in (True, False) for n in (8, 16)
    ]
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert row["model"] == "mnistnet" and row["eval_batch_size"] == 8 and row["device_count"] >= 1
        assert row["train_images_per_second"] > 0 and row["eval_images_per_second"] > 0
        assert row["train_images_per_second_pipelined"] > 0
    assert "comparable only within one run on one machine" in r.stdout


def test_bench_steps_per_call_rows_and_the_loop_rate(tmp_path, tfds_dir):
    out = tmp_path / "rows.jsonl"
    r = run_bench(
        *ONE_TINY_ROW,
        "--steps_per_call=1,3",
        "--loop_steps=9",
        f"--config.data_dir={tfds_dir}",
        f"--output={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [row["steps_per_call"] for row in rows] == [1, 3]
    assert all(FIELDS <= set(row) and row["train_images_per_second"] > 0 for row in rows)
    assert rows[1]["unroll_steps"] is True  # "auto" on CPU
    # The training loop itself ran 9 steps per row (calls of 1, and of 3) on real MNIST.
    assert all(row["loop_steps"] == 9 and row["loop_train_images_per_second"] > 0 for row in rows)
    assert [row["loop_timed_steps"] for row in rows] == [8, 6]  # the first call (1, 3 steps) compiles: not timed
    assert all(row["config_overrides"] == [f"--config.data_dir={tfds_dir}"] for row in rows)
    assert "loop img/s" in r.stdout
    bad = run_bench("--steps_per_call=0", timeout=300)
    assert bad.returncode != 0 and "--steps_per_call=[0] must be positive" in bad.stderr


def test_bench_rejects_mismatched_batch_lists():
    r = run_bench("--batch_size=8,16,32", "--eval_batch_size=8,16", timeout=300)
    assert r.returncode != 0 and "--eval_batch_size=[8, 16] must be one positive value or one per" in r.stderr


def test_bench_trace_dir_records_a_trace_and_summarizes_its_kernels(tmp_path):
    out = tmp_path / "rows.jsonl"
    r = run_bench(
        *ONE_TINY_ROW,
        f"--trace_dir={tmp_path / 'trace'}",
        "--trace_steps=2",
        f"--output={out}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = [json.loads(l) for l in out.read_text().splitlines()]
    trace = pathlib.Path(row["trace_path"])
    assert trace.is_file() and trace.name == "perfetto_trace.json.gz"
    assert str(tmp_path / "trace" / "mnistnet_binary_float32_b8") in str(trace)
    assert row["trace_kernel_events_per_step"] > 0 and row["trace_kernel_ms_per_step"] > 0
    assert row["trace_top_kernels"] and all(ms >= 0 for _, ms in row["trace_top_kernels"])


def test_kernel_summary_reads_the_device_stream_timelines(tmp_path):
    """A GPU-shaped trace (built here: no GPU in CI): kernels are the stream timelines' events; the
    device's op and module lines and the host's threads are listed but not counted as kernels."""
    from irnet_jax.profiling import kernel_summary

    meta = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 1, "tid": 10, "name": "thread_name", "args": {"name": "Stream #13(Compute)"}},
        {"ph": "M", "pid": 1, "tid": 11, "name": "thread_name", "args": {"name": "XLA Ops"}},
        {"ph": "M", "pid": 2, "tid": 20, "name": "thread_name", "args": {"name": "python"}},
    ]
    kernels = [{"ph": "X", "pid": 1, "tid": 10, "name": f"fusion_{i % 3}", "ts": 10 * i, "dur": 4} for i in range(30)]
    kernels += [{"ph": "X", "pid": 1, "tid": 10, "name": f"add_fusion.{i}", "ts": 300 + i, "dur": 1} for i in range(9)]
    others = [
        {"ph": "X", "pid": 1, "tid": 11, "name": "fusion.1", "ts": 0, "dur": 100},
        {"ph": "X", "pid": 2, "tid": 20, "name": "PjitFunction", "ts": 0, "dur": 500},
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": meta + kernels + others}, f)
    s = kernel_summary(str(path), steps=2)  # 3 calls
    assert s["trace_kernel_events_per_step"] == 13 and s["trace_kernel_ms_per_step"] == pytest.approx(0.043)
    per_call_of_5 = kernel_summary(str(path), steps=2, steps_per_call=5)  # 3 calls of 5 train steps
    assert per_call_of_5["trace_kernel_events_per_step"] == 2.6 and per_call_of_5[
        "trace_kernel_ms_per_step"
    ] == pytest.approx(0.0086)
    assert [name for name, _ in s["trace_top_kernels"][:3]] == ["fusion_0", "fusion_1", "fusion_2"]
    # the 9 add_fusion.N (1 us each) are one kind of 3 us per step; fusion_K has no .N suffix
    kinds = [("fusion_0", 0.013), ("fusion_1", 0.013), ("fusion_2", 0.013), ("add_fusion", 0.003)]
    assert s["trace_top_kernel_kinds"] == kinds  # ms per step, rounded to 3 decimals
    assert s["trace_timelines"] == {
        "/device:GPU:0 Stream #13(Compute)": [13.0, 0.043],
        "/device:GPU:0 XLA Ops": [0.3, 0.033],
    }


def test_config_overrides_are_the_config_arguments_of_a_command_line():
    from irnet_jax.bench import config_overrides

    args = ["--steps=2", "--config.binary_conv_products", "float", "--config.seed=3", "--config.binary", "--x"]
    assert config_overrides(args) == ["--config.binary_conv_products=float", "--config.seed=3", "--config.binary"]


def test_speed_table_reproduces_a_recorded_side_by_side_run():
    """bench/speed_table.py on the raw lines of BENCHMARKS.md's Zen 4 run (2026-12-06): the official means
    and the ratios that section quotes, rows labelled by what differs between them."""
    from bench import speed_table

    nets = speed_table.read_rows(REPO / "bench/results/2026-12-06_cpu2a_speed_popcount.jsonl")
    assert list(nets) == ["resnet20", "vgg_small"]
    assert nets["resnet20"].official_train == [412.34, 400.49, 390.33] and len(nets["vgg_small"].ours) == 2
    table = speed_table.markdown(nets).splitlines()
    assert len(table) == 2 + 4
    assert table[2].startswith(
        "| ResNet-20 1w1a | 412.3, 400.5, 390.3 (mean 401.1) | 1,591.6, 1,612.2, 1,599.4 (mean 1,601.1) |"
    )
    assert "| binary_conv_products=popcount | 428.6 (1.07x) | 442.1 | 5,410.5 (3.38x) |" in table[2]
    assert "| binary_conv_products=float | 352.5 (0.88x) | 352.6 | 1,589.4 (0.99x) |" in table[3]
    assert "| binary_conv_products=popcount | 50.4 (1.14x) | 50.1 | 436.5 (2.96x) |" in table[4]
    assert "| binary_conv_products=float | 41.6 (0.94x) |" in table[5]


def test_speed_table_labels_rows_by_their_overrides_and_refuses_unknown_rows(tmp_path):
    from bench import speed_table

    official = {"arch": "resnet20_1w1a", "train_img_s": 100.0, "eval_img_s": 400.0}
    ours = {"model": "resnet20", "train_images_per_second": 90.0, "eval_images_per_second": 800.0}
    rows = [official, {**ours, "config_overrides": []}, official, {**ours, "config_overrides": ["--config.seed=1"]}]
    path = tmp_path / "speed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    table = speed_table.markdown(speed_table.read_rows(path)).splitlines()
    assert "| defaults | - | 90.0 | 800.0 (2.00x) |" in table[2]  # no loop rate in these rows
    assert "| --config.seed=1 | - |" in table[3]
    assert speed_table.variant_labels([ours, ours]) == ["run 1", "run 2"]
    path.write_text(json.dumps({"arch": "alexnet", "train_img_s": 1, "eval_img_s": 1}) + "\n")
    r = subprocess.run([sys.executable, "bench/speed_table.py", str(path)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip() == (
        f"speed_table: {path}:1: official arch 'alexnet' is not one of ['resnet20_1w1a', 'vgg_small_1w1a']"
    )
    path.write_text(json.dumps({"model": "resnet20", "eval_images_per_second": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"speed.jsonl:1: the row has no train_images_per_second$"):
        speed_table.read_rows(path)


def test_every_popcount_form_gives_the_int8_convs_sums():
    """bench/popcount_forms.py's forms, each against XLA's int8 conv, with 128 channels: 36 words a
    position, more than one group of 31 byte counts (SWAR) and of 31 bytes (uint8 lanes), on random
    signs and on signs whose every XOR bit is set (a group of 32 would overflow its bytes)."""
    import jax.numpy as jnp
    import numpy as np

    from bench import popcount_forms
    from irnet_jax import sign_conv

    rng = np.random.default_rng(0)
    x = jnp.asarray(np.where(rng.standard_normal((2, 5, 5, 128)) >= 0, 1.0, -1.0), jnp.float32)
    w = jnp.asarray(np.where(rng.standard_normal((3, 3, 128, 8)) >= 0, 1.0, -1.0), jnp.float32)
    mismatched = (jnp.ones_like(x), -jnp.ones_like(w))  # every bit of every XOR set: the largest counts
    assert len(popcount_forms.FORMS) == 6
    for signs, weights in [(x, w), mismatched]:
        expected = np.asarray(sign_conv.int8_sums(signs, weights, 1, 1))
        for name, form in popcount_forms.FORMS.items():
            np.testing.assert_array_equal(np.asarray(form(signs, weights)), expected, err_msg=name)
