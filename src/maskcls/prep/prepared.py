"""A *prepared directory*: ``manifest.csv`` + ``prepare.json`` (+ ``stats.json``, ``faces/``).

``prepare`` writes it; everything after reads it through :func:`load_prepared`. Manifest
paths are relative to the dataset root recorded in prepare.json (absolute paths are kept
only when prepare was told ``--allow-absolute``), so a moved dataset needs only a new prepare.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..fsutil import load_json
from ..task import Task
from .sources import csv_lines

FORMAT_VERSION = 1
MANIFEST_COLUMNS = ["path", "group", "label", "mask", "gender", "age", "age_years", "split", "fold",
                    "image_id", "width", "height", "fast", "fix"]
MOVED_FIX = ("the dataset moved or lost files since `maskcls prepare`: restore them, or re-run `maskcls prepare "
             "SOURCE --out NEW_DIR` on its current location")
INT_COLUMNS = ["label", "mask", "gender", "age", "age_years", "fold", "width", "height"]


@dataclass
class Prepared:
    """A loaded prepared directory."""
    dir: Path
    manifest: pd.DataFrame
    meta: dict

    @property
    def root(self) -> Path:
        return Path(self.meta["root"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def task(self) -> Task:
        """The label space (class names, attributes, the scoring age threshold)."""
        return Task.from_meta(self.meta)

    @property
    def num_folds(self) -> int:
        return int(self.meta["folds"])

    def abs_paths(self, rows: pd.DataFrame | None = None) -> np.ndarray:
        """Absolute image paths (fixed-width bytes → str array) of ``rows`` (default: all)."""
        rows = self.manifest if rows is None else rows
        root = str(self.root)
        return np.array([p if p.startswith("/") else f"{root}/{p}" for p in rows["path"]])

    def check_images(self, rows: pd.DataFrame | None = None, *, fix: str = MOVED_FIX) -> None:
        """Raise a DataError naming the first of ``rows``' image files that is gone (deleted, or the dataset
        moved since prepare), with ``fix``: one line up front instead of an error half-way through an epoch."""
        paths = self.abs_paths(rows)
        gone = [p for p in paths if not os.path.isfile(p)]
        if gone:
            raise DataError(f"{len(gone)} of {len(paths)} images listed in {self.dir / 'manifest.csv'} are missing "
                            f"(first: {gone[0]}); {fix}")

    def train_rows(self) -> pd.DataFrame:
        """Labelled rows of the folds (validation and out-of-fold scores come from these alone)."""
        return self.manifest[self.manifest["split"] == "train"]

    def pseudo_rows(self) -> pd.DataFrame:
        """Pseudo-labelled rows (``maskcls pseudo``): trained on in every fold, never validated on."""
        return self.manifest[self.manifest["split"] == "pseudo"]

    def fit_rows(self) -> pd.DataFrame:
        """Every row a fold may train on: the labelled rows and the pseudo-labelled ones."""
        return self.manifest[self.manifest["split"].isin(["train", "pseudo"])]

    def eval_rows(self) -> pd.DataFrame:
        return self.manifest[self.manifest["split"] == "eval"]

    def stats(self) -> dict | None:
        return load_json(self.dir / "stats.json", missing_ok=True,
                         fix=f"run `maskcls stats {self.dir}` again (it rewrites the file)")


def load_prepared(directory: str | Path) -> Prepared:
    """Read and check a prepared directory; errors say to run ``maskcls prepare``."""
    d = Path(directory)
    meta_path, man_path = d / "prepare.json", d / "manifest.csv"
    if not meta_path.is_file() or not man_path.is_file():
        raw = (d / "train").is_dir() or (d / "train.csv").exists() or (d.is_file() and d.suffix.lower() == ".csv")
        out = d.with_name(f"{d.stem}-prepared") if raw else d
        source = d if raw else "SOURCE"
        raise FileNotFoundError(f"{d} is not a prepared directory (no prepare.json/manifest.csv); create one with "
                                f"`maskcls prepare {source} --out {out}`"
                                + (" (a new folder beside the dataset, which is only read)" if raw else ""))
    meta = load_json(meta_path, fix="re-run `maskcls prepare`")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{d} was prepared by an incompatible maskcls (format {version}, this version reads "
                        f"{FORMAT_VERSION}); re-run `maskcls prepare` into a new directory")
    man = pd.read_csv(man_path, dtype={"path": str, "group": str, "image_id": str, "split": str, "fix": str},
                      keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in man.columns]
    if missing:
        raise DataError(f"{man_path}: missing column(s) {missing}; re-run `maskcls prepare`")
    _check_manifest(man, meta, man_path)
    man[INT_COLUMNS] = man[INT_COLUMNS].astype(np.int64)
    man["fast"] = man["fast"].astype(str).str.lower().isin(["true", "1"])
    return Prepared(dir=d, manifest=man, meta=meta)


def _check_manifest(man: pd.DataFrame, meta: dict, man_path: Path) -> None:
    """The manifest agrees with its prepare.json: splits, integer columns, labels in 0..K−1 on training
    rows, folds in 0..folds−1 (−1 on eval rows). A hand-edited manifest fails here, naming its lines,
    instead of deep inside training (``IndexError: Target 3 is out of bounds``)."""
    fix = "fix those rows or re-run `maskcls prepare` into a new directory"
    for key in ("num_classes", "folds", "root"):
        if key not in meta:
            raise DataError(f"{man_path.parent / 'prepare.json'} has no {key!r}; re-run `maskcls prepare`")
    split = man["split"].astype(str)
    splits = ["train", "eval", "pseudo"] if meta.get("pseudo") else ["train", "eval"]
    bad = ~split.isin(splits).to_numpy()
    if bad.any():
        raise DataError(f"{man_path}: split must be {' or '.join(splits)}, not {sorted(set(split[bad]))[:3]} "
                        f"(line(s) {csv_lines(bad)}); {fix}")
    for col in INT_COLUMNS:
        num = pd.to_numeric(man[col], errors="coerce")
        bad = (num.isna() | (num % 1 != 0)).to_numpy()
        if bad.any():
            raise DataError(f"{man_path}: column {col} must hold integers (line(s) {csv_lines(bad)}); {fix}")
    train = (split == "train").to_numpy()
    labelled = train | (split == "pseudo").to_numpy()  # pseudo rows: a predicted label, trained in every fold
    k, folds = int(meta["num_classes"]), int(meta["folds"])
    label, fold = pd.to_numeric(man["label"]).to_numpy(), pd.to_numeric(man["fold"]).to_numpy()
    bad = labelled & ((label < 0) | (label >= k))
    if bad.any():
        raise DataError(f"{man_path}: label outside 0..{k - 1} (the {k} classes of prepare.json) on training "
                        f"line(s) {csv_lines(bad)}; {fix}")
    bad = train & ((fold < 0) | (fold >= folds))
    if bad.any():
        raise DataError(f"{man_path}: fold outside 0..{folds - 1} (prepare.json says {folds} folds) on line(s) "
                        f"{csv_lines(bad)}; {fix}")
    bad = ~train & (fold != -1)
    if bad.any():
        raise DataError(f"{man_path}: eval rows must have fold -1 (pseudo rows too; line(s) {csv_lines(bad)}); {fix}")
