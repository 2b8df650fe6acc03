"""Decision tuning for macro F1: per-class offsets on log-probabilities, fitted on out-of-fold rows.

Macro F1 weighs every class alike, so the argmax of calibrated probabilities is not its
optimum: a rare class gains more F1 from a few more (correct) predictions than a frequent
class loses. ``argmax(log p + b)`` with one offset per class, fitted by coordinate ascent on a
small grid, moves the decision boundaries; the offsets are stored in ``RUN/decision.json`` and
applied by ``maskcls predict``.

The gain is reported honestly: offsets fitted on all out-of-fold rows but one part are scored
on that part (the parts are the run's folds, or, for a single fold, five group-wise parts of
it, so one person never informs their own score), and the parts' predictions are pooled into
one cross-fitted macro F1. ``predict --tune-bias auto`` applies the offsets only when that
cross-fitted F1 beats the plain argmax.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from ..errors import CheckpointError, ConfigError, DataError, did_you_mean
from ..fsutil import atomic_write_json, load_json
from ..metrics import confusion, macro_f1
from ..task import Task

TuneBias = Literal["auto", "on", "off"]  # predict --tune-bias

GRID = np.round(np.linspace(-2.0, 2.0, 41), 3)  # offsets in log-probability units
ROUNDS = 3
EPS = 1e-7
DECISION_FILE = "decision.json"


def apply_offsets(probs: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """Predicted classes: ``argmax(log p + offsets)`` (plain argmax when ``offsets`` is None)."""
    if offsets is None:
        return probs.argmax(1)
    return (np.log(np.asarray(probs, np.float64) + EPS) + np.asarray(offsets)).argmax(1)


def fit_offsets(probs: np.ndarray, labels: np.ndarray, k: int, *, grid: np.ndarray = GRID,
                rounds: int = ROUNDS) -> np.ndarray:
    """Per-class offsets maximising macro F1 on (probs, labels), by coordinate ascent over ``grid``."""
    logp = np.log(np.asarray(probs, np.float64) + EPS)
    b = np.zeros(k)
    best = macro_f1(confusion(labels, (logp + b).argmax(1), k))
    for _ in range(rounds):
        improved = False
        for c in range(k):
            for v in grid:
                if v == b[c]:
                    continue
                trial = b.copy()
                trial[c] = v
                f1 = macro_f1(confusion(labels, (logp + trial).argmax(1), k))
                if f1 > best + 1e-12:
                    best, b, improved = f1, trial, True
        if not improved:
            break
    return b


def _parts(oof: pd.DataFrame, n_single: int = 5) -> np.ndarray:
    """Part of each row: its fold, or (one fold only) a group-wise split of that fold into ``n_single``."""
    if oof["fold"].nunique() > 1:
        return oof["fold"].to_numpy()
    groups = oof["group"].astype(str).to_numpy()
    uniq = np.unique(groups)
    order = np.random.default_rng(0).permutation(len(uniq))
    part_of = dict(zip(uniq[order], np.arange(len(uniq)) % n_single))
    return np.array([part_of[g] for g in groups])


def cross_fitted(oof: pd.DataFrame, k: int) -> dict:
    """Macro F1 of the plain argmax and of offsets fitted on the other parts, pooled over parts."""
    probs = oof[[f"prob_{i}" for i in range(k)]].to_numpy()
    labels = oof["label"].to_numpy()
    parts = _parts(oof)
    tuned = np.empty(len(oof), np.int64)
    for p in np.unique(parts):
        held = parts == p
        tuned[held] = apply_offsets(probs[held], fit_offsets(probs[~held], labels[~held], k))
    plain = macro_f1(confusion(labels, probs.argmax(1), k))
    after = macro_f1(confusion(labels, tuned, k))
    return {"f1_argmax": plain, "f1_tuned_cross_fitted": after, "gain": after - plain,
            "parts": int(len(np.unique(parts))), "rows": int(len(oof))}


def tune_run(run: Path, oof: pd.DataFrame, task: Task) -> dict:
    """Fit offsets on all out-of-fold rows of ``run``, measure them cross-fitted, write decision.json."""
    k = task.num_classes
    probs = oof[[f"prob_{i}" for i in range(k)]].to_numpy()
    offsets = fit_offsets(probs, oof["label"].to_numpy(), k)
    result = {"method": "argmax(log p + offsets), offsets fitted for macro F1 on out-of-fold rows",
              "offsets": [round(float(v), 3) for v in offsets], **cross_fitted(oof, k)}
    result["apply_by_default"] = bool(result["gain"] > 0)
    atomic_write_json(run / DECISION_FILE, result)
    return result


def check_tune_bias(mode: str) -> TuneBias:
    """``mode`` when it is one of :data:`TuneBias`, else a clear error (a typo must not act as 'on')."""
    choices = get_args(TuneBias)
    if mode not in choices:
        raise ConfigError(f"--tune-bias {mode!r} is not one of {', '.join(choices)}{did_you_mean(str(mode), choices)}")
    return mode


def read_offsets(run: Path, mode: TuneBias = "auto", *, k: int | None = None) -> np.ndarray | None:
    """The offsets ``predict`` applies: ``on`` = the run's, ``auto`` = the run's when they helped
    cross-fitted, ``off`` = none. Runs without decision.json (older ones) predict with argmax; a damaged
    decision.json (or one with other than ``k`` offsets) is an error naming it."""
    if check_tune_bias(mode) == "off":
        return None
    path = Path(run) / DECISION_FILE
    fix = "delete it to predict with plain argmax (or --tune-bias off), or re-run training to fit it again"
    info = load_json(path, fix=fix, missing_ok=True)
    if info is None:
        if mode == "on":
            raise CheckpointError(f"{run} has no {DECISION_FILE} (fitted when training ends with out-of-fold "
                                  "rows); predict with --tune-bias auto or off")
        return None
    try:
        offsets = np.asarray(info["offsets"], np.float64)
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path} has no list of numbers under 'offsets'; {fix}") from None
    if offsets.ndim != 1 or (k is not None and len(offsets) != k) or not np.isfinite(offsets).all():
        raise DataError(f"{path} holds {offsets.size} offsets{f', not {k} finite ones (one per class)' if k else ''}; "
                        f"{fix}")
    if mode == "auto" and not info.get("apply_by_default"):
        return None
    return offsets
