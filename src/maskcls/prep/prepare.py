"""``maskcls prepare``: read a source, check every image, make folds, write a prepared dir.

Nothing is written into the source; the output directory must be new (or empty).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import __version__
from ..data.imageio import probe
from ..errors import DataError
from ..fsutil import atomic_write_json, atomic_write_text, default_workers, ensure_new_dir
from ..progress import progress
from ..task import COMPETITION, Task
from .competition import read_competition, read_eval, read_fixes
from .csv_manifest import read_csv_images, read_csv_source
from .folds import assign_folds
from .prepared import FORMAT_VERSION, MANIFEST_COLUMNS
from .sources import SourceTable, detect_kind

log = logging.getLogger(__name__)
MAX_LISTED = 50


def _probe_all(paths: list[str], workers: int) -> tuple[list[dict | None], list[dict]]:
    """Decode every image once (threads: PIL releases the GIL); collect failures."""
    def one(p):
        try:
            return probe(p), None
        except (DataError, FileNotFoundError, OSError) as e:
            return None, {"file": p, "reason": str(e).replace(f"{p}: ", "")}
        finally:
            bar.update(1)
    with progress(total=len(paths), desc="prepare: checking images", unit="img") as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, paths, chunksize=16))
    return [r for r, _ in results], [e for _, e in results if e is not None]


def _format_problems(problems: list[dict]) -> str:
    lines = [f"  {p['file']}: {p['reason']}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  … and {len(problems) - MAX_LISTED} more")
    return "\n".join(lines)


def _read_source(source: Path, *, old_age: int, fixes: str | None, allow_absolute: bool,
                 num_classes: int | None, group_missing: str, trust: str | None) -> SourceTable:
    kind = detect_kind(source)
    fixes_df = read_fixes(fixes) if fixes else None
    if kind == "competition":
        if group_missing != "error":
            raise DataError("--group-missing applies to a CSV manifest; the competition layout's groups are its "
                            "person folders")
        table = read_competition(source, old_age=old_age, fixes=fixes_df, trust=trust)
        if fixes:
            table.warnings += _fixes_warnings(fixes, table.fixes)
        return table
    if fixes_df is not None:
        raise DataError("--fixes applies to the competition layout only; edit the CSV's labels instead")
    if trust is not None:
        raise DataError("--trust applies to the competition layout (folder names vs train.csv) only")
    return read_csv_source(source, old_age=old_age, allow_absolute=allow_absolute, num_classes=num_classes,
                           group_missing=group_missing)


def _fixes_warnings(path: str, applied: list[dict]) -> list[str]:
    """Why label fixes of ``path`` changed nothing: an empty file, or persons that already had those values."""
    if not applied:
        return [f"--fixes {path} holds no fixes (no rows under its folder,field,value header): no label was changed"]
    idle = [a for a in applied if a["changed"] == 0]
    if not idle:
        return []
    listed = ", ".join(f"{a['folder']} {a['field']}" + (f"={a['value']}" if a["value"] else "") for a in idle[:10])
    more = f" and {len(idle) - 10} more" if len(idle) > 10 else ""
    if len(idle) == len(applied):
        return [f"none of the {len(applied)} fix(es) in {path} changed a label: each person already has the value it "
                f"sets ({listed}{more}); is it the fixes file of this dataset (maskcls audit writes RUN/audit/"
                "fixes.csv), or were they applied in the source already?"]
    return [f"{len(idle)} of the {len(applied)} fix(es) in {path} changed nothing, the person already has that value: "
            f"{listed}{more}"]


def _check_old_age(old_age: int, table: SourceTable, source: Path) -> list[int] | None:
    """An explicit ``--old-age`` must split this data: above 30 (the middle group's start) and within the
    training ages, so that the oldest group is not empty. Returns the training ages' [min, max] (None
    when the ages are given as groups: then the threshold only names them)."""
    if table.task.attribute("age") is None:
        raise DataError(f"--old-age {old_age}: {source} has no age column; drop --old-age")
    rows = table.rows[table.rows["split"] == "train"]
    years = rows["age_years"][rows["age_years"] >= 0]
    lo, hi = (int(years.min()), int(years.max())) if len(years) else (30, None)
    if old_age <= max(30, lo) or hi is not None and old_age > hi:
        raise DataError(f"--old-age {old_age} does not split {source}: "
                        + (f"its training ages run {lo}..{hi}, so it must be in {max(31, lo + 1)}..{hi} "
                           if hi is not None else "it must be above 30 ")
                        + "(above 30, where the middle group starts, and at most the oldest age, or the oldest "
                          "group is empty); the competition's rule is 60, strong teams trained with 58 or 59")
    return None if hi is None else [lo, hi]


def prepare(source: str | Path, out: str | Path, *, folds: int = 5, seed: int = 719, old_age: int | None = None,
            fixes: str | None = None, skip_bad: bool = False, allow_absolute: bool = False,
            num_classes: int | None = None, group_missing: str = "error", trust: str | None = None,
            workers: int | None = None) -> dict:
    """Write ``out/manifest.csv`` and ``out/prepare.json``; return the prepare.json dict.

    Args:
        source: competition folder (train/, eval/) or a CSV manifest file.
        out: new directory to create (refused if it exists and is not empty).
        folds: K of the person-grouped stratified K-fold.
        seed: fold seed.
        old_age: first age of the oldest group; None = 60 (the competition's rule; 58-59 helps
            training). A value given must lie within the data's ages and above 30.
        fixes: optional label-fixes CSV (folder,field,value).
        skip_bad: exclude unreadable images / inconsistent entries (recorded) instead of stopping.
        allow_absolute: accept absolute paths in a CSV manifest.
        num_classes: K for a CSV with a label column (default: max label + 1).
        group_missing: a CSV's training rows with a blank group: "error" (listed) or "row" (each
            its own group).
        trust: competition folder names vs train.csv disagreeing on gender/age: None = stop and
            list them; "csv" / "folder" = label from that side (recorded).
        workers: threads for decoding (default: CPU count).
    """
    t0 = time.time()
    source = Path(source).resolve()
    out = Path(out)
    _check_out(source, out)
    table = _read_source(source, old_age=60 if old_age is None else old_age, fixes=fixes,
                         allow_absolute=allow_absolute, num_classes=num_classes, group_missing=group_missing,
                         trust=trust)
    if old_age is not None:
        table.meta["age_range"] = _check_old_age(old_age, table, source)
    rows, problems = _probe_rows(table, workers, skip_bad, source)
    train = (rows["split"] == "train").to_numpy()
    if train.sum() == 0:
        raise DataError(f"{source}: no usable training images")
    rows["fold"] = -1
    fold, fold_notes = assign_folds(rows.loc[train, "group"].to_numpy(), rows.loc[train, "label"].to_numpy(),
                                    k=folds, seed=seed, class_names=list(table.task.class_names))
    rows.loc[train, "fold"] = fold
    split = {"folds": folds, "seed": seed, "fixes_file": fixes, "skip_bad": skip_bad}
    meta = _write(out, rows, lambda r: _meta(source, table, r, split, excluded=problems if skip_bad else [],
                                            notes=fold_notes, seconds=time.time() - t0))
    log.info("prepared %d images (%d train, %d eval) into %s", len(rows), int(train.sum()),
             int((~train).sum()), out)
    return meta


def _check_out(source: Path, out: Path) -> None:
    if out.resolve() == source or source in out.resolve().parents:
        raise DataError(f"--out {out} lies inside the dataset {source}; the dataset is read-only to maskcls, "
                        "choose a folder outside it")


def _probe_rows(table: SourceTable, workers: int | None, skip_bad: bool, source: Path
                ) -> tuple[pd.DataFrame, list[dict]]:
    """The rows whose image decodes (with width, height, fast), and every problem found."""
    rows = table.rows.reset_index(drop=True)
    abs_paths = [p if os.path.isabs(p) else str(table.root / p) for p in rows["path"]]
    infos, bad_images = _probe_all(abs_paths, workers or default_workers(cap=64))
    problems = table.problems + bad_images
    if problems and not skip_bad:
        raise DataError(f"{len(problems)} problem(s) in {source}:\n{_format_problems(problems)}\n"
                        "Fix them, or re-run with --skip-bad to exclude them (they are recorded in prepare.json).")
    keep = np.array([i is not None for i in infos], dtype=bool)
    rows = rows[keep].reset_index(drop=True)
    infos = [i for i in infos if i is not None]
    rows["width"] = [i["width"] for i in infos]
    rows["height"] = [i["height"] for i in infos]
    rows["fast"] = [i["fast"] for i in infos]
    return rows, problems


def _write(out: Path, rows: pd.DataFrame, meta_of) -> dict:
    """manifest.csv and prepare.json (``meta_of(rows)``) into the new directory ``out``."""
    rows = rows.reindex(columns=MANIFEST_COLUMNS)
    rows[["mask", "gender", "age", "age_years"]] = rows[["mask", "gender", "age", "age_years"]].fillna(-1).astype(int)
    meta = meta_of(rows)
    ensure_new_dir(out)
    atomic_write_text(out / "manifest.csv", rows.to_csv(index=False))
    atomic_write_json(out / "prepare.json", meta)
    return meta


def prepare_for_prediction(source: str | Path, out: str | Path, *, task: Task, allow_absolute: bool = False,
                           workers: int | None = None) -> dict:
    """Index the images to predict of a raw source into the new prepared directory ``out`` (no labels,
    no folds): a competition folder's eval/info.csv images, or a CSV's ``split=eval`` rows (every row
    when none is marked; labels not needed). Nothing is written into the source.

    Args:
        source: competition folder with eval/info.csv and eval/images/, or a CSV of image paths.
        out: new directory to create (e.g. inside the run directory).
        task: the run's label space, recorded as the directory's task.
        allow_absolute: accept absolute paths in the CSV.
        workers: threads for decoding (default: CPU count).
    """
    t0 = time.time()
    source = Path(source).resolve()
    out = Path(out)
    _check_out(source, out)
    if detect_kind(source, for_prediction=True) == "competition":
        if task.kind != COMPETITION:
            raise DataError(f"{source} is a competition folder (mask x gender x age, 18 classes) but the run predicts "
                            f"{task.num_classes} classes of another task; pass a CSV of its images instead")
        problems: list[dict] = []
        rows, eval_csv = read_eval(source, problems)
        if eval_csv is None:
            raise DataError(f"{source}: no eval/info.csv; a competition folder to predict needs eval/info.csv "
                            "(ImageID,ans) and eval/images/")
        table = SourceTable(rows=rows, root=source, kind="competition", task=task, problems=problems,
                            eval_csv=eval_csv)
    else:
        table = read_csv_images(source, task=task, allow_absolute=allow_absolute)
    rows, _ = _probe_rows(table, workers, False, source)
    rows["fold"] = -1
    split = {"folds": 0, "seed": None, "fixes_file": None, "skip_bad": False}
    meta = _write(out, rows, lambda r: {**_meta(source, table, r, split, excluded=[], notes=[],
                                                seconds=time.time() - t0), "purpose": "predict"})
    log.info("indexed %d images to predict from %s into %s", len(rows), source, out)
    return meta


def _meta(source: Path, table: SourceTable, rows: pd.DataFrame, split: dict, *, excluded: list, notes: list,
          seconds: float) -> dict:
    """prepare.json. ``split``: folds, seed, fixes_file, skip_bad as asked; ``excluded``: the rows skip_bad
    left out; ``notes``: the fold assignment's warnings."""
    tr = rows[rows["split"] == "train"]
    k, folds = table.task.num_classes, split["folds"]
    return {
        "format_version": FORMAT_VERSION, "maskcls_version": __version__,
        "source": str(source), "root": str(table.root), "kind": table.kind, **table.task.to_meta(),
        "eval_csv": table.eval_csv, "folds": folds, "seed": split["seed"], "old_age": table.task.old_age,
        "fixes_file": split["fixes_file"], "fixes": table.fixes, **table.meta,
        "counts": {
            "images": int(len(rows)), "train_images": int(len(tr)), "eval_images": int(len(rows) - len(tr)),
            "groups": int(tr["group"].nunique()),
            "per_class": np.bincount(tr["label"].to_numpy(), minlength=k).tolist(),
            "per_fold": np.bincount(tr["fold"].to_numpy(), minlength=folds).tolist(),
            "slow_decode_path": int((~rows["fast"]).sum()),
        },
        "skip_bad": split["skip_bad"], "excluded": excluded,
        "warnings": table.warnings + notes,
        "manifest_sha1": hashlib.sha1((rows["path"] + "|" + rows["label"].astype(str)).str.cat(sep="\n")
                                      .encode()).hexdigest(),
        "seconds": round(seconds, 2),
    }
