#!/usr/bin/env bash
# Speed side by side on this CPU (issue 14): the official IR-Net model files in PyTorch (the harness
# ../shared/reference/irnet_official/run.py, 2 threads, float32) and irnet_jax (python -m irnet_jax.bench:
# the isolated train/eval steps and the training loop's own rate), interleaved per network as
#
#   official, irnet_jax defaults, official, irnet_jax $VARIANT, official
#
# for ResNet-20 1w1a, then VGG-Small 1w1a; train batch 128, eval batch 256. Every row goes to
# OUT_DIR/speed.jsonl, the machine (lscpu, commit, versions) to OUT_DIR/machine.txt, the commands' output
# to OUT_DIR/log.txt, and the ratio table (bench/speed_table.py) to OUT_DIR/table.md. About 16 minutes
# on a 2-core Intel VM (CPU-2j), 21 on a Zen 4 one, 34-41 on a Zen 3 one. Run it with nothing else on
# the machine: the official code's 2-thread step collapses when another process holds a core, which
# makes any ratio meaningless.
#
#   W=$HOME/irnet_ref_work bash bench/cpu_side_by_side.sh OUT_DIR
#
# W: the harness's set-up (its README): $W/torchvenv (torch, CPU build) and $W/irnet_src (htqin/IR-Net).
# PY: irnet_jax's Python (default .venv/bin/python). VARIANT: the irnet_jax variant's config overrides
# (default --config.binary_conv_products=float; empty skips those rows). TFDS_DATA_DIR: prepared
# CIFAR-10 for the training loop (default ../shared/data/tensorflow_datasets).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: W=<harness set-up dir> bash bench/cpu_side_by_side.sh OUT_DIR}
W=${W:?set W to the official harness set-up dir (torchvenv/, irnet_src/)}
HARNESS=${HARNESS:-../shared/reference/irnet_official/run.py}
PY=${PY:-.venv/bin/python}
VARIANT=${VARIANT---config.binary_conv_products=float}
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/data/tensorflow_datasets}
for need in "$W/torchvenv/bin/python" "$W/irnet_src" "$HARNESS" "$PY"; do
  [ -e "$need" ] || { echo "cpu_side_by_side: $need does not exist (see the harness README for the set-up)" >&2; exit 2; }
done
mkdir -p "$OUT"
ROWS=$OUT/speed.jsonl
[ -e "$ROWS" ] && { echo "cpu_side_by_side: $ROWS exists; give a new OUT_DIR" >&2; exit 2; }
export PYTHONUNBUFFERED=1
{
  lscpu | grep -E '^(Vendor ID|Model name|CPU family|Model|Stepping|CPU\(s\)|Flags):'
  echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
  git log -1 --format='commit %H' 2>/dev/null || true
  echo "uncommitted changes: $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) tracked files"
  "$PY" -c "import jax; print('jax', jax.__version__)"
  "$W/torchvenv/bin/python" -c "import torch; print('torch', torch.__version__)"
  date -u
} > "$OUT/machine.txt" 2>&1
if awk '{exit !($1 > 0.5)}' /proc/loadavg; then
  echo "cpu_side_by_side: warning: load average $(cut -d' ' -f1 /proc/loadavg): something else is running" >&2
fi

failed=0
last_row() {  # the newest row, short
  tail -n 1 "$ROWS" | "$PY" -c "import json, sys; r = json.loads(sys.stdin.read()); print(r.get('arch') or r['model'], \
    ' '.join(r.get('config_overrides', [])), 'train', round(r.get('loop_train_images_per_second') or r.get('train_img_s'), 1), \
    'eval', round(r.get('eval_images_per_second') or r['eval_img_s'], 1))"
}
official() {  # ARCH [harness options]
  "$W/torchvenv/bin/python" "$HARNESS" --src "$W/irnet_src" --mode bench --arch "$@" --json-out "$ROWS" \
    >> "$OUT/log.txt" 2>&1 || { echo "official $1 failed (log.txt)" >&2; failed=1; return; }
  last_row
}
ours() {  # CONFIG BENCH_OPTIONS... [config overrides]
  local config=$1
  shift
  "$PY" -m irnet_jax.bench --config "configs/$config.py" --binary=true --dtypes=float32 --output "$ROWS" "$@" \
    >> "$OUT/log.txt" 2>&1 || { echo "irnet_jax $config $* failed (log.txt)" >&2; failed=1; return; }
  last_row
}
side_by_side() {  # ARCH CONFIG "HARNESS OPTIONS" "BENCH OPTIONS"
  local arch=$1 config=$2 harness_options=$3 bench_options=$4
  # shellcheck disable=SC2086  # the option strings split into words on purpose
  {
    official "$arch" $harness_options
    ours "$config" $bench_options
    official "$arch" $harness_options
    [ -n "$VARIANT" ] && ours "$config" $bench_options $VARIANT
    official "$arch" $harness_options
  }
}
date -u
side_by_side resnet20_1w1a irnet_resnet20_1w1a_cifar10 "" "--steps 20 --loop_steps 160"
side_by_side vgg_small_1w1a irnet_vgg_small_1w1a_cifar10 "--warmup 2 --iters 8" "--steps 6 --warmup 2 --loop_steps 24"
date -u
"$PY" bench/speed_table.py "$ROWS" | tee "$OUT/table.md"
exit $failed
