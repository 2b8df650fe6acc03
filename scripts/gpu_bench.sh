#!/usr/bin/env bash
# The GPU figures of issue 37, in one run (about 4 minutes on one H100/H200; run scripts/gpu_check.sh first):
#     bash scripts/gpu_bench.sh [PREPARED]
# 1. `maskcls bench gpu` for MobileNetV2 at 224 px in bf16: the pipeline's training step rate from real JPEGs
#    against the model alone (random uint8 batches already on the device), and their ratio, at the batch a user
#    gets with no flags (train.batch_size=auto: the memory probe) and at the old default batch of 30, with the
#    thread loader (auto on CUDA) and with loader processes.
# 2. `maskcls bench time-to-f1` (maskcls against timm's train.py, same model, weights, split and precision) when a
#    git copy of huggingface/pytorch-image-models is given as TIMM_REPO.
# PREPARED: a prepared directory of real photos (default: a synthetic one of 500 people made here).
set -uo pipefail

source "$(dirname "$0")/gpu_common.sh" gpu_bench
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
TMP=$(mktemp -d -t maskcls-gpu-bench-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
PREP=${1:-}
if [[ -z "$PREP" ]]; then
    "$PY" -m maskcls synth "$TMP/data" --people 500 --seed 0 >/dev/null
    "$PY" -m maskcls prepare "$TMP/data" --out "$TMP/prep" --folds 5 --seed 0 2>/dev/null | grep '^prepared'
    PREP=$TMP/prep
fi

bench() {  # NAME [--set KEY=VALUE ...]
    local name=$1; shift
    echo "== bench gpu: $name"
    "$PY" -m maskcls bench gpu "$PREP" --set data.image_size=224 --set train.mixed_precision=bf16 "$@" 2>&1 \
        | grep -v '^fold\|it/s\]$' | tail -6
}
bench "batch auto (the default), threads"
bench "batch 30, threads" --set train.batch_size=30
bench "batch auto, loader processes" --set data.loader=processes

if [[ -n "${TIMM_REPO:-}" ]]; then
    echo "== bench time-to-f1 against timm's train.py (TIMM_REPO=$TIMM_REPO)"
    "$PY" -m maskcls bench time-to-f1 "$PREP" --timm-repo "$TIMM_REPO" --image-size 224 --epochs 3 \
        --precision bf16 2>&1 | tail -12
else
    echo "== bench time-to-f1 skipped: set TIMM_REPO to a git copy of huggingface/pytorch-image-models"
fi
echo "gpu_bench: done"
