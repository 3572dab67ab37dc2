#!/usr/bin/env bash
# Speed side by side on one GPU, interleaved (official, irnet_jax, official): the official IR-Net model
# files in PyTorch (bench/official_gpu.py: the official step, DataParallel, cudnn.benchmark, float32)
# and irnet_jax (python -m irnet_jax.bench: isolated train/eval steps and the training loop's own rate,
# train_and_evaluate over the real dataset), ResNet-20 1w1a and VGG-Small 1w1a, train batch 128,
# eval batch 256, irnet_jax in float32 and bfloat16. Rows go to OUT_DIR/official.jsonl and
# OUT_DIR/ours.jsonl, the machine to OUT_DIR/devices.txt, the printed tables to OUT_DIR/log.txt.
#
#   HARNESS=<irnet_official/run.py> SRC=<extracted htqin/IR-Net> bash bench/gpu_side_by_side.sh OUT_DIR
#
# The loop needs prepared CIFAR-10 under $TFDS_DATA_DIR (any number of training images: the loop's rate
# is per image); LOOP_STEPS (default 585) sets its length, 0 skips it; OFFICIAL_AFTER=0 skips the second
# official round. On an offline machine, wheels
# of the missing packages in .whl/ are installed first (--no-index, into /tmp/irnet_site); keep the
# machine's flax (it must match its JAX).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash bench/gpu_side_by_side.sh OUT_DIR}
: "${HARNESS:?set HARNESS to irnet_official/run.py}" "${SRC:?set SRC to an extracted htqin/IR-Net}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/irnet_site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/irnet_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
  git log -1 --format='commit %H' 2>/dev/null || true
  date -u
} 2>&1 | tee "$OUT/devices.txt"

official() {
  for arch in resnet20_1w1a vgg_small_1w1a; do
    timeout 150 python3 bench/official_gpu.py --harness "$HARNESS" --src "$SRC" --arch "$arch" \
      --json-out "$OUT/official.jsonl" 2>&1 | grep -v -i warning | grep -v kaiming || echo "OFFICIAL $arch STOPPED"
  done
}
ours() {
  for config in irnet_resnet20_1w1a_cifar10 irnet_vgg_small_1w1a_cifar10; do
    timeout 200 python3 -m irnet_jax.bench --config "configs/$config.py" --binary=true --dtypes=float32,bfloat16 \
      --batch_size=128 --eval_batch_size=256 --steps=30 --warmup=5 --loop_steps="${LOOP_STEPS:-585}" \
      --output="$OUT/ours.jsonl" 2>&1 | grep -v '^{' || echo "OURS $config STOPPED"
  done
}
{ official; ours; [ "${OFFICIAL_AFTER:-1}" = 1 ] && official; } 2>&1 | tee "$OUT/log.txt"
