"""A *prepared directory*: ``manifest.csv`` + ``prepare.json`` (+ ``stats.json``, ``faces/``).

``prepare`` writes it; everything after reads it through :func:`load_prepared`. Manifest
paths are relative to the dataset root recorded in prepare.json (absolute paths are kept
only when prepare was told ``--allow-absolute``), so a moved dataset needs only a new prepare.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..labels import Task

FORMAT_VERSION = 1
MANIFEST_COLUMNS = ["path", "group", "label", "mask", "gender", "age", "age_years", "split", "fold",
                    "image_id", "width", "height", "fast", "fix"]


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
        p = self.dir / "stats.json"
        return json.loads(p.read_text()) if p.is_file() else None


def load_prepared(directory: str | Path) -> Prepared:
    """Read and check a prepared directory; errors say to run ``maskcls prepare``."""
    d = Path(directory)
    meta_path, man_path = d / "prepare.json", d / "manifest.csv"
    if not meta_path.is_file() or not man_path.is_file():
        raise FileNotFoundError(f"{d} is not a prepared directory (no prepare.json/manifest.csv); "
                                f"create one with `maskcls prepare SOURCE --out {d}`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: not valid JSON ({e}); re-run `maskcls prepare`") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{d} was prepared by an incompatible maskcls (format {version}, this version reads "
                        f"{FORMAT_VERSION}); re-run `maskcls prepare` into a new directory")
    man = pd.read_csv(man_path, dtype={"path": str, "group": str, "image_id": str, "split": str, "fix": str},
                      keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in man.columns]
    if missing:
        raise DataError(f"{man_path}: missing column(s) {missing}; re-run `maskcls prepare`")
    man["fast"] = man["fast"].astype(str).str.lower().isin(["true", "1"])
    return Prepared(dir=d, manifest=man, meta=meta)
