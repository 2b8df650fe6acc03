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
from .competition import read_competition, read_fixes
from .csv_manifest import read_csv_source
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
                 num_classes: int | None) -> SourceTable:
    kind = detect_kind(source)
    fixes_df = read_fixes(fixes) if fixes else None
    if kind == "competition":
        return read_competition(source, old_age=old_age, fixes=fixes_df)
    if fixes_df is not None:
        raise DataError("--fixes applies to the competition layout only; edit the CSV's labels instead")
    return read_csv_source(source, old_age=old_age, allow_absolute=allow_absolute, num_classes=num_classes)


def prepare(source: str | Path, out: str | Path, *, folds: int = 5, seed: int = 719, old_age: int = 60,
            fixes: str | None = None, skip_bad: bool = False, allow_absolute: bool = False,
            num_classes: int | None = None, workers: int | None = None) -> dict:
    """Write ``out/manifest.csv`` and ``out/prepare.json``; return the prepare.json dict.

    Args:
        source: competition folder (train/, eval/) or a CSV manifest file.
        out: new directory to create (refused if it exists and is not empty).
        folds: K of the person-grouped stratified K-fold.
        seed: fold seed.
        old_age: first age of the oldest group (60 in the competition; 58-59 helps training).
        fixes: optional label-fixes CSV (folder,field,value).
        skip_bad: exclude unreadable images / inconsistent entries (recorded) instead of stopping.
        allow_absolute: accept absolute paths in a CSV manifest.
        num_classes: K for a CSV with a label column (default: max label + 1).
        workers: threads for decoding (default: CPU count).
    """
    t0 = time.time()
    source = Path(source).resolve()
    out = Path(out)
    if out.resolve() == source or source in out.resolve().parents:
        raise DataError(f"--out {out} lies inside the dataset {source}; the dataset is read-only to maskcls, "
                        "choose a folder outside it")
    table = _read_source(source, old_age=old_age, fixes=fixes, allow_absolute=allow_absolute,
                         num_classes=num_classes)
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
    train = (rows["split"] == "train").to_numpy()
    if train.sum() == 0:
        raise DataError(f"{source}: no usable training images")
    rows["fold"] = -1
    fold, fold_notes = assign_folds(rows.loc[train, "group"].to_numpy(), rows.loc[train, "label"].to_numpy(),
                                    k=folds, seed=seed)
    rows.loc[train, "fold"] = fold
    rows = rows.reindex(columns=MANIFEST_COLUMNS)
    rows[["mask", "gender", "age", "age_years"]] = rows[["mask", "gender", "age", "age_years"]].fillna(-1).astype(int)
    ensure_new_dir(out)
    atomic_write_text(out / "manifest.csv", rows.to_csv(index=False))
    meta = _meta(source, table, rows, folds=folds, seed=seed, old_age=old_age, fixes=fixes, skip_bad=skip_bad,
                 problems=problems, fold_notes=fold_notes, seconds=time.time() - t0)
    atomic_write_json(out / "prepare.json", meta)
    log.info("prepared %d images (%d train, %d eval) into %s", len(rows), int(train.sum()),
             int((~train).sum()), out)
    return meta


def _meta(source: Path, table: SourceTable, rows: pd.DataFrame, *, folds, seed, old_age, fixes, skip_bad,
          problems, fold_notes, seconds) -> dict:
    tr = rows[rows["split"] == "train"]
    k = table.task.num_classes
    return {
        "format_version": FORMAT_VERSION, "maskcls_version": __version__,
        "source": str(source), "root": str(table.root), "kind": table.kind, **table.task.to_meta(),
        "eval_csv": table.eval_csv, "folds": folds, "seed": seed, "old_age": old_age, "fixes_file": fixes,
        "fixes": table.fixes,
        "counts": {
            "images": int(len(rows)), "train_images": int(len(tr)), "eval_images": int(len(rows) - len(tr)),
            "groups": int(tr["group"].nunique()),
            "per_class": np.bincount(tr["label"].to_numpy(), minlength=k).tolist(),
            "per_fold": np.bincount(tr["fold"].to_numpy(), minlength=folds).tolist(),
            "slow_decode_path": int((~rows["fast"]).sum()),
        },
        "skip_bad": skip_bad, "excluded": problems if skip_bad else [],
        "warnings": table.warnings + fold_notes,
        "manifest_sha1": hashlib.sha1((rows["path"] + "|" + rows["label"].astype(str)).str.cat(sep="\n")
                                      .encode()).hexdigest(),
        "seconds": round(seconds, 2),
    }
