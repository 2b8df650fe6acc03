#!/usr/bin/env bash
# GPU smoke + speed check for maskcls (one CUDA GPU, < 5 minutes on an H100).
#
# Run from the repository root, with the repo's venv (.venv) or after `python -m pip install -e .`:
#     bash scripts/gpu_check.sh
# It synthesises a small dataset in a temporary directory, trains fold 0 for 2 epochs with
# bf16 (thread loader, as data.loader=auto picks on CUDA), bf16 with loader processes, fp16,
# and bf16 + torch.compile (channels_last is the default in every run), prints
# each run's images/s from metrics.csv, then runs `maskcls bench loader --images 300`.
# Exits non-zero when CUDA is not available.
set -euo pipefail

source "$(dirname "$0")/gpu_common.sh" gpu_check
MASKCLS=("$PY" -m maskcls)

TMP=$(mktemp -d -t maskcls-gpu-check-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

echo "== synth + prepare (60 people) in $TMP"
"${MASKCLS[@]}" synth "$TMP/data" --people 60 --seed 0
"${MASKCLS[@]}" prepare "$TMP/data" --out "$TMP/prepared" --folds 5 --seed 0

# Short runs: 2 epochs of fold 0, pretrained weights from the package (offline).
COMMON=(--folds 0 --set train.epochs=2 --set run.tensorboard=false --set run.report=false)

run() {  # run NAME [--set KEY=VALUE ...]
    local name=$1; shift
    echo "== train: $name"
    local t0=$SECONDS
    "${MASKCLS[@]}" train "$TMP/prepared" "${COMMON[@]}" --run-dir "$TMP/runs/$name" "$@"
    echo "-- $name: $((SECONDS - t0)) s wall; images/s per epoch from metrics.csv:"
    "$PY" - "$TMP/runs/$name" <<'PYEOF'
import sys
from pathlib import Path
import pandas as pd
for csv in sorted(Path(sys.argv[1]).glob("**/metrics.csv")):
    df = pd.read_csv(csv)
    for _, r in df.iterrows():
        print(f"   {csv.parent.name} epoch {int(r['epoch'])}: {r['images_per_s']:.1f} images/s "
              f"(train), valid f1 {r['valid_f1']:.4f}")
PYEOF
}

run bf16 --set train.mixed_precision=bf16
run bf16-processes --set train.mixed_precision=bf16 --set data.loader=processes  # auto = threads on CUDA
run fp16 --set train.mixed_precision=fp16
run bf16-compile --set train.mixed_precision=bf16 --set train.compile=true

echo "== loader benchmark"
"${MASKCLS[@]}" bench loader --images 300
echo "gpu_check: done"
