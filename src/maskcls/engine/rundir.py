"""Run directories: a new one per run (never overwritten), and the files in it.

``RUN/config.yaml`` (the resolved config), ``RUN/run.json`` (where the data came from, which
folds, what was resolved at start), ``RUN/summary.json``, and per fold ``metrics.csv``,
``lr.csv``, ``oof.csv`` (checkpoints: :mod:`.checkpoint`). Every write is atomic.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..config_io import dump_yaml, read_config
from ..errors import CheckpointError
from ..fsutil import atomic_write_json, atomic_write_text, load_json
from ..labels import Task
from .metrics import oof_scores


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
    run = Path(run)
    p = run / "run.json"
    if not p.is_file():
        raise CheckpointError(f"{run} is not a maskcls run directory (no run.json); pass the folder that "
                              "`maskcls train` created")
    return load_json(p, fix="restore it from a backup: it records the run's data and folds")


def read_run_config(run: str | Path) -> Config:
    """The run's typed config (config.yaml as train wrote it)."""
    return read_config(Path(run) / "config.yaml")


def fold_dir(run: Path, fold: int) -> Path:
    return run / f"fold{fold}"


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def write_lr_csv(path: Path, lrs: list[float]) -> None:
    atomic_write_text(path, pd.DataFrame({"step": np.arange(1, len(lrs) + 1), "lr": lrs}).to_csv(index=False))


def write_oof(path: Path, rows: pd.DataFrame, paths: np.ndarray, probs: np.ndarray) -> None:
    df = pd.DataFrame({"path": paths, "image_id": rows["image_id"].to_numpy(), "group": rows["group"].to_numpy(),
                       "label": rows["label"].to_numpy(), "pred": probs.argmax(1)})
    probs_df = pd.DataFrame(probs, columns=[f"prob_{i}" for i in range(probs.shape[1])])
    atomic_write_text(path, pd.concat([df, probs_df], axis=1).to_csv(index=False, float_format="%.6f"))


def read_oof(run: Path, folds) -> pd.DataFrame | None:
    """The out-of-fold rows of ``folds`` written so far (with a ``fold`` column), or None.

    Identifiers stay strings: a group or image id such as ``0012`` must not be read as the number 12.
    """
    ids = {"path": str, "image_id": str, "group": str}
    parts = [pd.read_csv(fold_dir(run, f) / "oof.csv", dtype=ids).assign(fold=f)
             for f in sorted(folds) if (fold_dir(run, f) / "oof.csv").exists()]
    return pd.concat(parts, ignore_index=True) if parts else None


def summarize_run(run: Path, *, name: str, task: Task, heads: str, folds: dict[int, dict], finished: bool,
                  decision: dict | None = None) -> dict:
    """summary.json: per-fold bests, mean over folds, out-of-fold F1 when several folds ran, and the
    decision tuning's cross-fitted result (decision.json holds its offsets)."""
    oof = read_oof(run, folds)
    scores = oof_scores(oof, task) if oof is not None else None
    done = [r["best_f1"] for r in folds.values() if r.get("best_f1") is not None and r["best_f1"] >= 0]
    summary = {"run": name, **task.to_meta(), "heads": heads,
               "folds": {str(f): r for f, r in sorted(folds.items())},
               "mean_f1": float(np.mean(done)) if done else None,
               "oof_f1": scores["f1"] if scores and oof["fold"].nunique() > 1 else None,
               "head_f1": (scores["head_f1"] or None) if scores else None,
               "finished": finished,
               "decision": {k: v for k, v in decision.items() if k != "offsets"} if decision else None}
    atomic_write_json(run / "summary.json", summary)
    return summary
