"""Run directories: a new one per run (never overwritten), its config, and its summary."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CheckpointError
from ..utils import atomic_write_text
from .metrics import confusion, head_f1, macro_f1


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


def read_run_info(run: str | Path) -> dict:
    run = Path(run)
    p = run / "run.json"
    if not p.is_file():
        raise CheckpointError(f"{run} is not a maskcls run directory (no run.json); pass the folder that "
                              "`maskcls train` created")
    return json.loads(p.read_text())


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def write_lr_csv(path: Path, lrs: list[float]) -> None:
    atomic_write_text(path, pd.DataFrame({"step": np.arange(1, len(lrs) + 1), "lr": lrs}).to_csv(index=False))


def write_oof(path: Path, rows: pd.DataFrame, paths: np.ndarray, probs: np.ndarray) -> None:
    df = pd.DataFrame({"path": paths, "image_id": rows["image_id"].to_numpy(), "group": rows["group"].to_numpy(),
                       "label": rows["label"].to_numpy(), "pred": probs.argmax(1)})
    probs_df = pd.DataFrame(probs, columns=[f"prob_{i}" for i in range(probs.shape[1])])
    atomic_write_text(path, pd.concat([df, probs_df], axis=1).to_csv(index=False, float_format="%.6f"))


def summarize_run(run: Path, *, name: str, task: str, class_names: list[str], heads: str,
                  folds: dict[int, dict], finished: bool) -> dict:
    """summary.json: per-fold bests, mean over folds, out-of-fold F1 when several folds ran."""
    k = len(class_names)
    oofs = [pd.read_csv(run / f"fold{f}" / "oof.csv") for f in sorted(folds) if (run / f"fold{f}" / "oof.csv").exists()]
    oof_f1, hf1 = None, None
    if oofs:
        allo = pd.concat(oofs)
        cm = confusion(allo["label"].to_numpy(), allo["pred"].to_numpy(), k)
        oof_f1 = macro_f1(cm) if len(oofs) > 1 else None
        hf1 = head_f1(cm) if task == "mask_gender_age" else None
    done = [r["best_f1"] for r in folds.values() if r.get("best_f1") is not None and r["best_f1"] >= 0]
    summary = {"run": name, "task": task, "num_classes": k, "class_names": class_names, "heads": heads,
               "folds": {str(f): r for f, r in sorted(folds.items())},
               "mean_f1": float(np.mean(done)) if done else None, "oof_f1": oof_f1, "head_f1": hf1,
               "finished": finished}
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=2))
    return summary
