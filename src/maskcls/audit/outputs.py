"""The audit's files: ``audit.csv`` (every finding, ranked), and the top findings' suggestions in a
form the user can review and feed back — ``fixes.csv`` for the competition layout (exactly what
``maskcls prepare --fixes`` reads), ``corrected.csv`` for a CSV manifest (``--fixes`` reads the
competition layout only). Nothing is applied: the user edits, then prepares again.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..fsutil import atomic_write_text
from ..task import Task
from .findings import SWAP

FIXES_COLUMNS = ["folder", "field", "value"]
FIXABLE_KINDS = {"person_gender": "gender", "person_age": "age", SWAP: SWAP}  # finding kind → fixes field


def write_audit_csv(path: Path, findings: pd.DataFrame) -> None:
    atomic_write_text(path, findings.to_csv(index=False, float_format="%.6f"))


def nearest_age(years: int, group: int, old_age: int) -> int:
    """The whole age in ``group`` (<30, 30..old−1, >=old) closest to ``years``: the smallest edit."""
    lo, hi = ((0, 29), (30, old_age - 1), (old_age, 10**3))[group]
    return int(np.clip(years, lo, hi))


def competition_fixes(findings: pd.DataFrame, rows: pd.DataFrame, task: Task) -> tuple[pd.DataFrame, int]:
    """(folder,field,value rows for ``findings``, how many findings the format cannot express).

    A single photo's mask state comes from its file name (mask1…, incorrect_mask, normal), which a
    fixes file cannot change: those findings stay in audit.csv only.
    """
    age_years = rows.groupby("group")["age_years"].first()
    out = []
    for f in findings.itertuples():
        field = FIXABLE_KINDS.get(f.kind)
        if field is None:
            continue
        if field == "gender":
            value = f.suggested
        elif field == "age":
            value = str(nearest_age(int(age_years[f.group]), task.attribute("age").classes.index(f.suggested),
                                    task.old_age or 60))
        else:
            value = ""
        out.append((f.group, field, value))
    return pd.DataFrame(out, columns=FIXES_COLUMNS), len(findings) - len(out)


def write_fixes_csv(path: Path, fixes: pd.DataFrame) -> None:
    atomic_write_text(path, fixes[FIXES_COLUMNS].to_csv(index=False))


# ----------------------------------------------------------------------------- CSV manifests

def _corrected_codes(findings: pd.DataFrame, rows: pd.DataFrame, task: Task) -> tuple[dict, dict]:
    """({path: {column: new code}}, {path: note}) for the findings, on the manifest's codes."""
    changes: dict[str, dict[str, int]] = {}
    notes: dict[str, str] = {}
    by_group = rows.groupby("group")["path"].agg(list)
    classes = {a.name: a.classes for a in task.attributes} or {"label": task.class_names}
    for f in findings.itertuples():
        note = f"audit rank {f.rank}: {f.field} {f.given} -> {f.suggested}"
        if f.kind == SWAP:
            first, second = f.files.split(";")
            targets = {first: {"mask": 2}, second: {"mask": 1}}  # incorrect -> not worn, not worn -> incorrect
        else:
            code = classes[f.field].index(f.suggested)
            paths = by_group[f.group] if f.kind.startswith("person_") else [f.files]
            targets = {p: {f.field: code} for p in paths}
        for p, new in targets.items():
            changes.setdefault(p, {}).update(new)
            notes[p] = "; ".join(filter(None, (notes.get(p), note)))
    return changes, notes


def _format_like(column: pd.Series, code: int, name: str) -> str:
    """A new value in the column's own style: digits if the column holds digits, else the class name."""
    return str(code) if column.astype(str).str.strip().str.isdigit().all() else name


def read_source_csv(source_csv: Path, manifest_paths) -> tuple[pd.DataFrame, list[str]]:
    """(the source CSV, its paths as prepare normalised them), refused unless it still lists every image of
    ``manifest_paths`` (else corrected.csv would silently drop them, and so would a prepare of it)."""
    if not source_csv.is_file():
        raise DataError(f"the source CSV {source_csv} recorded in prepare.json is gone; corrected.csv cannot be "
                        "written: restore it (or pass the prepared directory of a copy with --data)")
    try:
        src = pd.read_csv(source_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"the source CSV {source_csv} cannot be read ({str(e).splitlines()[0][:100]}); restore the "
                        "file prepare read") from None
    if "path" not in src.columns:
        raise DataError(f"the source CSV {source_csv} has no 'path' column any more; restore the file prepare read")
    keys = [str(Path(p)) for p in src["path"]]
    lost = sorted(set(map(str, manifest_paths)) - set(keys))
    if lost:
        raise DataError(f"the source CSV {source_csv} lost {len(lost)} of the prepared images since prepare (e.g. "
                        f"{lost[0]!r}): a corrected.csv made from it would drop them. Restore the file prepare "
                        "read, or prepare it again and train on that before auditing")
    return src, keys


def corrected_csv(findings: pd.DataFrame, rows: pd.DataFrame, task: Task, source: tuple[pd.DataFrame, list[str]],
                  source_csv: Path) -> pd.DataFrame:
    """The source CSV (``source``: :func:`read_source_csv`) with the findings' suggestions applied, absolute
    paths (it lives elsewhere now) and an ``audit_fix`` column saying what changed; ``prepare --allow-absolute``
    reads it."""
    src, keys = source[0].copy(), source[1]
    changes, notes = _corrected_codes(findings, rows, task)
    codes = rows.set_index("path")[["label", "mask", "gender", "age", "age_years"]].to_dict("index")
    for i, p in enumerate(keys):
        if p not in changes:
            continue
        new = {**codes[p], **changes[p]}
        for col, code in changes[p].items():
            if col == "label":
                src.at[i, "label"] = str(code)
                if "label_name" in src.columns:
                    src.at[i, "label_name"] = task.class_names[code]
            elif col == "age" and new["age_years"] >= 0:
                src.at[i, "age"] = str(nearest_age(int(new["age_years"]), code, task.old_age or 60))
            else:
                src.at[i, col] = _format_like(src[col], code, task.attribute(col).classes[code])
        if task.attributes and "label" in src.columns:  # keep a label column in agreement with the attributes
            src.at[i, "label"] = str(int(task.encode(*(new[a.name] for a in task.attributes))))
    root = source_csv.parent.resolve()
    src["path"] = [p if os.path.isabs(p) else str(root / p) for p in src["path"]]
    src["audit_fix"] = [notes.get(p, "") for p in keys]
    return src
