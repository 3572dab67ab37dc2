#!/usr/bin/env bash
# GPU check for irnet_jax: install, run the tests that matter on a GPU, benchmark VGG-Small and
# ResNet-20 (1w1a at batch 128/256/512, full precision at 512; bfloat16), try what could lift
# ResNet-20's launch-bound batch-128 step (CUDA-graph coverage, steps per call), trace that step.
# Results go to OUT_DIR: devices.txt, tests.txt, bench.jsonl (one JSON row per configuration),
# bench.txt (tables), ablation.jsonl + ablation.txt, trace.jsonl + trace/ (the profiled row and its
# profiler files).
#
#   bash bench/gpu_check.sh [OUT_DIR]          # from the repository root, on a fresh GPU machine
#
# STAGES (default "ablation,rows,trace,fp,tests") picks and orders the stages: ablation = ResNet-20
# 1w1a bf16 batch 128 under XLA command-buffer variants x steps per call; rows = 1w1a rows of both
# nets at BATCHES; trace = profiler trace of ResNet-20's batch-128 step; fp = full-precision rows
# (cost of binarization); tests = the GPU tests.
#
# Install: a machine whose python3 already has CUDA JAX keeps it (pip does not replace a JAX that
# satisfies jax>=0.6); otherwise `jax[cuda12]` is installed. On an offline machine, put wheels of
# the missing packages in .whl/ first (for the benchmark and these tests: ml-collections, clu,
# tensorboardX; optionally optax and orbax-checkpoint to match the tested versions): they are
# installed from there with --no-index and take precedence over the machine's own. Keep the
# machine's flax: it must match its JAX (flax 0.12.8 does not import on JAX 0.11.2).
# Environment: STAGE_SECONDS (cap per stage; FP_STAGE_SECONDS, TRACE_STAGE_SECONDS, TEST_STAGE_SECONDS for those
# stages, ABLATION_SECONDS per ablation variant; ABLATION_CONFIG), BATCHES, STEPS,
# STEPS_PER_CALL (rows: e.g. 1,8; default the config's), LOOP_STEPS (rows: also the training loop's own rate
# on the real dataset, the bench's --loop_steps; default 0: off), TESTS, TEST_XLA_FLAGS; ALLOW_CPU=1 runs it
# without a GPU (to check the script itself). No dataset is needed unless LOOP_STEPS > 0: the benchmark streams
# synthetic uint8 images of CIFAR-10's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
IFS=',' read -ra stages <<< "${STAGES:-ablation,rows,trace,fp,tests}"
for stage in "${stages[@]}"; do  # check them all before spending device time
  case "$stage" in
    ablation|rows|trace|fp|tests) ;;
    *) echo "unknown stage '$stage' in STAGES; valid: ablation, rows, trace, fp, tests" >&2; exit 2 ;;
  esac
