# Sourced by the GPU scripts (gpu_check.sh, gpu_bench.sh, gpu_throughput.sh) with the script's name as $1:
# moves to the repository root, sets PY (.venv's Python when there is one, else $PYTHON or python), and exits 2
# with a one-line message when CUDA is not available.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python}; fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "$1: CUDA is not available (torch.cuda.is_available() is False); this script measures a CUDA GPU" \
         "(every maskcls command also runs, slower, on a CPU)." >&2
    exit 2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "| CUDA", torch.version.cuda, "|", torch.cuda.get_device_name(0))'
