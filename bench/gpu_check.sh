#!/usr/bin/env bash
# GPU check for irnet_jax: install, run the tests that matter on a GPU, benchmark VGG-Small and
# ResNet-20 (1w1a and full precision, bfloat16) at batch 128/256/512. Results go to OUT_DIR:
# devices.txt, tests.txt, bench.jsonl (one JSON row per configuration), bench.txt (tables).
#
#   bash bench/gpu_check.sh [OUT_DIR]          # from the repository root, on a fresh GPU machine
#
# Install: a machine whose python3 already has CUDA JAX keeps it (pip does not replace a JAX that
# satisfies jax>=0.6); otherwise `jax[cuda12]` is installed. On an offline machine, put wheels of
# the missing packages (tensorflow-datasets, ml-collections, clu, tensorboardX, array-record and
# their needs) in .whl/ first: they are installed from there with --no-index.
# No dataset is needed: the benchmark streams synthetic uint8 images of CIFAR-10's shape.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/irnet_site .whl/*.whl
  export PYTHONPATH="/tmp/irnet_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
elif python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  python3 -m pip install -q -e '.[test]'
else
  python3 -m pip install -q -e '.[test]' 'jax[cuda12]'
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python3 - <<'PY' 2>&1 | tee "$OUT/devices.txt"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print("backend", jax.default_backend(), jax.devices())
assert jax.default_backend() == "gpu", "no GPU visible to JAX"
PY

# Numerics and every topology forward/backward in f32 and bf16, on the GPU; the benchmark harness.
python3 -m pytest -q -p no:cacheprovider tests/test_binarization.py tests/test_models.py tests/test_bench.py \
  2>&1 | tee "$OUT/tests.txt" || echo "TESTS FAILED" | tee -a "$OUT/tests.txt"

for model in vgg_small resnet20; do
  for bs in 128 256 512; do
    python3 -m irnet_jax.bench --config "configs/${model}_cifar10.py" --binary=true,false --dtypes=bfloat16 \
      --batch_size="$bs" --eval_batch_size="$bs" --steps=50 --warmup=5 --output="$OUT/bench.jsonl" \
      2>&1 | grep -v '^{' | tee -a "$OUT/bench.txt"
  done
done
python3 - "$OUT/bench.jsonl" <<'PY' | tee -a "$OUT/bench.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
goals = {"vgg_small": 25000, "resnet20": 40000}
for r in rows:
    if r["binary"]:
        epoch_s = 50000 / r["train_images_per_second"]
        print(f"{r['model']:<10} batch {r['batch_size']:>4}: {r['train_images_per_second']:>9.0f} train img/s "
              f"(goal {goals[r['model']]}), 200 epochs ~ {200 * epoch_s / 60:.1f} min")
PY
