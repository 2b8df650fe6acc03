"""A run's summary.json: written when its training ends (per-fold bests, mean and out-of-fold macro F1, the
decision tuning's result), and read strictly by everything that needs the run's scores or its best fold."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..fsutil import atomic_write_json, load_json
from ..metrics import oof_scores
from ..task import Task
from .oof import read_oof


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


SUMMARY_FIX = ("it is written when a training ends: run `maskcls train --resume RUN` to finish the run, or restore "
               "the file")


def read_summary(run: str | Path, *, required: bool = True) -> dict | None:
    """summary.json, read strictly: a damaged file, or one whose ``folds`` is not an object of fold entries, is a
    one-line error naming it; a missing one is None unless ``required``."""
    p = Path(run) / "summary.json"
    summary = load_json(p, fix=SUMMARY_FIX, missing_ok=not required)
    if summary is None:
        return None
    folds = summary.get("folds")
    if not isinstance(folds, dict) or not all(str(k).isdigit() and isinstance(v, dict) for k, v in folds.items()):
        raise CheckpointError(f"{p}: 'folds' is not an object of fold entries ({json.dumps(folds)[:60]}); "
                              f"{SUMMARY_FIX}")
    return summary
