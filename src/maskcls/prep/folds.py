"""Person-grouped, label-stratified K-fold assignment.

Rows of one group (a person) always share a fold, so no person's photos are in both the
training and the validation part of a split — the reference's image-level split leaked.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import ConfigError, DataError


def assign_folds(groups: np.ndarray, labels: np.ndarray, *, k: int = 5,
                 seed: int = 719) -> tuple[np.ndarray, list[str]]:
    """Return (fold per row, warnings). Deterministic for a seed.

    Args:
        groups: group key per row (person folder name, or the CSV's group column).
        labels: class id per row; stratification keeps each fold's class mix near the whole.
        k: number of folds (>= 2).
        seed: shuffling seed.
    """
    groups = np.asarray(groups).astype(str)
    labels = np.asarray(labels)
    n_groups = len(np.unique(groups))
    if k < 2:
        raise DataError(f"--folds must be at least 2, got {k}")
    if n_groups < k:
        raise DataError(f"only {n_groups} group(s) (persons) for {k} folds; use --folds {max(2, n_groups)} "
                        "or add data")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(groups), -1, dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for f, (_, val) in enumerate(splitter.split(np.zeros(len(groups)), labels, groups)):
            fold[val] = f
    notes = [str(w.message) for w in caught]
    return fold, notes


def parse_fold_list(spec: str, *, words: tuple[str, ...] = ("all",)) -> list[int]:
    """A ``--folds`` list: '0' → [0]; '0,2' → [0, 2] (sorted, each once). ``words`` are the keywords the
    caller handles itself ('all', 'best'), named in the error for anything else."""
    try:
        folds = sorted({int(s) for s in str(spec).split(",")})
    except ValueError:
        raise ConfigError(f"--folds {spec!r}: use {', '.join(words)}, one fold like 0, or a list like 0,2") from None
    return folds
