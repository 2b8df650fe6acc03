"""The competition layout: ``train/train.csv`` + ``train/images/<id>_<gender>_<race>_<age>/``
(7 photos per person), optional ``eval/info.csv`` + ``eval/images/``; and label fixes.

Readers never open images (``prepare`` does) and never write. Problems a user must fix are
collected as ``{"file", "reason"}`` dicts so that prepare can list them all at once.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import task as L
from ..data.imageio import is_image_name
from ..errors import DataError
from .sources import SourceTable

TRAIN_CSV_COLUMNS = ("id", "gender", "race", "age", "path")
FIX_FIELDS = ("gender", "age", "swap_incorrect_normal")
TRUST_CHOICES = (None, "csv", "folder")


def _read_train_csv(csv: Path, problems: list[dict]) -> tuple[pd.DataFrame, set[str]]:
    """(usable rows with parsed ``gender_code`` / ``age_years``, folders of the rows that are not usable).

    A bad row is one problem line; its folder still counts as listed (not "folder not listed").
    Values go through the one parser of each attribute (``labels.parse_gender`` / ``parse_age``:
    '40' and '40.0' are 40 years, as in a CSV manifest)."""
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} not found; the competition layout needs train/train.csv "
                                f"with columns {','.join(TRAIN_CSV_COLUMNS)}")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)  # ids stay strings ('001498-1')
    missing = [c for c in TRAIN_CSV_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{csv}: missing column(s) {missing}; expected {','.join(TRAIN_CSV_COLUMNS)}")
    df["line"] = np.arange(len(df)) + 2  # header is line 1
    ok = np.ones(len(df), bool)
    genders, ages = np.full(len(df), -1), np.full(len(df), -1)
    for i, r in enumerate(df.itertuples()):
        for parse, value, out in ((L.parse_gender, r.gender, genders), (L.parse_age, r.age, ages)):
            try:
                out[i] = parse(value)
            except DataError as e:
                problems.append({"file": f"{csv}:{r.line}", "reason": f"{e}; fix the CSV row"})
                ok[i] = False
    df["gender_code"], df["age_years"] = genders, ages
    return df[ok].copy(), set(df.loc[~ok, "path"])


def _folder_fields(folder: str) -> tuple[int | None, int | None] | None:
    """(gender, age) from a folder name ``<id>_<gender>_<race>_<age>``; None where a field does not
    parse; None altogether for a name without those four fields."""
    parts = folder.rsplit("_", 3)
    if len(parts) != 4:
        return None
    out = []
    for parse, value in ((L.parse_gender, parts[1]), (L.parse_age, parts[3])):
        try:
            out.append(parse(value))
        except DataError:
            out.append(None)
    return out[0], out[1]


def _describe(gender: int | None, age: int | None, folder: str) -> str:
    parts = folder.rsplit("_", 3)
    g = L.GENDER_NAMES[gender] if gender is not None else f"gender {parts[1]!r}"
    a = str(age) if age is not None else f"age {parts[3]!r}"
    return f"{g}, {a}"


def _check_names(people: pd.DataFrame, images: Path, trust: str | None, fixed: set[tuple[str, str]],
                 problems: list[dict], warnings: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    """Cross-check each folder name's gender and age with its train.csv row.

    Default (``trust=None``): a disagreement is a problem naming both sides and the overrides.
    ``trust="csv"`` labels from train.csv (the competition's own rule), ``trust="folder"`` from the
    name; either way every disagreement is returned (prepare.json records it). A field that a
    label fix sets is not compared (the fix decides). Returns the persons that can be labelled."""
    conflicts, unnamed, dropped = [], [], []
    for i, person in people.iterrows():
        fields = _folder_fields(person["path"])
        if fields is None:
            unnamed.append(person["path"])
            continue
        csv_side = (int(person["gender_code"]), int(person["age_years"]))
        differ = [name for name, f, c in zip(("gender", "age"), fields, csv_side)
                  if f != c and (person["path"], name) not in fixed]
        if not differ:
            continue
        said = {"folder": person["path"], "line": int(person["line"]), "fields": differ,
                "csv": _describe(*csv_side, person["path"]), "name": _describe(*fields, person["path"])}
        where = str(images / person["path"])
        if trust is None:
            problems.append({"file": where, "reason": f"the folder name says {said['name']} but train.csv line "
                             f"{said['line']} says {said['csv']}; correct one of them, or choose the side with "
                             "--trust csv or --trust folder (or set the value with --fixes)"})
            dropped.append(i)
            continue
        if trust == "folder":
            if any(fields[k] is None for k, name in enumerate(("gender", "age")) if name in differ):
                problems.append({"file": where, "reason": f"--trust folder, but the folder name ({said['name']}) "
                                 "does not give a valid gender and age; rename the folder or use --trust csv"})
                dropped.append(i)
                continue
            for name, column, value in zip(("gender", "age"), ("gender_code", "age_years"), fields):
                if name in differ:
                    people.loc[i, column] = value
        conflicts.append({**said, "used": trust})
    if conflicts:
        warnings.append(f"{len(conflicts)} person folder name(s) disagree with train.csv on gender/age; labelled "
                        f"from {'train.csv' if trust == 'csv' else 'the folder names'} (--trust {trust}); listed in "
                        "prepare.json name_conflicts")
    if unnamed:
        warnings.append(f"{len(unnamed)} folder name(s) do not follow <id>_<gender>_<race>_<age> (e.g. "
                        f"{unnamed[0]!r}); their labels come from train.csv unchecked")
    return people.drop(index=dropped), conflicts


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
                     "gender": int(person["gender_code"]), "age_years": int(person["age_years"]),
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
        before = df.loc[sel, ["gender", "age_years", "mask"]].copy()
        if fx.field == "gender":
            df.loc[sel, "gender"] = L.parse_gender(fx.value)
        elif fx.field == "age":
            df.loc[sel, "age_years"] = L.parse_age(fx.value)
        else:  # swap incorrect_mask <-> normal
            m = df.loc[sel, "mask"]
            df.loc[sel, "mask"] = m.map({1: 2, 2: 1}).fillna(m).astype(int)
        df.loc[sel, "fix"] = (df.loc[sel, "fix"] + ";" + f"{fx.field}={fx.value}").str.strip(";")
        changed = int((df.loc[sel, ["gender", "age_years", "mask"]] != before).any(axis=1).sum())
        applied.append({"folder": fx.folder, "field": fx.field, "value": fx.value, "rows": int(sel.sum()),
                        "changed": changed})  # photos whose gender, age or mask it changed (0: already so)
    return applied


def read_competition(root: Path, *, old_age: int = 60, fixes: pd.DataFrame | None = None,
                     trust: str | None = None) -> SourceTable:
    """Read the competition layout under ``root`` (never writes).

    Args:
        root: the folder holding train/ (and eval/).
        old_age: first age of the oldest group.
        fixes: label fixes from :func:`read_fixes`.
        trust: where folder names and train.csv disagree on gender/age: None = a problem to fix,
            "csv" or "folder" = label from that side (recorded).
    """
    if trust not in TRUST_CHOICES:
        raise DataError(f"trust={trust!r}; choose one of csv, folder (or leave it unset)")
    problems: list[dict] = []
    warnings: list[str] = []
    people, bad_rows = _read_train_csv(root / "train" / "train.csv", problems)
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
    people = people.drop_duplicates("path")
    fixed = set() if fixes is None else {(f, fld) for f, fld in zip(fixes["folder"], fixes["field"])}
    listed = set(people["path"]) | bad_rows  # a person refused below is still listed
    people, conflicts = _check_names(people, images, trust, fixed, problems, warnings)
    rows = []
    for _, person in people.iterrows():
        folder = images / person["path"]
        if person["path"] not in folders:
            problems.append({"file": str(folder), "reason": f"listed in train.csv line {person['line']} but "
                             "the folder is missing"})
            continue
        rows += _person_rows(folder, person, problems, Path("train") / "images" / person["path"])
    for extra in sorted(folders - listed):
        problems.append({"file": str(images / extra), "reason": "folder not listed in train/train.csv; add a "
                         "row for it or remove it"})
    df = pd.DataFrame(rows, columns=["path", "group", "mask", "gender", "age_years", "person_id", "stem"])
    applied = _apply_fixes(df, fixes, "label fixes")
    task = L.Task.competition(old_age)
    df["age"] = L.age_group(df["age_years"].to_numpy(), old_age) if len(df) else []
    df["label"] = task.encode(df["mask"], df["gender"], df["age"]) if len(df) else []
    df["split"] = "train"
    df["image_id"] = df["path"]
    eval_df, eval_csv = read_eval(root, problems)
    table = pd.concat([df, eval_df], ignore_index=True)
    return SourceTable(rows=table, root=root, kind="competition", task=task, problems=problems,
                       warnings=warnings, fixes=applied, eval_csv=eval_csv,
                       meta={"trust": trust, "name_conflicts": conflicts})


def read_eval(root: Path, problems: list[dict]) -> tuple[pd.DataFrame, str | None]:
    """eval/info.csv's images as unlabelled rows in its order (none when there is no info.csv), and the
    info.csv path relative to ``root``; listed images that are missing become problems."""
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


def read_fixes(path: str | Path) -> pd.DataFrame:
    """Read a label-fixes CSV: columns ``folder,field,value``.

    ``field`` is ``gender`` (value male/female), ``age`` (value in years) or
    ``swap_incorrect_normal`` (value ignored): the person's incorrect_mask and normal
    photos trade labels, as for the three known swapped ids of the competition.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label fixes file {path} not found; pass an existing CSV "
                                "with columns folder,field,value")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"folder", "field"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected folder,field,value")
    if "value" not in df.columns:
        df["value"] = ""
    bad = sorted(set(df["field"]) - set(FIX_FIELDS))
    if bad:
        raise DataError(f"{path}: unknown field(s) {bad}; valid fields: {list(FIX_FIELDS)}")
    for row in df.itertuples():
        if row.field == "gender":
            L.parse_gender(row.value)
        elif row.field == "age":
            try:
                L.parse_age(row.value)
            except DataError:
                raise DataError(f"{path}: age fix for {row.folder!r} is {row.value!r}, "
                                "not a whole number") from None
    return df
