"""Person-grouped, label-stratified K-fold assignment.

Rows of one group (a person) always share a fold, so no person's photos are in both the
training and the validation part of a split — the reference's image-level split leaked.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import ConfigError, DataError


def assign_folds(groups: np.ndarray, labels: np.ndarray, *, k: int = 5, seed: int = 719,
                 class_names: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Return (fold per row, warnings). Deterministic for a seed.

    Args:
        groups: group key per row (person folder name, or the CSV's group column).
        labels: class id per row; stratification keeps each fold's class mix near the whole.
        k: number of folds (>= 2, and at most the number of groups).
        seed: shuffling seed.
        class_names: names of the class ids, for the warnings.

    A class with fewer groups than ``k`` cannot be in every fold's validation part: that is a warning
    (saying which classes and what ``--folds`` would put every class in every fold), not an error, so a
    small set can still be prepared (and trained or ``lr-find``-ed on). When no class has ``k`` rows there
    is nothing to stratify and the folds are made by group alone (still person-disjoint).
    """
    groups = np.asarray(groups).astype(str)
    labels = np.asarray(labels)
    n_groups = len(np.unique(groups))
    if k < 2:
        raise DataError(f"--folds must be at least 2, got {k}")
    if n_groups < k:
        raise DataError(f"only {n_groups} group(s) (persons) for {k} folds; use --folds {max(2, n_groups)} "
                        "or add data")
    _, counts = np.unique(labels, return_counts=True)
    strata = labels if counts.max() >= k else np.zeros(len(labels), np.int64)  # sklearn refuses the other case
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(groups), -1, dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for f, (_, val) in enumerate(splitter.split(np.zeros(len(groups)), strata, groups)):
            fold[val] = f
    # sklearn's "least populated class in y has only N members" counts rows, not groups: said better below
    notes = [str(w.message) for w in caught if "least populated class" not in str(w.message)]
    short = few_groups_note(groups, labels, k, class_names)
    return fold, ([short] if short else []) + notes


def few_groups_note(groups: np.ndarray, labels: np.ndarray, k: int, class_names: list[str] | None = None) -> str | None:
    """One line naming the classes with fewer groups than ``k`` folds and the ``--folds`` that would do, or None."""
    per_class = pd.DataFrame({"group": groups, "label": labels}).groupby("label")["group"].nunique().sort_values()
    short = per_class[per_class < k]
    if short.empty:
        return None
    name = (lambda y: repr(str(class_names[y]))) if class_names else (lambda y: f"class {y}")
    listed = ", ".join(f"{name(int(y))} ({n})" for y, n in short.head(3).items())
    listed += f" and {len(short) - 3} more" if len(short) > 3 else ""
    fewest = int(short.iloc[0])
    works = (f"--folds {fewest} would put every class in every fold" if fewest >= 2 else
             "no --folds can put a class of one group in more than one fold: add groups (persons) to it")
    return (f"{len(short)} of {len(per_class)} classes have fewer groups (persons) than the {k} folds, so some "
            f"folds train or validate without them: {listed}; {works}")


def parse_fold_list(spec: str, *, words: tuple[str, ...] = ("all",)) -> list[int]:
    """A ``--folds`` list: '0' → [0]; '0,2' → [0, 2] (sorted, each once). ``words`` are the keywords the
    caller handles itself ('all', 'best'), named in the error for anything else."""
    try:
        folds = sorted({int(s) for s in str(spec).split(",")})
    except ValueError:
        raise ConfigError(f"--folds {spec!r}: use {', '.join(words)}, one fold like 0, or a list like 0,2") from None
    return folds
