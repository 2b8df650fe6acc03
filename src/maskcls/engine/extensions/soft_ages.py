"""Soft age-group targets from the raw ages (``loss.age_sigma``).

A photo labelled 29 years is in the "<30" group, but nobody can tell 29 from 31 on a photo: the hard
label says 100 % "<30", a 31-year-old's says 100 % "30-59". With ``loss.age_sigma = σ`` training gives
each photo, for its age group, the share of a normal distribution N(age + 0.5, σ²) that falls in each
group (an age in whole years means [age, age + 1)), and keeps every other attribute's target one-hot.
Photos far from a threshold keep a hard target; those near it get a soft one. It is the gentle form of
the winners' age-boundary exclusion (``train.drop_ages``), which removes those photos instead, and the
group form of label-distribution learning for age estimation.

Training only: validation, out-of-fold scores, reports and the audit keep the dataset's hard labels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ...config import Config
from ...errors import ConfigError
from ...task import Task
from ..fold_data import require_raw_ages
from ..trainer.callbacks import Callback, Trainer


def group_shares(years: np.ndarray, sigma: float, thresholds: tuple[int, ...]) -> np.ndarray:
    """N×G: the share of N(years + 0.5, σ²) in each of the G = len(thresholds) + 1 groups that the sorted
    ``thresholds`` cut (group g is [thresholds[g-1], thresholds[g])). σ = 0 gives the hard groups."""
    years = np.asarray(years, np.float64)
    if sigma <= 0:
        group = np.searchsorted(np.asarray(thresholds), years, side="right")
        return np.eye(len(thresholds) + 1)[group]
    z = (np.asarray(thresholds, np.float64)[None, :] - (years[:, None] + 0.5)) / sigma
    cdf = torch.special.ndtr(torch.from_numpy(z)).numpy()
    edges = np.concatenate([np.zeros((len(years), 1)), cdf, np.ones((len(years), 1))], axis=1)
    return np.diff(edges, axis=1)


def age_soft_targets(rows: pd.DataFrame, labels: np.ndarray, task: Task, sigma: float, old_age: int) -> np.ndarray:
    """N×K float32 training targets: ``labels`` one-hot, with the age attribute's one spread over the age
    groups by :func:`group_shares` (thresholds 30 and ``old_age``, the training threshold). Rows without a
    raw age (pseudo-labelled ones) keep their one-hot target. :func:`check_age_sigma` has checked the rest."""
    labels = np.asarray(labels, np.int64)
    out = np.eye(task.num_classes, dtype=np.float32)[labels]
    known = np.flatnonzero(rows["age_years"].to_numpy(np.int64) >= 0)
    shares = group_shares(rows["age_years"].to_numpy(np.int64)[known], sigma, (30, old_age)).astype(np.float32)
    codes = task.split(labels[known])
    out[known] = 0.0
    for g in range(shares.shape[1]):
        cls = task.encode(*(g if a.name == "age" else codes[a.name] for a in task.attributes))
        out[known, cls] += shares[:, g]
    return out


def check_age_sigma(cfg: Config, task: Task, rows: pd.DataFrame) -> None:
    """``loss.age_sigma`` needs an age attribute and the labelled training ``rows``' ages in years, and replaces
    each image's target, so it cannot be combined with what replaces it too. Checked before a run starts."""
    sigma = cfg.loss.age_sigma
    if sigma <= 0:
        return
    require_raw_ages(f"loss.age_sigma={sigma:g}", "set loss.age_sigma=0", task, rows)
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0 or cfg.data.vcutmix > 0:
        raise ConfigError("loss.age_sigma gives each training image its own soft target, which MixUp/CutMix would "
                          "not carry: set data.mixup, data.cutmix and data.vcutmix to 0, or loss.age_sigma=0")
    if cfg.distill.teachers:
        raise ConfigError("loss.age_sigma and distill.teachers both set each training image's target (a student "
                          "learns its teachers' probabilities): set loss.age_sigma=0 with distill.teachers")


def soft_target_lookup(table: np.ndarray):
    """``EpochSetup.soft_targets`` for a per-row target table: (labels, row positions, images) → the rows'
    targets."""
    t = torch.from_numpy(table)

    def soft_targets(y: torch.Tensor, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        return t[idx.cpu()].to(y.device)
    return soft_targets


class SoftAges(Callback):
    """``loss.age_sigma``: every training row's target from its raw age, looked up by row position per batch."""

    def on_fold_build(self, trainer: Trainer) -> None:
        task, sigma = trainer.ctx.task, trainer.ctx.cfg.loss.age_sigma
        table = age_soft_targets(trainer.data.train_rows, trainer.data.train_labels, task, sigma,
                                 trainer.ages.old_age or task.old_age or 60)
        trainer.soft_targets = soft_target_lookup(table)

