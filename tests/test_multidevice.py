"""Data parallelism on 2 CPU devices (a fresh process: the device count is fixed at JAX start-up)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_two_device_step_equals_one_device_step(tfds_dir, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "tests/multidevice_check.py", tfds_dir, str(tmp_path / "w")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    # Same global batch of 128 on 1 and on 2 devices: only the summation order of the cross-device
    # reductions (gradient all-reduce, global BatchNorm statistics) and of the convolution kernels
    # differs. Per-device BatchNorm statistics or a missing gradient all-reduce would give differences
    # of order 1e-2 and more. (XLA's own convolution kernels, the train step's since train_ynn_fusions:
    # 3.3e-5 after these 3 steps, as much as between its 1-device step and YNNPACK's; with YNNPACK's
    # kernels 6e-6.)
    assert out["max_abs_param_diff"] < 1e-4, out
    for a, b in zip(out["losses_1"], out["losses_2"]):
        assert abs(a - b) < 1e-5, out
    assert out["batch_devices_2"] == 2 and out["state_specs_2"] == ["P()"]
    assert out["run_device_count"] == 2 and out["run_test_accuracy"] > 0.2, out  # chance: 0.1; 8 steps reach ~0.42


def test_cpu_devices_config_splits_the_cpu(tfds_dir, tmp_path):
    """``--config.cpu_devices=2`` gives a 2-device data-parallel run without any XLA flag. 150 steps:
    with unbounded host run-ahead such runs deadlocked in XLA:CPU's all-reduce within 50 steps."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["TFDS_DATA_DIR"] = tfds_dir
    workdir = tmp_path / "w"
    r = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/smoke.py",
            "--workdir",
            str(workdir),
            "--config.cpu_devices=2",
            "--config.num_train_steps=150",
            "--config.eval_batch_size=1000",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["device_count"] == 2 and summary["backend"] == "cpu", summary
    assert "devices: 2 x cpu" in (workdir / "train.log").read_text()


def test_xla_flags_reach_xla_and_multi_step_calls_run_on_two_devices(tfds_dir, tmp_path):
    """``--config.xla_flags`` is appended to $XLA_FLAGS before JAX starts: here it alone makes the 2 CPU
    devices (``cpu_devices=0``); the run then trains 4 steps per call, each call's [4, B] batch indices
    sharded over both devices."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["TFDS_DATA_DIR"] = tfds_dir
    workdir = tmp_path / "w"
    r = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--config",
            "configs/smoke.py",
            "--workdir",
            str(workdir),
            "--config.cpu_devices=0",
            "--config.xla_flags=--xla_force_host_platform_device_count=2",
            "--config.steps_per_call=4",
            "--config.num_train_steps=40",
            "--config.log_every_steps=10",
            "--config.eval_batch_size=1000",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["device_count"] == 2 and summary["steps"] == 40, summary
    assert summary["final_test_accuracy"] > 0.5, summary  # chance: 0.1


def test_runtime_settings_after_jax_started_are_not_applied():
    import jax

    from irnet_jax import runtime

    jax.devices()  # the backend has started in this process
    have = len(jax.devices("cpu"))
    assert runtime.configure_cpu_devices(have) and runtime.configure_cpu_devices(0)
    assert not runtime.configure_cpu_devices(have + 1)
    assert runtime.configure_xla_flags("") and not runtime.configure_xla_flags("--xla_dump_to=/tmp/never")
    assert "--xla_dump_to=/tmp/never" not in os.environ.get("XLA_FLAGS", "")


RUNTIME_PROBE = """
import json, sys
import jax
from configs import default
from irnet_jax import runtime
config = default.get_config()
config.cpu_devices = 0
config.xla_flags = sys.argv[1]
warnings = runtime.configure_runtime(config)
print(json.dumps({"devices": len(jax.devices()), "warnings": warnings}))
"""


def run_probe(script: str, xla_flags: str, env_flags: str) -> dict:
    """``script``'s last stdout line (JSON), run in a fresh process with ``$XLA_FLAGS=env_flags`` and
    ``xla_flags`` as its argument."""
    env = dict(os.environ, XLA_FLAGS=env_flags, PYTHONPATH=str(REPO))
    r = subprocess.run(
        [sys.executable, "-c", script, xla_flags], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_runtime_probe(xla_flags: str, env_flags: str) -> dict:
    return run_probe(RUNTIME_PROBE, xla_flags, env_flags)


def test_environment_xla_flags_win_over_the_config_and_auto_adds_the_gpu_default():
    """A flag that $XLA_FLAGS sets keeps the environment's value (a warning names both when the config
    asked for another); other config flags are added; "auto" adds AUTO_XLA_FLAGS, silently."""
    out = run_runtime_probe("--xla_force_host_platform_device_count=3", "--xla_force_host_platform_device_count=2")
    assert out["devices"] == 2, out
    assert out["warnings"] == [
        "xla_flags: --xla_force_host_platform_device_count=3 not applied, $XLA_FLAGS sets "
        "--xla_force_host_platform_device_count=2"
    ], out
    out = run_runtime_probe("--xla_force_host_platform_device_count=3", "--xla_cpu_enable_fast_math=false")
    assert out == {"devices": 3, "warnings": []}, out
    assert run_runtime_probe("auto", "--xla_gpu_enable_command_buffer=") == {"devices": 1, "warnings": []}


SCHEDULE_PROBE = """
import json, sys
import jax, jax.numpy as jnp
from configs import default
from irnet_jax import runtime
config = default.get_config()
config.cpu_devices = 0
config.xla_flags = sys.argv[1]
assert runtime.configure_runtime(config) == []

