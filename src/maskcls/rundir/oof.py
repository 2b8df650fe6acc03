"""A fold's out-of-fold predictions (``foldN/oof.csv``): written when a fold's best epoch changes, read back
checked — columns, identifiers, class indices, probabilities — with every fault named by file, column and line."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CheckpointError
from ..fsutil import atomic_write_text
from .files import fold_dir


def write_oof(path: Path, rows: pd.DataFrame, paths: np.ndarray, probs: np.ndarray) -> None:
    df = pd.DataFrame({"path": paths, "image_id": rows["image_id"].to_numpy(), "group": rows["group"].to_numpy(),
                       "label": rows["label"].to_numpy(), "pred": probs.argmax(1)})
    probs_df = pd.DataFrame(probs, columns=[f"prob_{i}" for i in range(probs.shape[1])])
    atomic_write_text(path, pd.concat([df, probs_df], axis=1).to_csv(index=False, float_format="%.6f"))


OOF_KEYS = ("path", "image_id", "group")  # identifiers: strings
OOF_CODES = ("label", "pred")  # class indices


def read_oof(run: Path, folds, *, num_classes: int | None = None) -> pd.DataFrame | None:
    """The out-of-fold rows of ``folds`` written so far (with a ``fold`` column), or None.

    Identifiers stay strings: a group or image id such as ``0012`` must not be read as the number 12.
    Each file is checked (:func:`read_oof_file`) before anything compares it with anything else.
    """
    parts = [read_oof_file(fold_dir(run, f) / "oof.csv", num_classes=num_classes).assign(fold=f)
             for f in sorted(folds) if (fold_dir(run, f) / "oof.csv").exists()]
    return pd.concat(parts, ignore_index=True) if parts else None


def _oof_error(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}; the file was damaged or edited: restore it from a copy, or train that "
                           "fold again")


def _cell(value) -> str:
    """A CSV cell as a message shows it: a blank one (read as NaN) says so, anything else as the text it holds."""
    if isinstance(value, float) and math.isnan(value):
        return "a blank cell"
    return repr(str(value))


def _lines(mask: np.ndarray) -> str:
    """CSV line numbers (the header is line 1) of the rows in ``mask``, at most 5."""
    rows = np.flatnonzero(mask)
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return ", ".join(str(r + 2) for r in rows[:5]) + more


def _read_oof_csv(path: Path) -> pd.DataFrame:
    with open(path, "rb") as fh:  # maskcls writes whole lines, atomically: a last line without its end was cut
        size = fh.seek(0, 2)
        if size:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                raise _oof_error(path, "its last line ends mid-row (the file was cut short)")
    try:
        return pd.read_csv(path, dtype={c: str for c in OOF_KEYS}, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise _oof_error(path, "empty (0 bytes or no header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise _oof_error(path, f"not a readable CSV ({str(e).splitlines()[0][:120]})") from None


def _oof_columns(path: Path, df: pd.DataFrame, num_classes: int | None) -> list[str]:
    """The probability columns prob_0..prob_{K-1}, after checking every expected column is there."""
    cols = [str(c) for c in df.columns]
    if len(cols) == 1 and ";" in cols[0]:
        raise _oof_error(path, "its columns are separated by ';' (maskcls writes ',')")
    probs = [c for c in cols if c.startswith("prob_") and c[5:].isdigit()]
    k = num_classes if num_classes is not None else len(probs)
    wanted = [*OOF_KEYS, *OOF_CODES, *(f"prob_{i}" for i in range(max(k, 2)))]
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise _oof_error(path, f"no column(s) {', '.join(missing)} (it has {', '.join(cols[:8])}"
                         f"{' …' if len(cols) > 8 else ''})")
    if len(probs) != k:
        raise _oof_error(path, f"{len(probs)} probability columns for a task of {k} classes")
    return wanted[len(OOF_KEYS) + len(OOF_CODES):]


def _check_oof_ids(path: Path, df: pd.DataFrame, k: int) -> None:
    """Identifiers present and unique; label and pred class indices 0..k-1 (made integers)."""
    for col in OOF_KEYS:
        blank = df[col].isna().to_numpy() | (df[col].astype(str).str.strip() == "").to_numpy()
        if blank.any():
            raise _oof_error(path, f"blank {col} on line(s) {_lines(blank)}")
    dup = df["image_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise _oof_error(path, f"image {df['image_id'][dup].iloc[0]!r} has several rows (line(s) {_lines(dup)})")
    for col in OOF_CODES:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(v) | (v != np.round(v)) | (v < 0) | (v >= k)
        if bad.any():
            raise _oof_error(path, f"{col} must be a class index 0..{k - 1}, not {_cell(df[col].iloc[np.argmax(bad)])} "
                             f"(line(s) {_lines(bad)})")
        df[col] = v.astype(np.int64)


def read_oof_file(path: Path, *, num_classes: int | None = None) -> pd.DataFrame:
    """One fold's oof.csv, checked: its columns, identifiers present and unique, class indices in 0..K-1,
    probabilities that are numbers >= 0 summing to 1 (they are written with 6 decimals).

    Raises:
        CheckpointError: naming the file, the column and the lines at fault.
    """
    df = _read_oof_csv(path)
    prob_cols = _oof_columns(path, df, num_classes)
    if df.empty:
        raise _oof_error(path, "a header without rows")
    _check_oof_ids(path, df, len(prob_cols))
    probs = df[prob_cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(probs) | (probs < 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        value = df[prob_cols[c]].iloc[r]
        written = isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf")
        hint = "; a diverged fold writes NaN: train it again" if written else ""
        raise _oof_error(path, f"{prob_cols[c]} must be a number >= 0, not {_cell(value)} (line(s) "
                         f"{_lines(bad.any(1))}{hint})")
    sums = probs.sum(1)
    off = np.abs(sums - 1) > 1e-3  # 6 decimals: K rounding errors of at most 5e-7 each
    if off.any():
        raise _oof_error(path, f"the probabilities of a row must sum to 1, not {sums[np.argmax(off)]:.6g} "
                         f"(line(s) {_lines(off)})")
    df[prob_cols] = probs
    return df
