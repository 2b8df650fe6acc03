"""The uint8 crop cache: built once, by one of two processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import TINY_SETS


# --------------------------------------------------------------------------- multi-process crop cache
@pytest.mark.slow
def test_crop_cache_is_built_by_one_of_two_processes(prepared_dir, tmp_path):
    """torchrun, 2 CPU processes, data.cache=true on a fresh prepared copy: rank 0 builds the cache, rank 1
    waits and reuses it (each build is counted by a marker line from the build's fill step)."""
    import shutil
    d = tmp_path / "prep"
    shutil.copytree(prepared_dir, d, ignore=shutil.ignore_patterns("cache"))
    marker = tmp_path / "builds.txt"
    script = tmp_path / "train_counting.py"
    script.write_text(f"""
import os, sys
import maskcls.data.cache as cache
real = cache._fill_all
def counting(*a, **k):
    with open({str(marker)!r}, "a") as fh:
        fh.write(os.environ.get("RANK", "?") + "\\n")
    return real(*a, **k)
cache._fill_all = counting
from maskcls.cli import main
sys.exit(main(sys.argv[1:]))
""")
    sets = [a for a in TINY_SETS if not a.startswith("data.num_workers")] + [
        "data.num_workers=0", "data.cache=true", "train.epochs=1", "train.max_train_batches=1",
        "train.mixed_precision='no'", "run.trackers=[]"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(script), "train", str(d), "--folds", "0", "--run-dir", str(tmp_path / "run")] + \
        sum((["--set", s] for s in sets), [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[2] / "src"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.read_text().split() == ["0"], "the crop cache must be built once, by rank 0"
    (npy,) = (d / "cache").glob("*.npy")
    n_train = (pd.read_csv(d / "manifest.csv")["split"] == "train").sum()
    assert len(np.load(npy, mmap_mode="r")) == n_train
