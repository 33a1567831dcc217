#!/usr/bin/env bash
# What jclip does on this host's devices, in one run: the platform and device kind, the matmul peak
# measured in each dtype, the train steps of configs/quickstart.py and configs/flickr8k.py in
# float32 and bfloat16 (pairs/s, achieved FLOP/s and its fraction of that peak, memory with
# model.remat both ways), LiT feature extraction (images/s of EfficientNet-Lite0 at 224 px) and the
# bfloat16-vs-float32 loss gap over 20 training steps of the quickstart. Meant for a GPU or TPU
# host, sized to finish within 6 minutes on one GPU (not yet run on one; BUILD.md, "The
# accelerator check"):
#
#   bench/accelerator_check.sh            # every figure, at the configs' own sizes
#   bench/accelerator_check.sh --short    # the same commands at tiny sizes (CI, on a CPU)
#
# Nothing here needs data: the steps run on random batches of each config's shapes, the features on
# random images, and the loss gap trains on the quickstart's generated captioned shapes. Each line
# of output comes from the command printed above it, which can be run alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's jclip, whichever is installed
# The commands share one compilation cache (a program that two of them build compiles once), kept
# in a temporary folder for this run only.
JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
export JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT

if [[ "${1:-}" == "--short" ]]; then
  # CI's run on a CPU: every command, at tiny sizes, compiled as the tests compile (XLA's
  # optimisation level 2: a few seconds a program instead of ten; the figures mean nothing).
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=2 --xla_llvm_disable_expensive_passes=true"
  # The tiny config's steps are timed with the 20 steps of the loss gap's runs, whose programs
  # are then the same, compiled once (the step's learning-rate schedule is part of its program).
  QUICKSTART=(--config=configs/tiny.py --config.num_steps=20)
  FLICKR8K=()
  STEP_FLAGS=(--steps=2 --warmup=1 --matmul_size=512 --nocompare_remat)
  LIT=(--config=configs/flickr8k_lit.py --config.data.image_size=32 --images=16 --batch_size=8)
  GAP=(--config=configs/tiny.py)
elif [[ $# -eq 0 ]]; then
  QUICKSTART=(--config=configs/quickstart.py)
  FLICKR8K=(--config=configs/flickr8k.py)
  STEP_FLAGS=(--steps=10 --warmup=2)
  LIT=(--config=configs/flickr8k_lit.py --images=1024 --batch_size=64)
  GAP=(--config=configs/quickstart.py)
else
  echo "usage: bench/accelerator_check.sh [--short]" >&2
  exit 2
fi

run() {
  echo "\$ $*"
  "$@"
  echo
}

for dtype in float32 bfloat16; do
  run python bench/train_step.py "${QUICKSTART[@]}" --config.model.dtype=$dtype "${STEP_FLAGS[@]}"
  if [[ ${#FLICKR8K[@]} -gt 0 ]]; then
    run python bench/train_step.py "${FLICKR8K[@]}" --config.model.dtype=$dtype "${STEP_FLAGS[@]}"
  else
    echo "configs/flickr8k.py ($dtype): skipped in --short mode (a full-size model; the same command as the quickstart's)"
    echo
  fi
done
run python bench/lit_features.py "${LIT[@]}"
run python bench/precision_gap.py "${GAP[@]}" --steps=20