def chains(x):  # 8 independent chains of unfusable sorts, 1 MiB each
    total = 0.0
    for i in range(8):
        a = jnp.sort(x * (i + 1))
        b = jnp.sort(a * 2.0 - x)
        total = total + jnp.sort(b + a).sum()
    return total

compiled = jax.jit(chains).lower(jnp.zeros((1 << 18,), jnp.float32)).compile()
print(json.dumps({"temp_bytes": compiled.memory_analysis().temp_size_in_bytes}))
"""


def test_auto_xla_flags_make_xla_cpu_schedule_depth_first():
    """With ``xla_flags="auto"`` XLA:CPU runs one chain of kernels after another (a chain's results are
    freed before the next starts: ~2 live MiB); with no flags, its breadth-first default starts every
    chain first and keeps all eight live (16 MiB). $XLA_FLAGS naming the flag keeps its value."""

    def temp_bytes(xla_flags: str, env_flags: str = "") -> int:
        return run_probe(SCHEDULE_PROBE, xla_flags, env_flags)["temp_bytes"]

    depth_first, breadth_first = temp_bytes("auto"), temp_bytes("")
    assert depth_first <= 3 * 2**20 and breadth_first >= 8 * 2**20, (depth_first, breadth_first)
    assert temp_bytes("auto", "--xla_cpu_enable_concurrency_optimized_scheduler=true") == breadth_first


def test_xla_flag_helpers_and_auto_values(monkeypatch):
    import jax

    from configs import default
    from irnet_jax import runtime

    jax.devices()  # start the backend first: XLA would stop this process on the made-up flags below
    assert runtime.xla_flag_names("--a=1 --b --a=2") == {"--a": "--a=2", "--b": "--b"}
    config = default.get_config()
    config.cpu_devices = 0  # JAX's own count: nothing to warn about besides the XLA flags
    assert (
        runtime.xla_flags(config)
        == runtime.AUTO_XLA_FLAGS
        == "--xla_gpu_enable_command_buffer=+CONVOLUTION --xla_cpu_enable_concurrency_optimized_scheduler=false"
    )
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_command_buffer= --x=1")
    assert runtime.xla_flags_overridden("--xla_gpu_enable_command_buffer=+CONVOLUTION --x=1 --y=2") == [
        ("--xla_gpu_enable_command_buffer=+CONVOLUTION", "--xla_gpu_enable_command_buffer=")
    ]
    assert runtime.configure_xla_flags("--x=1")  # already in effect: nothing to add, even after JAX started
    assert runtime.configure_runtime(config) == []  # "auto": a default, no warning when it cannot apply
    config.xla_flags = "--y=2"
    assert any("not applied: JAX had already started" in w for w in runtime.configure_runtime(config))
    # The 1w1a convs' products: "auto" = XNOR-popcount on CPU, float elsewhere; "int8" under YNNPACK
    # fusions other than XLA's default (XLA:CPU's int8 conv is slow there) is kept, with a warning.
    config.xla_flags = "auto"
    assert runtime.binary_conv_products(config) == runtime.CPU_BINARY_CONV_PRODUCTS == "popcount"
    config.binary_conv_products = "int8"
    assert runtime.binary_conv_products(config) == "int8"
    int8_warning = (
        "binary_conv_products='int8' with train_ynn_fusions='auto' (or --xla_cpu_experimental_ynn_fusion_type "
        "in $XLA_FLAGS): on CPU, XLA's int8 convolutions are then many times slower than float32 ('popcount' "
        "is not; train_ynn_fusions='default' keeps XLA's fusions)"
    )
    assert [w for w in runtime.configure_runtime(config) if "int8" in w] == [int8_warning]
    config.train_ynn_fusions = "default"
    assert [w for w in runtime.configure_runtime(config) if "int8" in w] == []
    monkeypatch.setenv("XLA_FLAGS", "--x=1 --xla_cpu_experimental_ynn_fusion_type=reduce")
    assert [w for w in runtime.configure_runtime(config) if "int8" in w] == [
        int8_warning.replace("'auto'", "'default'")
    ]
    config.binary_conv_products, config.train_ynn_fusions = "auto", "auto"
    assert runtime.configure_runtime(config) == []
    # The train step's YNNPACK fusions: "auto" = reductions only on CPU (a compile option of that step
    # alone), unless $XLA_FLAGS chooses the fusions itself.
    assert not runtime.train_reduce_fusions_only(config)  # $XLA_FLAGS sets them (above)
    assert runtime.compiler_options(config, "train") == runtime.compiler_options(config, "eval")
    monkeypatch.setenv("XLA_FLAGS", "--x=1")
    assert runtime.train_reduce_fusions_only(config)
    barriers = runtime.KEEP_BARRIERS
    assert runtime.compiler_options(config, "train") == {**barriers, **runtime.YNN_REDUCE_ONLY}
    assert runtime.compiler_options(config, "eval") == barriers
    assert runtime.YNN_REDUCE_ONLY == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    assert runtime.KEEP_BARRIERS == {"xla_disable_hlo_passes": "cse_barrier_expander"}
    config.train_ynn_fusions = "default"
    assert runtime.compiler_options(config, "train") == barriers
    with pytest.raises(ValueError, match=r"step must be one of \['train', 'eval'\], got 'test'"):
        runtime.compiler_options(config, "test")
    config.steps_per_call = -1
    expected = {"cpu": runtime.CPU_STEPS_PER_CALL, "gpu": runtime.GPU_STEPS_PER_CALL, "tpu": 1}
    for backend, steps in expected.items():
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert runtime.steps_per_call(config) == steps, backend
        assert runtime.binary_conv_products(config) == ("popcount" if backend == "cpu" else "float"), backend
