"""Ensembles across runs: ``maskcls predict RUN1 RUN2 … --out sub.csv``.

Each run predicts the evaluation images with its own folds, preprocessing and TTA (fold
ensemble inside a run, as for one run); the runs' probabilities are then averaged with equal
weights, or with weights fitted for macro F1 on their common out-of-fold rows (runs trained on
the same prepared split). The rows and their order are eval/info.csv's, checked to be the same
for every run. Decision offsets (``--tune-bias``) are fitted on the ensemble's out-of-fold
probabilities and applied only when they raise the cross-fitted macro F1 (``auto``).
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from ..engine.decision import TuneBias, apply_offsets, check_tune_bias, cross_fitted, fit_offsets
from ..errors import ConfigError, DataError, did_you_mean
from ..fsutil import atomic_write_json, free_name
from ..metrics import confusion, macro_f1
from ..rundir.files import read_run_info
from ..rundir.oof import read_oof
from .loading import TTA_REQUESTS, check_tta, resolve_tta

log = logging.getLogger(__name__)


def common_oof(runs: list[Path], k: int) -> pd.DataFrame | None:
    """Out-of-fold rows every run has (same image, same label), with each run's probabilities; or None."""
    frames = []
    for i, run in enumerate(runs):
        oof = read_oof(run, read_run_info(run)["folds"])
        if oof is None:
            return None
        probs = oof[[f"prob_{c}" for c in range(k)]].to_numpy()
        frames.append(pd.DataFrame({"path": oof["path"], "label": oof["label"], "fold": oof["fold"],
                                    "group": oof["group"], f"p{i}": list(probs)}))
    common = frames[0]
    for i, f in enumerate(frames[1:], start=1):
        common = common.merge(f[["path", "label", f"p{i}"]], on=["path", "label"])
    return common if len(common) else None


def fit_run_weights(probs: list[np.ndarray], labels: np.ndarray, k: int, step: float = 0.1) -> np.ndarray:
    """Weights on the simplex (grid of ``step``) maximising the macro F1 of the weighted mean."""
    n = len(probs)
    ticks = int(round(1 / step))
    best, best_w = -1.0, np.full(n, 1 / n)
    for combo in itertools.product(range(ticks + 1), repeat=n - 1):
        if sum(combo) > ticks:
            continue
        w = np.array([*combo, ticks - sum(combo)], float) / ticks
        f1 = macro_f1(confusion(labels, sum(wi * p for wi, p in zip(w, probs)).argmax(1), k))
        if f1 > best + 1e-12:
            best, best_w = f1, w
    return best_w


EnsembleWeights = Literal["equal", "oof"]  # predict --ensemble-weights


def check_weights_method(weights: str) -> EnsembleWeights:
    """``weights`` when it is one of :data:`EnsembleWeights`, else a clear error (before any run is loaded)."""
    choices = get_args(EnsembleWeights)
    if weights not in choices:
        raise ConfigError(f"--ensemble-weights {weights!r} is not one of {', '.join(choices)}"
                          f"{did_you_mean(str(weights), choices)}")
    return weights


def predict_runs(runs: list[str | Path], *, data: str | None = None, out: str | None = None, folds: str = "all",
                 tta: str = "auto", weights: EnsembleWeights = "equal", tune_bias: TuneBias = "auto",
                 batch_size: int | None = None) -> dict:
    """The submission of several runs' averaged probabilities; see the module docstring."""
    from .predict import _submission_rows, eval_probabilities, run_and_data, submission_path, write_submission
    check_weights_method(weights)
    check_tune_bias(tune_bias)
    runs = [Path(r) for r in runs]
    check_tta(tta, TTA_REQUESTS)
    probs, info, task, prep, views = [], None, None, None, []
    for run in runs:
        loaded, prep, _ = run_and_data(run, folds=folds, data=data)
        views.append(resolve_tta(tta, loaded))  # 'auto': each run's own train.valid_tta
        rows, run_info = _submission_rows(prep)
        if info is not None and not run_info.equals(info):
            raise DataError(f"{run} predicts other evaluation images than {runs[0]} (their ids or order differ); "
                            "ensemble runs of one source, or pass the same --data")
        if task is not None and loaded[0].task != task:
            raise DataError(f"{run} has another label space than {runs[0]}; ensemble runs of one task only")
        info, task = run_info, loaded[0].task
        probs.append(eval_probabilities(loaded, prep, rows, tta=views[-1], batch_size=batch_size))
    k = task.num_classes
    oof = common_oof(runs, k)
    w = np.full(len(runs), 1 / len(runs))
    report: dict = {"weights_method": weights}
    if oof is not None:
        oof_probs = [np.stack(oof[f"p{i}"].to_numpy()) for i in range(len(runs))]
        labels = oof["label"].to_numpy()
        if weights == "oof":
            w = fit_run_weights(oof_probs, labels, k)
        mixed = sum(wi * p for wi, p in zip(w, oof_probs))
        report["oof_rows"] = int(len(oof))
        report["oof_f1_runs"] = [macro_f1(confusion(labels, p.argmax(1), k)) for p in oof_probs]
        report["oof_f1_ensemble"] = macro_f1(confusion(labels, mixed.argmax(1), k))
        table = pd.DataFrame(mixed, columns=[f"prob_{c}" for c in range(k)]).assign(
            label=labels, fold=oof["fold"].to_numpy(), group=oof["group"].to_numpy())
        decision = cross_fitted(table, k)
        report["decision"] = decision
        offsets = fit_offsets(mixed, labels, k) if tune_bias == "on" or (
            tune_bias == "auto" and decision["gain"] > 0) else None
    elif weights == "oof":
        raise DataError("--ensemble-weights oof needs out-of-fold rows the runs share (the same prepared split); "
                        "use --ensemble-weights equal")
    else:
        offsets = None
    ens = sum(wi * p for wi, p in zip(w, probs))
    sub = info.copy()
    sub["ans"] = apply_offsets(ens, offsets)
    if prep.meta.get("kind") == "csv":
        sub["class_name"] = [task.class_names[c] for c in sub["ans"]]
    out_path = write_submission(sub, ens, submission_path(runs[0], out) if out else
                                free_name(runs[0] / "ensemble-submission.csv"))
    report.update({"runs": [str(r) for r in runs], "weights": [round(float(x), 3) for x in w],
                   "tta": views[0] if len(set(views)) == 1 else ",".join(views),
                   "decision_offsets": offsets is not None})
    atomic_write_json(out_path.with_name(out_path.stem + ".ensemble.json"), report)
    return {"submission": str(out_path), "rows": len(sub), **report}
