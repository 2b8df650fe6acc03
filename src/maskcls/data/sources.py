"""Reading a dataset source into a table of images (one row per image).

Two kinds of source:
* the competition layout: ``train/train.csv`` + ``train/images/<id>_<gender>_<race>_<age>/``
  (7 photos per person), optional ``eval/info.csv`` + ``eval/images/``;
* a CSV manifest (``path`` + ``label`` or ``mask,gender,age``; optional ``group``,
  ``label_name``, ``split``) — the reference recipe's own input, and any face-attribute task.

Readers never open images (``prepare`` does) and never write. Problems a user must fix are
collected as ``{"file", "reason"}`` dicts so that prepare can list them all at once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from ..errors import DataError
from .imageio import is_image_name

log = logging.getLogger(__name__)

TRAIN_CSV_COLUMNS = ("id", "gender", "race", "age", "path")


@dataclass
class SourceTable:
    """What a reader found: image rows, the label space, and problems/warnings."""
    rows: pd.DataFrame
    root: Path
    kind: str                      # "competition" | "csv"
    task: str                      # "mask_gender_age" | "generic"
    class_names: list[str]
    problems: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fixes: list[dict] = field(default_factory=list)
    eval_csv: str | None = None


def detect_kind(source: Path) -> str:
    if source.is_file() and source.suffix.lower() == ".csv":
        return "csv"
    if source.is_dir():
        if (source / "train").is_dir() or (source / "train.csv").exists():
            return "competition"
        raise FileNotFoundError(f"{source}: no train/ folder; expected the competition layout "
                                "(train/train.csv, train/images/) or pass a CSV manifest file")
    raise FileNotFoundError(f"dataset source {source} not found; pass the competition folder or a CSV file")


# --------------------------------------------------------------------------- competition
def _read_train_csv(csv: Path, problems: list[dict]) -> pd.DataFrame:
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found; the competition layout needs train/train.csv "
                                f"with columns {','.join(TRAIN_CSV_COLUMNS)}")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)  # ids stay strings ('001498-1')
    missing = [c for c in TRAIN_CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {missing}; expected {','.join(TRAIN_CSV_COLUMNS)}")
    df["line"] = np.arange(len(df)) + 2  # header is line 1
    ok = np.ones(len(df), bool)
    for i, r in enumerate(df.itertuples()):
        where = f"{csv}:{r.line}"
        if r.gender.strip().lower() not in ("male", "female"):
            problems.append({"file": where, "reason": f"gender {r.gender!r} is neither male nor female; "
                             "fix the CSV row"})
            ok[i] = False
        if not r.age.strip().isdigit():
            problems.append({"file": where, "reason": f"age {r.age!r} is not a whole number of years; fix the CSV row"})
            ok[i] = False
    return df[ok].copy()


def _person_rows(folder: Path, person: pd.Series, problems: list[dict], rel: Path) -> list[dict]:
    rows, stems = [], {}
    for name in sorted(os.listdir(folder)):
        if not is_image_name(name):
            continue  # ._* (macOS), .DS_Store, hidden files, non-images
        stem = name.rsplit(".", 1)[0]
        if stem not in L.STEM_TO_MASK:
            problems.append({"file": str(folder / name), "reason": f"unknown file stem {stem!r}; expected "
                             "mask1..mask5, incorrect_mask, normal"})
            continue
        if stem in stems:
            problems.append({"file": str(folder / name), "reason": f"second photo with stem {stem!r} "
                             f"(also {stems[stem]}); keep one"})
            continue
        stems[stem] = name
        rows.append({"path": str(rel / name), "group": person["path"], "mask": L.STEM_TO_MASK[stem],
                     "gender": L.parse_gender(person["gender"]), "age_years": int(person["age"]),
                     "person_id": person["id"], "stem": stem})
    if len(stems) != 7:
        absent = sorted(set(L.STEM_TO_MASK) - set(stems))
        problems.append({"file": str(folder), "reason": f"{len(stems)} photos instead of 7; missing {absent}"})
    return rows


def _apply_fixes(df: pd.DataFrame, fixes: pd.DataFrame | None, source: str) -> list[dict]:
    applied: list[dict] = []
    df["fix"] = ""
    if fixes is None:
        return applied
    known = set(df["group"])
    unknown = sorted(set(fixes["folder"]) - known)
    if unknown:
        raise DataError(f"{source}: fixes name unknown person folder(s) {unknown[:5]}; "
                        "use the folder name (e.g. 000001_female_Asian_45)")
    for fx in fixes.itertuples():
        sel = df["group"] == fx.folder
        if fx.field == "gender":
            df.loc[sel, "gender"] = L.parse_gender(fx.value)
        elif fx.field == "age":
            df.loc[sel, "age_years"] = int(fx.value)
        else:  # swap incorrect_mask <-> normal
            m = df.loc[sel, "mask"]
            df.loc[sel, "mask"] = m.map({1: 2, 2: 1}).fillna(m).astype(int)
        df.loc[sel, "fix"] = (df.loc[sel, "fix"] + ";" + f"{fx.field}={fx.value}").str.strip(";")
        applied.append({"folder": fx.folder, "field": fx.field, "value": fx.value, "rows": int(sel.sum())})
    return applied


def read_competition(root: Path, *, old_age: int = 60, fixes: pd.DataFrame | None = None) -> SourceTable:
    """Read the competition layout under ``root`` (never writes)."""
    problems: list[dict] = []
    warnings: list[str] = []
    people = _read_train_csv(root / "train" / "train.csv", problems)
    images = root / "train" / "images"
    if not images.is_dir():
        raise FileNotFoundError(f"{images} not found; the competition layout needs one folder per person "
                                "under train/images/")
    folders = {n for n in os.listdir(images) if not n.startswith(".") and (images / n).is_dir()}
    dup_ids = people["id"][people["id"].duplicated()].unique()
    if len(dup_ids):
        warnings.append(f"id(s) {list(dup_ids)[:5]} name more than one person; persons are keyed by folder")
    dup_folders = people["path"][people["path"].duplicated()].unique()
    for f in dup_folders:
        problems.append({"file": str(root / "train" / "train.csv"), "reason": f"folder {f!r} listed twice"})
    rows = []
    for _, person in people.drop_duplicates("path").iterrows():
        folder = images / person["path"]
        if person["path"] not in folders:
            problems.append({"file": str(folder), "reason": f"listed in train.csv line {person['line']} but "
                             "the folder is missing"})
            continue
        rows += _person_rows(folder, person, problems, Path("train") / "images" / person["path"])
    for extra in sorted(folders - set(people["path"])):
        problems.append({"file": str(images / extra), "reason": "folder not listed in train/train.csv; add a "
                         "row for it or remove it"})
    df = pd.DataFrame(rows, columns=["path", "group", "mask", "gender", "age_years", "person_id", "stem"])
    applied = _apply_fixes(df, fixes, "label fixes")
    df["age"] = L.age_group(df["age_years"].to_numpy(), old_age) if len(df) else []
    df["label"] = L.encode(df["mask"], df["gender"], df["age"]) if len(df) else []
    df["split"] = "train"
    df["image_id"] = df["path"]
    eval_df, eval_csv = _read_eval(root, problems)
    table = pd.concat([df, eval_df], ignore_index=True)
    return SourceTable(rows=table, root=root, kind="competition", task="mask_gender_age",
                       class_names=L.class_names(old_age), problems=problems, warnings=warnings,
                       fixes=applied, eval_csv=eval_csv)


def _read_eval(root: Path, problems: list[dict]) -> tuple[pd.DataFrame, str | None]:
    info = root / "eval" / "info.csv"
    cols = ["path", "group", "mask", "gender", "age", "age_years", "label", "split", "image_id"]
    if not info.is_file():
        return pd.DataFrame(columns=cols), None
    df = pd.read_csv(info, dtype=str, keep_default_na=False)
    if "ImageID" not in df.columns:
        raise DataError(f"{info}: no ImageID column; expected columns ImageID,ans")
    present = set(os.listdir(root / "eval" / "images")) if (root / "eval" / "images").is_dir() else set()
    for img in df["ImageID"]:
        if img not in present:
            problems.append({"file": str(root / "eval" / "images" / img), "reason": "listed in eval/info.csv "
                             "but missing"})
    out = pd.DataFrame({"path": [f"eval/images/{i}" for i in df["ImageID"]],
                        "group": [f"eval:{i}" for i in df["ImageID"]], "image_id": df["ImageID"]})
    for c in ("mask", "gender", "age", "age_years", "label"):
        out[c] = -1
    out["split"] = "eval"
    return out[cols], str(info.relative_to(root))


# --------------------------------------------------------------------------- CSV manifest
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
    names = {n: i for i, n in enumerate(L.age_names(old_age))}
    vals = series.astype(str).str.strip()
    if vals.isin(list(names)).all():
        return vals.map(names).to_numpy(np.int64), np.full(len(vals), -1)
    num = pd.to_numeric(vals, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() | (num % 1 != 0).to_numpy())
    if len(bad):
        raise DataError(f"{csv}:{bad[0] + 2}: age {vals.iloc[bad[0]]!r} is neither a whole number of years nor "
                        f"one of {list(names)}")
    num = num.to_numpy(np.int64)
    if num.max(initial=0) <= 2:  # already groups 0/1/2
        return num, np.full(len(num), -1)
    return L.age_group(num, old_age), num


def read_csv_source(csv: Path, *, old_age: int = 60, allow_absolute: bool = False,
                    num_classes: int | None = None) -> SourceTable:
    """Read a CSV manifest; paths are relative to the CSV's folder."""
    if not csv.is_file():
        raise FileNotFoundError(f"CSV manifest {csv} not found")
    root = csv.parent.resolve()
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    if "path" not in df.columns:
        raise DataError(f"{csv}: no 'path' column; a CSV manifest needs path plus label (or mask,gender,age)")
    has_attrs = {"mask", "gender", "age"} <= set(df.columns)
    if "label" not in df.columns and not has_attrs:
        raise DataError(f"{csv}: needs a 'label' column (integers 0..K-1) or the columns mask,gender,age")
    problems, warnings = [], []
    stored = [_safe_rel(root, p, allow_absolute) for p in df["path"]]
    for i, (p, s) in enumerate(zip(df["path"], stored)):
        if s is None:
            why = "is absolute (pass --allow-absolute to accept it)" if Path(p).is_absolute() else \
                "escapes the CSV's folder via '..' (refused)"
            raise DataError(f"{csv}:{i + 2}: path {p!r} {why}")
    out = pd.DataFrame({"path": stored})
    if has_attrs:
        out["mask"] = _parse_attr(df["mask"], L.parse_mask, "mask", csv)
        out["gender"] = _parse_attr(df["gender"], L.parse_gender, "gender", csv)
        out["age"], out["age_years"] = _parse_age_column(df["age"], csv, old_age)
        out["label"] = L.encode(out["mask"], out["gender"], out["age"])
        task, names = "mask_gender_age", L.class_names(old_age)
    else:
        lab = pd.to_numeric(df["label"].str.strip(), errors="coerce")
        bad = np.flatnonzero(lab.isna().to_numpy() | (lab % 1 != 0).to_numpy() | (lab < 0).to_numpy())
        if len(bad):
            raise DataError(f"{csv}:{bad[0] + 2}: label {df['label'].iloc[bad[0]]!r} is not an integer >= 0")
        out["label"] = lab.astype(np.int64)
        k = int(out["label"].max()) + 1 if num_classes is None else num_classes
        if (out["label"] >= k).any():
            i = int(np.flatnonzero(out["label"] >= k)[0])
            raise DataError(f"{csv}:{i + 2}: label {out['label'].iloc[i]} is out of range 0..{k - 1} "
                            "(--num-classes)")
        for c in ("mask", "gender", "age", "age_years"):
            out[c] = -1
        task, names = "generic", _generic_names(df, out, k, csv)
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
    return SourceTable(rows=out, root=root, kind="csv", task=task, class_names=names,
                       problems=problems, warnings=warnings)


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
