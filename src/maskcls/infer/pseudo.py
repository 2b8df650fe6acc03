"""``maskcls pseudo``: a new prepared directory in which confidently predicted eval images train.

The run's folds predict the prepared directory's evaluation images (fold ensemble, flip TTA);
each image whose top probability reaches ``min_prob`` is added as a *pseudo* row (split
``pseudo``, fold −1, label = the predicted class): every fold trains on it, no fold validates
on it, so validation and out-of-fold scores stay on human labels only. The evaluation rows stay
as they were (they are still what a submission predicts). What was added — from which run, at
which threshold, how many per class — is recorded in the new prepare.json. The source prepared
directory is only read.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..fsutil import atomic_write_json, atomic_write_text, ensure_new_dir
from ..prep.prepared import MANIFEST_COLUMNS

log = logging.getLogger(__name__)


def pseudo_rows(eval_rows: pd.DataFrame, probs: np.ndarray, task, min_prob: float, run: str) -> pd.DataFrame:
    """Copies of the confident eval rows, labelled with their predicted class."""
    keep = probs.max(1) >= min_prob
    rows = eval_rows[keep].copy()
    pred = probs[keep].argmax(1)
    rows["label"] = pred
    codes = task.split(pred) if task.attributes else {}
    for name in ("mask", "gender", "age"):
        rows[name] = codes[name] if name in codes else -1
    rows["age_years"] = -1
    rows["split"], rows["fold"] = "pseudo", -1
    rows["fix"] = f"pseudo p>={min_prob:g} from {run}"
    rows["group"] = "pseudo:" + rows["image_id"].astype(str)
    return rows


def make_pseudo(run: str | Path, out: str | Path, *, min_prob: float = 0.9, folds: str = "all",
                tta: str = "hflip", data: str | Path | None = None, batch_size: int | None = None) -> dict:
    """Write ``out``: the run's prepared directory plus pseudo-labelled eval images; returns its prepare.json.

    When no eval image reaches ``min_prob`` nothing is written (the source again, under a new name, would only look
    like a result): the returned ``pseudo`` record then has ``added`` 0, the highest top probability
    seen (``max_prob``) and how many images a lower threshold would add (``lower_min_prob``, ``added_at_lower``).

    Args:
        run: a trained run directory.
        out: new prepared directory.
        min_prob: smallest top probability for an eval image to join training.
        folds: which folds predict ('all', 'best', '0,2').
        tta: 'hflip' or 'none'.
        data: the prepared directory to extend (default: the one the run trained on).
        batch_size: prediction batch (default: the run's validation batch).
    """
    from .predict import eval_probabilities, run_and_data
    if not 0.0 <= min_prob <= 1.0:
        raise ConfigError(f"--min-prob {min_prob}: use a probability in [0, 1], e.g. 0.9")
    loaded, prep, _ = run_and_data(run, folds=folds, data=data)
    if len(prep.pseudo_rows()):
        raise DataError(f"{prep.dir} already holds pseudo-labelled rows; extend the original prepared directory")
    rows = prep.eval_rows()
    if len(rows) == 0:
        raise DataError(f"{prep.dir} has no evaluation images to pseudo-label")
    probs = eval_probabilities(loaded, prep, rows, tta=tta, batch_size=batch_size)
    added = pseudo_rows(rows, probs, prep.task, min_prob, str(Path(run).resolve()))
    if len(added) == 0:  # a copy of the source with nothing added would only look like a result
        top = probs.max(1)
        lower = np.floor(top.max() * 20) / 20  # the 0.05 step at or below the most confident image
        log.info("pseudo: no eval image reaches p >= %g (highest %.4f); nothing written", min_prob, top.max())
        return {"pseudo": {"added": 0, "eval_images": int(len(rows)), "min_prob": min_prob,
                           "max_prob": float(top.max()), "lower_min_prob": float(lower),
                           "added_at_lower": int((top >= lower).sum()), "tta": tta,
                           "folds": [f.fold for f in loaded]}}
    manifest = pd.concat([prep.manifest, added[MANIFEST_COLUMNS]], ignore_index=True)
    out = ensure_new_dir(out)
    atomic_write_text(out / "manifest.csv", manifest.to_csv(index=False))
    k = prep.task.num_classes
    meta = dict(prep.meta)
    meta["pseudo"] = {"run": str(Path(run).resolve()), "folds": [f.fold for f in loaded], "tta": tta,
                      "min_prob": min_prob, "from_prepared": str(prep.dir.resolve()),
                      "eval_images": int(len(rows)), "added": int(len(added)),
                      "per_class": np.bincount(added["label"].to_numpy(np.int64), minlength=k).tolist()}
    meta["counts"] = dict(meta.get("counts", {}), pseudo_images=int(len(added)))
    atomic_write_json(out / "prepare.json", meta)
    if (prep.dir / "stats.json").is_file():  # statistics of the labelled training images, unchanged
        shutil.copy2(prep.dir / "stats.json", out / "stats.json")
    log.info("pseudo: %d of %d eval images reach p >= %g -> %s", len(added), len(rows), min_prob, out)
    return meta
