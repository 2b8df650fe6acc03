"""A CSV manifest: ``path`` plus a ``label`` column (integers 0..K−1, optional ``label_name``)
and/or attribute columns ``mask``, ``gender``, ``age`` (names or numbers; age in years or
groups); optional ``group`` (the person) and ``split`` (train / eval). Paths are relative to
the CSV's folder.

Attribute columns define the task (any of mask × gender × age, e.g. gender × age: 6 classes
with gender and age heads) unless a ``label`` column disagrees with them, in which case the
label column is the task and the attributes are only kept in the manifest (a warning says so).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from ..errors import DataError
from .sources import SourceTable


def _safe_rel(root: Path, p: str, allow_absolute: bool) -> str | None:
    """Return the path to store, or None when it escapes ``root``."""
    pp = Path(p)
    if pp.is_absolute():
        return str(pp) if allow_absolute else None
    if ".." in pp.parts:
        resolved = (root / pp).resolve()
        if not str(resolved).startswith(str(root.resolve()) + os.sep):
            return None
    return str(pp)


def _parse_attr(series: pd.Series, parse, name: str, csv: Path) -> np.ndarray:
    out = []
    for i, v in enumerate(series):
        try:
            out.append(parse(v))
        except DataError as e:
            raise DataError(f"{csv}:{i + 2}: column {name}: {e}") from None
    return np.asarray(out, dtype=np.int64)


def _parse_age_column(series: pd.Series, csv: Path, old_age: int) -> tuple[np.ndarray, np.ndarray]:
    """(age group, age in years or −1) per row: names like '<30', groups 0/1/2, or whole years."""
    names = {n: i for i, n in enumerate(L.age_names(old_age))}
    vals = series.astype(str).str.strip()
    if vals.isin(list(names)).all():
        return vals.map(names).to_numpy(np.int64), np.full(len(vals), -1)
    years = []
    for i, v in enumerate(vals):
        try:
            years.append(L.parse_age(v))
        except DataError:
            raise DataError(f"{csv}:{i + 2}: age {v!r} is neither a whole number of years nor one of "
                            f"{list(names)}") from None
    num = np.asarray(years, np.int64)
    if num.max(initial=0) <= 2:  # already groups 0/1/2
        return num, np.full(len(num), -1)
    return L.age_group(num, old_age), num


def _label_column(df: pd.DataFrame, csv: Path, num_classes: int | None) -> tuple[np.ndarray, int]:
    lab = pd.to_numeric(df["label"].str.strip(), errors="coerce")
    bad = np.flatnonzero(lab.isna().to_numpy() | (lab % 1 != 0).to_numpy() | (lab < 0).to_numpy())
    if len(bad):
        raise DataError(f"{csv}:{bad[0] + 2}: label {df['label'].iloc[bad[0]]!r} is not an integer >= 0")
    labels = lab.to_numpy(np.int64)
    k = int(labels.max(initial=-1)) + 1 if num_classes is None else num_classes
    if (labels >= k).any():
        i = int(np.flatnonzero(labels >= k)[0])
        raise DataError(f"{csv}:{i + 2}: label {labels[i]} is out of range 0..{k - 1} (--num-classes)")
    return labels, k


def _attributes(df: pd.DataFrame, csv: Path, old_age: int) -> tuple[L.Task, pd.DataFrame]:
    """The attribute task of the mask/gender/age columns present, and their parsed codes."""
    names = tuple(c for c in L.ATTRIBUTE_ORDER if c in df.columns)
    codes = pd.DataFrame({c: -1 for c in ("mask", "gender", "age", "age_years")}, index=df.index)
    if "mask" in names:
        codes["mask"] = _parse_attr(df["mask"], L.parse_mask, "mask", csv)
    if "gender" in names:
        codes["gender"] = _parse_attr(df["gender"], L.parse_gender, "gender", csv)
    if "age" in names:
        codes["age"], codes["age_years"] = _parse_age_column(df["age"], csv, old_age)
    return L.Task.competition(old_age, names), codes


def _choose_task(df: pd.DataFrame, csv: Path, old_age: int, num_classes: int | None,
                 warnings: list[str]) -> tuple[L.Task, pd.DataFrame]:
    """Attribute columns make the task, unless a label column disagrees with them (then the label does)."""
    has_attrs = any(c in df.columns for c in L.ATTRIBUTE_ORDER)
    if has_attrs:
        task, codes = _attributes(df, csv, old_age)
        codes["label"] = task.encode(*(codes[a.name] for a in task.attributes))
        if "label" not in df.columns:
            return task, codes
        labels, k = _label_column(df, csv, num_classes)
        differ = np.flatnonzero(labels != codes["label"].to_numpy())
        if not len(differ) and (num_classes is None or num_classes == task.num_classes):
            return task, codes
        warnings.append(f"the label column disagrees with the {'/'.join(a.name for a in task.attributes)} "
                        f"column(s) in {len(differ)} row(s) (first: line {differ[0] + 2 if len(differ) else '-'}): "
                        "training on the label column; drop it to train on the attributes")
    else:
        codes = pd.DataFrame({c: -1 for c in ("mask", "gender", "age", "age_years")}, index=df.index)
        labels, k = _label_column(df, csv, num_classes)
    codes["label"] = labels
    return L.Task.flat(_generic_names(df, codes, k, csv)), codes


def read_csv_source(csv: Path, *, old_age: int = 60, allow_absolute: bool = False,
                    num_classes: int | None = None) -> SourceTable:
    """Read a CSV manifest; paths are relative to the CSV's folder."""
    if not csv.is_file():
        raise FileNotFoundError(f"CSV manifest {csv} not found")
    root = csv.parent.resolve()
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "path" not in df.columns:
        raise DataError(f"{csv}: no 'path' column; a CSV manifest needs path plus label (or mask,gender,age)")
    if "label" not in df.columns and not any(c in df.columns for c in L.ATTRIBUTE_ORDER):
        raise DataError(f"{csv}: needs a 'label' column (integers 0..K-1) or attribute columns (mask, gender, age)")
    problems, warnings = [], []
    stored = [_safe_rel(root, p, allow_absolute) for p in df["path"]]
    for i, (p, s) in enumerate(zip(df["path"], stored)):
        if s is None:
            why = "is absolute (pass --allow-absolute to accept it)" if Path(p).is_absolute() else \
                "escapes the CSV's folder via '..' (refused)"
            raise DataError(f"{csv}:{i + 2}: path {p!r} {why}")
    task, codes = _choose_task(df, csv, old_age, num_classes, warnings)
    out = pd.DataFrame({"path": stored})
    for c in ("mask", "gender", "age", "age_years", "label"):
        out[c] = codes[c].to_numpy()
    if "group" in df.columns:
        out["group"] = df["group"].astype(str)
    else:
        out["group"] = out["path"]
        warnings.append("no 'group' column: every image is its own group, so photos of one person may land "
                        "in different folds (leak); add a group column naming the person")
    out["split"] = df["split"].str.strip().str.lower() if "split" in df.columns else "train"
    bad_split = sorted(set(out["split"]) - {"train", "eval"})
    if bad_split:
        raise DataError(f"{csv}: split values {bad_split} invalid; use train or eval")
    out.loc[out["split"] == "eval", ["label"]] = -1
    out["image_id"] = out["path"]
    out["fix"] = ""
    out, dup_warn = _dedupe(out, csv)
    warnings += dup_warn
    return SourceTable(rows=out, root=root, kind="csv", task=task, problems=problems, warnings=warnings)


def _generic_names(df: pd.DataFrame, out: pd.DataFrame, k: int, csv: Path) -> list[str]:
    names = [str(i) for i in range(k)]
    if "label_name" in df.columns:
        pairs = pd.DataFrame({"l": out["label"], "n": df["label_name"]}).drop_duplicates()
        if pairs["l"].duplicated().any():
            lab = int(pairs["l"][pairs["l"].duplicated()].iloc[0])
            raise DataError(f"{csv}: label {lab} has several label_name values; make them consistent")
        for lab, n in zip(pairs["l"], pairs["n"]):
            names[int(lab)] = str(n)
    return names


def _dedupe(out: pd.DataFrame, csv: Path) -> tuple[pd.DataFrame, list[str]]:
    dup = out["path"].duplicated(keep=False)
    if not dup.any():
        return out, []
    conflict = out[dup].groupby("path")["label"].nunique()
    if (conflict > 1).any():
        p = conflict[conflict > 1].index[0]
        raise DataError(f"{csv}: path {p!r} appears more than once with different labels; keep one row")
    n = int(out["path"].duplicated().sum())
    return out.drop_duplicates("path").reset_index(drop=True), [f"{n} duplicated row(s) dropped"]
