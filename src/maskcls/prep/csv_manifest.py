"""A CSV manifest: ``path`` plus a ``label`` column (integers 0..K−1, optional ``label_name``)
and/or attribute columns ``mask``, ``gender``, ``age`` (names or numbers; age in years or
groups); optional ``group`` (the person) and ``split`` (train / eval). Paths are relative to
the CSV's folder.

Attribute columns define the task (any of mask × gender × age, e.g. gender × age: 6 classes
with gender and age heads) unless a ``label`` column disagrees with them, in which case the
label column is the task and the attributes are only kept in the manifest (a warning says so).
The task comes from the training rows only: ``split=eval`` rows are predicted and need no label.
A blank or NaN group on a training row is an error unless ``group_missing="row"`` (all such
rows would otherwise form one group "" whose persons straddle folds).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import task as L
from ..errors import DataError
from .sources import SourceTable, csv_lines

GROUP_MISSING = ("error", "row")
# Cells that mean "no group": blank, or what pandas writes or reads for a missing value.
MISSING_GROUP = {"", "nan", "none", "null", "<na>", "n/a"}


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
    for line, v in zip(series.index + 2, series):
        try:
            out.append(parse(v))
        except DataError as e:
            raise DataError(f"{csv}:{line}: column {name}: {e}") from None
    return np.asarray(out, dtype=np.int64)


def _parse_age_column(series: pd.Series, csv: Path, old_age: int) -> tuple[np.ndarray, np.ndarray]:
    """(age group, age in years or −1) per row: names like '<30', groups 0/1/2, or whole years."""
    names = {n: i for i, n in enumerate(L.age_names(old_age))}
    vals = series.astype(str).str.strip()
    if vals.isin(list(names)).all():
        return vals.map(names).to_numpy(np.int64), np.full(len(vals), -1)
    years = []
    for line, v in zip(vals.index + 2, vals):
        try:
            years.append(L.parse_age(v))
        except DataError:
            raise DataError(f"{csv}:{line}: age {v!r} is neither a whole number of years nor one of "
                            f"{list(names)}") from None
    num = np.asarray(years, np.int64)
    if num.max(initial=0) <= 2:  # already groups 0/1/2
        return num, np.full(len(num), -1)
    return L.age_group(num, old_age), num


def _label_column(df: pd.DataFrame, csv: Path, num_classes: int | None) -> tuple[np.ndarray, int]:
    lab = pd.to_numeric(df["label"].str.strip(), errors="coerce")
    bad = np.flatnonzero(lab.isna().to_numpy() | (lab % 1 != 0).to_numpy() | (lab < 0).to_numpy())
    if len(bad):
        raise DataError(f"{csv}:{df.index[bad[0]] + 2}: label {df['label'].iloc[bad[0]]!r} is not an integer >= 0")
    labels = lab.to_numpy(np.int64)
    k = int(labels.max(initial=-1)) + 1 if num_classes is None else num_classes
    if (labels >= k).any():
        i = int(np.flatnonzero(labels >= k)[0])
        raise DataError(f"{csv}:{df.index[i] + 2}: label {labels[i]} is out of range 0..{k - 1} (--num-classes)")
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
        first = df.index[differ[0]] + 2 if len(differ) else "-"
        warnings.append(f"the label column disagrees with the {'/'.join(a.name for a in task.attributes)} "
                        f"column(s) in {len(differ)} row(s) (first: line {first}): "
                        "training on the label column; drop it to train on the attributes")
    else:
        codes = pd.DataFrame({c: -1 for c in ("mask", "gender", "age", "age_years")}, index=df.index)
        labels, k = _label_column(df, csv, num_classes)
    codes["label"] = labels
    return L.Task.flat(_generic_names(df, codes, k, csv)), codes


def read_csv_source(csv: Path, *, old_age: int = 60, allow_absolute: bool = False,
                    num_classes: int | None = None, group_missing: str = "error") -> SourceTable:
    """Read a CSV manifest; paths are relative to the CSV's folder.

    Only training rows need labels: ``split=eval`` rows are predicted, and their label and
    attribute cells may be blank. ``group_missing``: what a training row with a blank (or NaN)
    group means — "error" (listing the rows) or "row" (that row is its own group).
    """
    if group_missing not in GROUP_MISSING:
        raise DataError(f"group_missing={group_missing!r}; choose one of {', '.join(GROUP_MISSING)}")
    df = _read_table(csv, allow_absolute)
    root = csv.parent.resolve()
    split = _split_column(df, csv)
    train = (split == "train").to_numpy()
    warnings: list[str] = []
    task, codes = _choose_task(df[train], csv, old_age, num_classes, warnings)
    out = pd.DataFrame({"path": [_safe_rel(root, p, allow_absolute) for p in df["path"]]})
    for c in ("mask", "gender", "age", "age_years", "label"):
        out[c] = -1
        out.loc[train, c] = codes[c].to_numpy()
    out["group"], meta = _groups(df, out["path"], train, csv, group_missing, warnings)
    out["split"] = split.to_numpy()
    out["image_id"] = out["path"]
    out["fix"] = ""
    out, dup_warn = _dedupe(out, csv)
    warnings += dup_warn
    return SourceTable(rows=out, root=root, kind="csv", task=task, problems=[], warnings=warnings, meta=meta)


def read_csv_images(csv: Path, *, task: L.Task, allow_absolute: bool = False) -> SourceTable:
    """The images of a CSV to predict with a run of ``task``: its ``split=eval`` rows, or every row when
    none is marked eval. Labels are not needed (and not read); attribute columns, if any, must be the
    run's attributes (a gender/age CSV is not for a mask model)."""
    df = _read_table(csv, allow_absolute, need_labels=False)
    if "split" in df.columns and (df["split"].str.strip().str.lower() == "eval").any():
        df = df[df["split"].str.strip().str.lower() == "eval"]
    named = [c for c in L.ATTRIBUTE_ORDER if c in df.columns]
    run_attrs = [a.name for a in task.attributes]
    if named and named != run_attrs:
        raise DataError(f"{csv} has attribute column(s) {named} but the run predicts "
                        f"{'/'.join(run_attrs) or f'{task.num_classes} plain classes'}; predict it with a run "
                        "trained on that task")
    out = pd.DataFrame({"path": [_safe_rel(csv.parent.resolve(), p, allow_absolute) for p in df["path"]]})
    for c in ("mask", "gender", "age", "age_years", "label"):
        out[c] = -1
    out["group"], out["split"], out["image_id"], out["fix"] = "row:" + out["path"], "eval", out["path"], ""
    out, warnings = _dedupe(out, csv)
    return SourceTable(rows=out, root=csv.parent.resolve(), kind="csv", task=task, warnings=warnings)


