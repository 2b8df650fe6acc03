"""Run directories: a new one per run (never overwritten), and the files in it.

``RUN/config.yaml`` (the resolved config), ``RUN/run.json`` (where the data came from, which
folds, what was resolved at start), ``RUN/summary.json``, and per fold ``metrics.csv``,
``lr.csv``, ``oof.csv`` (checkpoints: :mod:`.checkpoint`). Every write is atomic.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..config_io import dump_yaml, read_config
from ..errors import CheckpointError
from ..fsutil import atomic_write_json, atomic_write_text, load_json


def next_run_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs_dir/name-<n>`` with n one above the highest existing."""
    runs = Path(runs_dir)
    pat = re.compile(rf"^{re.escape(name)}-(\d+)$")
    taken = [int(m.group(1)) for p in (runs.iterdir() if runs.is_dir() else []) if (m := pat.match(p.name))]
    return runs / f"{name}-{max(taken, default=0) + 1}"


def create_run_dir(path: Path) -> Path:
    if path.exists():
        raise FileExistsError(f"run directory {path} already exists; choose a new --run-dir, or continue it with "
                              f"--resume {path}")
    path.mkdir(parents=True)
    return path


def write_run_files(run: Path, cfg: Config, info: dict) -> None:
    """config.yaml (resolved) and run.json."""
    atomic_write_text(run / "config.yaml", dump_yaml(cfg))
    atomic_write_json(run / "run.json", info)


def read_run_info(run: str | Path) -> dict:
    """run.json as train wrote it: a JSON object whose keys that readers rely on have their types."""
    run = Path(run)
    p = run / "run.json"
    if not p.is_file():
        raise CheckpointError(f"{run} is not a maskcls run directory (no run.json); pass the folder that "
                              "`maskcls train` created")
    fix = "restore it from a backup: it records the run's data and folds"
    info = load_json(p, fix=fix)
    wrong = None
    if "prepared" in info and not (isinstance(info["prepared"], str) and info["prepared"].strip()):
        wrong = ("prepared", "the prepared directory's path")
    elif "manifest_sha1" in info and not isinstance(info["manifest_sha1"], (str, type(None))):
        wrong = ("manifest_sha1", "a checksum string")
    elif "folds" in info and not (isinstance(info["folds"], list) and all(
            isinstance(f, int) and not isinstance(f, bool) for f in info["folds"])):
        wrong = ("folds", "a list of fold numbers")
    if wrong:
        raise CheckpointError(f"{p}: {wrong[0]!r} is {json.dumps(info[wrong[0]])[:60]}, not {wrong[1]}; {fix}")
    return info


# Keys whose default changed after some runs were written without them: such a run trained with the old
# value, which its config.yaml then lacks (every later config.yaml holds every key). train.ema: on by
# default since 2026-12-03; it was off, and a run written before the key existed had no EMA. train.valid_tta:
# hflip by default since 2026-12-03; before the key existed validation (and so oof.csv) saw one view.
KEYS_OLD_DEFAULTS = {("train", "ema"): False, ("train", "valid_tta"): "none"}


def read_run_config(run: str | Path) -> Config:
    """The run's typed config (config.yaml as train wrote it); a key the file lacks whose default changed
    since takes the value the run was trained with (``KEYS_OLD_DEFAULTS``), so that --resume continues it."""
    return read_config(Path(run) / "config.yaml", missing=KEYS_OLD_DEFAULTS)


def fold_dir(run: Path, fold: int) -> Path:
    return run / f"fold{fold}"


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def write_lr_csv(path: Path, lrs: list[float]) -> None:
    atomic_write_text(path, pd.DataFrame({"step": np.arange(1, len(lrs) + 1), "lr": lrs}).to_csv(index=False))


def fold_numbers(run: Path, with_file: str | None = None) -> dict[int, Path]:
    """The run's fold directories ``fold<k>`` by k (the one place a run's folds are discovered), or, with
    ``with_file``, the path of that file in each fold directory that holds one."""
    out = {}
    for d in sorted(Path(run).glob("fold*")):
        if d.is_dir() and d.name[4:].isdigit():
            p = d / with_file if with_file else d
            if with_file is None or p.is_file():
                out[int(d.name[4:])] = p
    return dict(sorted(out.items()))
