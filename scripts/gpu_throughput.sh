#!/usr/bin/env bash
# GPU training throughput for maskcls: steady-state images/s with the loader and batch size varied.
#
# Run from the repository root on a CUDA machine (after scripts/gpu_check.sh has passed):
#     bash scripts/gpu_throughput.sh
# It synthesises 500 people (3,500 photos) in a temporary directory and trains fold 0 (2,800 training
# images) for 3 epochs in bf16 at 224 px, five ways: thread loader (data.loader=auto on CUDA) at
# batch 30 (the default), loader processes, the decoded-crop cache, then batch 128 with threads and
# with processes. Epoch 1 pays CUDA start-up and cuDNN autotuning; epochs 2-3 are the steady state.
# About 4 minutes on one H200 with 16 cores.
set -uo pipefail

source "$(dirname "$0")/gpu_common.sh" gpu_throughput
TMP=$(mktemp -d -t maskcls-gpu-tput-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m maskcls synth "$TMP/data" --people 500 --seed 0 >/dev/null
"$PY" -m maskcls prepare "$TMP/data" --out "$TMP/prep" --folds 5 --seed 0 2>/dev/null | grep '^prepared'

run() {  # run NAME [--set KEY=VALUE ...]
    local name=$1; shift
    local t0=$SECONDS
    "$PY" -m maskcls train "$TMP/prep" --folds 0 --set train.epochs=3 --set run.tensorboard=false \
        --set run.report=false --set train.mixed_precision=bf16 --run-dir "$TMP/runs/$name" "$@" \
        > "$TMP/$name.log" 2>&1 || tail -5 "$TMP/$name.log"
    echo "-- $name: $((SECONDS - t0)) s wall; per epoch: training seconds, training images/s"
    grep -h '^fold 0 epoch [0-9]/3:' "$TMP/$name.log" | sed 's/.*| lr [^|]*| /   /'
}
run threads-b30
run processes-b30 --set data.loader=processes
run threads-cache-b30 --set data.cache=true
run threads-b128 --set train.batch_size=128 --set train.valid_batch_size=256
run processes-b128 --set data.loader=processes --set train.batch_size=128 --set train.valid_batch_size=256
echo "gpu_throughput: done"