def _read_table(csv: Path, allow_absolute: bool, *, need_labels: bool = True) -> pd.DataFrame:
    """The CSV as strings, with a path column whose paths stay inside the CSV's folder."""
    if not csv.is_file():
        raise FileNotFoundError(f"CSV manifest {csv} not found")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "path" not in df.columns:
        raise DataError(f"{csv}: no 'path' column; a CSV manifest needs path plus label (or mask,gender,age)")
    if need_labels and "label" not in df.columns and not any(c in df.columns for c in L.ATTRIBUTE_ORDER):
        raise DataError(f"{csv}: needs a 'label' column (integers 0..K-1) or attribute columns (mask, gender, age)")
    root = csv.parent.resolve()
    for i, p in enumerate(df["path"]):
        if _safe_rel(root, p, allow_absolute) is None:
            why = "is absolute (pass --allow-absolute to accept it)" if Path(p).is_absolute() else \
                "escapes the CSV's folder via '..' (refused)"
            raise DataError(f"{csv}:{i + 2}: path {p!r} {why}")
    return df


def _split_column(df: pd.DataFrame, csv: Path) -> pd.Series:
    if "split" not in df.columns:
        return pd.Series("train", index=df.index)
    split = df["split"].str.strip().str.lower()
    bad = ~split.isin(["train", "eval"]).to_numpy()
    if bad.any():
        raise DataError(f"{csv}: split values {sorted(set(df['split'][bad]))} invalid (line(s) {csv_lines(bad)}); "
                        "use train or eval")
    if not (split == "train").any():
        raise DataError(f"{csv}: no split=train rows; prepare needs labelled training rows")
    return split


def _groups(df: pd.DataFrame, paths: pd.Series, train: np.ndarray, csv: Path, group_missing: str,
            warnings: list[str]) -> tuple[pd.Series, dict]:
    """The group (person) of each row, and what prepare.json records about missing ones."""
    if "group" not in df.columns:
        warnings.append("no 'group' column: every image is its own group, so photos of one person may land "
                        "in different folds (leak); add a group column naming the person")
        return paths.copy(), {}
    group = df["group"].astype(str)
    blank = group.str.strip().str.lower().isin(MISSING_GROUP).to_numpy()
    group = group.where(~blank, "row:" + paths)  # eval rows need no group; the row itself is one
    missing = blank & train
    if missing.any() and group_missing == "error":
        raise DataError(f"{csv}: {int(missing.sum())} training row(s) have a blank or NaN group (line(s) "
                        f"{csv_lines(missing)}); together they would form one group \"\" whose persons straddle "
                        "folds. Fill in the group, or pass --group-missing row to make each such row its own group")
    if missing.any():
        warnings.append(f"{int(missing.sum())} training row(s) without a group (line(s) {csv_lines(missing)}) are "
                        "each their own group (--group-missing row)")
    return group, {"group_missing": group_missing, "rows_without_group": int(missing.sum())}


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
