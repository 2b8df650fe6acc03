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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..task import Task


@dataclass
class SourceTable:
    """What a reader found: image rows, the label space, and problems/warnings."""
    rows: pd.DataFrame
    root: Path
    kind: str                      # "competition" | "csv"
    task: Task
    problems: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    fixes: list[dict] = field(default_factory=list)
    eval_csv: str | None = None
    meta: dict = field(default_factory=dict)   # what the reader decided, recorded in prepare.json


def detect_kind(source: Path, *, for_prediction: bool = False) -> str:
    """"csv" or "competition"; ``for_prediction`` also accepts a competition folder with only eval/."""
    if source.is_file() and source.suffix.lower() == ".csv":
        return "csv"
    if source.is_dir():
        if (source / "train").is_dir() or (source / "train.csv").exists():
            return "competition"
        if for_prediction and (source / "eval" / "info.csv").is_file():
            return "competition"
        wanted = "eval/info.csv and eval/images/" if for_prediction else "train/train.csv, train/images/"
        raise FileNotFoundError(f"{source}: not a dataset; expected the competition layout ({wanted}) or a CSV "
                                "manifest file")
    raise FileNotFoundError(f"dataset source {source} not found; pass the competition folder or a CSV file")


def csv_lines(mask: np.ndarray, limit: int = 10) -> str:
    """The CSV line numbers (header = line 1) of the rows where ``mask`` is set, at most ``limit`` listed."""
    lines = np.flatnonzero(mask) + 2
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ", ".join(str(n) for n in lines[:limit]) + more