done
OUT=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/irnet_site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/irnet_site .whl/*.whl
  export PYTHONPATH="/tmp/irnet_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  python3 -m pip install -q -e '.[test]'
else
  python3 -m pip install -q -e '.[test]' 'jax[cuda12]'
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'PY' 2>&1 | tee "$OUT/devices.txt"
import jax, flax, optax, orbax.checkpoint as ocp
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax", ocp.__version__)
print("backend", jax.default_backend(), jax.devices())
import os
assert jax.default_backend() == "gpu" or os.environ.get("ALLOW_CPU"), "no GPU visible to JAX"
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/devices.txt" || true

# Each stage has a wall-clock cap (STAGE_SECONDS, default 240) so that a slow compile cannot eat a
# short device lease; the most important rows (1w1a, bf16, every batch) run first.
STAGE=${STAGE_SECONDS:-240}
bench() {  # bench CONFIG BINARY BATCHES [SECONDS]
  timeout "${4:-$STAGE}" python3 -m irnet_jax.bench --config "$1" --binary="$2" --dtypes=bfloat16 \
    --batch_size="$3" --eval_batch_size="$3" --steps="${STEPS:-30}" --warmup=5 --output="$OUT/bench.jsonl" \
    ${STEPS_PER_CALL:+--steps_per_call=$STEPS_PER_CALL} --loop_steps="${LOOP_STEPS:-0}" \
    2>&1 | grep -v '^{' | tee -a "$OUT/bench.txt" || echo "BENCH $1 binary=$2 STOPPED" | tee -a "$OUT/bench.txt"
}
BATCHES=${BATCHES:-128,256,512}

stage_rows() {
  bench configs/vgg_small_cifar10.py true "$BATCHES"
  bench configs/resnet20_cifar10.py true "$BATCHES"
  python3 - "$OUT/bench.jsonl" <<'PY' 2>&1 | tee -a "$OUT/bench.txt" || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
goals = {"vgg_small": 25000, "resnet20": 40000}
for r in rows:
    if r["binary"]:
        epoch_s = 50000 / r["train_images_per_second"]
        print(f"{r['model']:<10} batch {r['batch_size']:>4}: {r['train_images_per_second']:>9.0f} train img/s "
              f"({r.get('train_images_per_second_pipelined', 0):.0f} pipelined; goal {goals[r['model']]}), "
              f"200 epochs ~ {200 * epoch_s / 60:.1f} min")
PY
}

# ResNet-20's batch-128 step is launch-bound (BENCHMARKS.md: ~2.8 ms of its 3.6 ms do not scale with the
# batch). XLA records runs of kernels into CUDA graphs ("command buffers"), but by default not
# convolutions (CONVOLUTION) nor while loops (WHILE), so each of the step's ~60 convolutions splits the
# graphs. One process per variant (XLA reads its flags at start; a flag this XLA does not know stops only
# that variant), via the config's xla_flags ("" = XLA's defaults; the other stages use the config's "auto");
# steps_per_call=8 runs 8 steps per device call (lax.scan).
ablate() {  # ablate NAME XLA_FLAGS STEPS_PER_CALL [UNROLL_STEPS]
  echo "== ablation $1: xla_flags='$2' steps_per_call=$3 unroll_steps=${4:-auto}" | tee -a "$OUT/ablation.txt"
  timeout "${ABLATION_SECONDS:-75}" python3 -m irnet_jax.bench --config "${ABLATION_CONFIG:-configs/resnet20_cifar10.py}" \
    --config.xla_flags="$2" --config.unroll_steps="${4:-auto}" --binary=true --dtypes=bfloat16 --batch_size=128 --eval_batch_size=128 \
    --steps="${STEPS:-30}" --warmup=5 --steps_per_call="$3" --loop_steps=0 --output="$OUT/ablation.jsonl" 2>&1 \
    | grep -v '^{' | tail -n 5 | tee -a "$OUT/ablation.txt" || echo "ABLATION $1 STOPPED" | tee -a "$OUT/ablation.txt"
}
stage_ablation() {
  ablate default "" 1,8
  ablate conv_graphs "--xla_gpu_enable_command_buffer=+CONVOLUTION" 1,8
  ablate conv_while_graphs "--xla_gpu_enable_command_buffer=+CONVOLUTION,+WHILE" 8
  ablate conv_graphs_unrolled "--xla_gpu_enable_command_buffer=+CONVOLUTION" 8 on
  ablate no_graphs "--xla_gpu_enable_command_buffer=" 1
  python3 - "$OUT/ablation.jsonl" <<'PY' 2>&1 | tee -a "$OUT/ablation.txt" || true
import json, sys
print(f"{'xla_flags':<58} {'steps/call':>10} {'unrolled':>8} {'train img/s':>11} {'pipelined':>10} {'compile s':>9}")
for r in map(json.loads, open(sys.argv[1])):
    print(f"{r['xla_flags'][-58:]:<58} {r['steps_per_call']:>10} {str(r['unroll_steps']):>8} {r['train_images_per_second']:>11.0f} "
          f"{r['train_images_per_second_pipelined']:>10.0f} {r['compile_seconds']:>9.1f}")
PY
}

# Where ResNet-20's batch-128 step goes: a profiler trace of a few back-to-back steps (TensorBoard /
# Perfetto files under trace/), kernel events and kernel time per step in trace.jsonl. Kernel time
# well below the step time means a launch- or host-bound step. (While profiling, XLA runs kernels one
# by one, without its CUDA graphs, unless --xla_enable_command_buffers_during_profiling=true.)
stage_trace() {
  timeout "${TRACE_STAGE_SECONDS:-$STAGE}" python3 -m irnet_jax.bench --config configs/resnet20_cifar10.py --binary=true \
    --dtypes=bfloat16 --batch_size=128 --eval_batch_size=128 --steps="${STEPS:-30}" --warmup=5 \
    --trace_dir="$OUT/trace" --trace_steps=5 --loop_steps=0 --output="$OUT/trace.jsonl" 2>&1 | grep -v '^{' | tee -a "$OUT/bench.txt" \
    || echo "TRACE STOPPED" | tee -a "$OUT/bench.txt"
}

# The cost of binarization on the GPU: full-precision rows, same harness.
stage_fp() {
  bench configs/vgg_small_cifar10.py false "${BATCHES##*,}" "${FP_STAGE_SECONDS:-$STAGE}"
  bench configs/resnet20_cifar10.py false "${BATCHES##*,}" "${FP_STAGE_SECONDS:-$STAGE}"
}

# Numerics and every topology forward/backward in f32 and bf16 on the GPU; the benchmark harness; S steps in
# one call = S single steps, and no recompilation when lr and EDE (k, t) change. TESTS overrides the list;
# TEST_XLA_FLAGS runs them under extra XLA flags (e.g. a command-buffer setting). The trainer tests named here
# use synthetic arrays: with no prepared data on the machine, TFDS_DATA_DIR points at an empty placeholder.
stage_tests() {
  local data="${TFDS_DATA_DIR:-../shared/data/tensorflow_datasets}"
  [ -d "$data/mnist" ] || { data=/tmp/irnet_no_data; mkdir -p "$data/mnist"; }
  TFDS_DATA_DIR="$data" XLA_FLAGS="${XLA_FLAGS:-} ${TEST_XLA_FLAGS:-}" timeout "${TEST_STAGE_SECONDS:-$STAGE}" \
    python3 -m pytest -q -p no:cacheprovider ${TESTS:-tests/test_trainer.py::test_multi_step_call_equals_single_steps \
    tests/test_trainer.py::test_train_step_does_not_recompile_when_lr_and_ede_change \
    tests/test_binarization.py tests/test_models.py tests/test_bench.py} 2>&1 | tee "$OUT/tests.txt" \
    || echo "TESTS FAILED OR STOPPED" | tee -a "$OUT/tests.txt"
}

for stage in "${stages[@]}"; do "stage_$stage"; done
