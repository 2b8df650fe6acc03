"""Run directories: a new one per run (never overwritten), and the files in it.

``RUN/config.yaml`` (the resolved config), ``RUN/run.json`` (where the data came from, which
folds, what was resolved at start), ``RUN/summary.json``, and per fold ``metrics.csv``,
``lr.csv``, ``oof.csv`` (checkpoints: :mod:`.checkpoint`). Every write is atomic.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..config_io import dump_yaml, read_config
from ..errors import CheckpointError
from ..fsutil import atomic_write_json, atomic_write_text, load_json
from ..task import Task
from .metrics import oof_scores


def next_run_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs_dir/name-<n>`` with n one above the highest existing."""
    runs = Path(runs_dir)
    pat = re.compile(rf"^{re.escape(name)}-(\d+)$")
    taken = [int(m.group(1)) for p in (runs.iterdir() if runs.is_dir() else []) if (m := pat.match(p.name))]
    return runs / f"{name}-{max(taken, default=0) + 1}"


def create_run_dir(path: Path) -> Path:
    if path.exists():
        raise FileExistsError(f"run directory {path} already exists; choose a new --run-dir, or continue it with "
                              f"--resume {path}")
    path.mkdir(parents=True)
    return path


def write_run_files(run: Path, cfg: Config, info: dict) -> None:
    """config.yaml (resolved) and run.json."""
    atomic_write_text(run / "config.yaml", dump_yaml(cfg))
    atomic_write_json(run / "run.json", info)


def read_run_info(run: str | Path) -> dict:
    """run.json as train wrote it: a JSON object whose keys that readers rely on have their types."""
    run = Path(run)
    p = run / "run.json"
    if not p.is_file():
        raise CheckpointError(f"{run} is not a maskcls run directory (no run.json); pass the folder that "
                              "`maskcls train` created")
    fix = "restore it from a backup: it records the run's data and folds"
    info = load_json(p, fix=fix)
    wrong = None
    if "prepared" in info and not (isinstance(info["prepared"], str) and info["prepared"].strip()):
        wrong = ("prepared", "the prepared directory's path")
    elif "manifest_sha1" in info and not isinstance(info["manifest_sha1"], (str, type(None))):
        wrong = ("manifest_sha1", "a checksum string")
    elif "folds" in info and not (isinstance(info["folds"], list) and all(
            isinstance(f, int) and not isinstance(f, bool) for f in info["folds"])):
        wrong = ("folds", "a list of fold numbers")
    if wrong:
        raise CheckpointError(f"{p}: {wrong[0]!r} is {json.dumps(info[wrong[0]])[:60]}, not {wrong[1]}; {fix}")
    return info


# Keys whose default changed after some runs were written without them: such a run trained with the old
# value, which its config.yaml then lacks (every later config.yaml holds every key). train.ema: on by
# default since 2026-12-03; it was off, and a run written before the key existed had no EMA. train.valid_tta:
# hflip by default since 2026-12-03; before the key existed validation (and so oof.csv) saw one view.
KEYS_OLD_DEFAULTS = {("train", "ema"): False, ("train", "valid_tta"): "none"}


def read_run_config(run: str | Path) -> Config:
    """The run's typed config (config.yaml as train wrote it); a key the file lacks whose default changed
    since takes the value the run was trained with (``KEYS_OLD_DEFAULTS``), so that --resume continues it."""
    return read_config(Path(run) / "config.yaml", missing=KEYS_OLD_DEFAULTS)


def fold_dir(run: Path, fold: int) -> Path:
    return run / f"fold{fold}"


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, pd.DataFrame(history).to_csv(index=False))


def write_lr_csv(path: Path, lrs: list[float]) -> None:
    atomic_write_text(path, pd.DataFrame({"step": np.arange(1, len(lrs) + 1), "lr": lrs}).to_csv(index=False))


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
            raise _oof_error(path, f"{col} must be a class index 0..{k - 1}, not {df[col].iloc[np.argmax(bad)]!r} "
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
        hint = "; a diverged fold writes NaN: train it again" if str(value).lower() in ("nan", "inf", "-inf") else ""
        raise _oof_error(path, f"{prob_cols[c]} must be a number >= 0, not {value!r} (line(s) "
                         f"{_lines(bad.any(1))}{hint})")
    sums = probs.sum(1)
    off = np.abs(sums - 1) > 1e-3  # 6 decimals: K rounding errors of at most 5e-7 each
    if off.any():
        raise _oof_error(path, f"the probabilities of a row must sum to 1, not {sums[np.argmax(off)]:.6g} "
                         f"(line(s) {_lines(off)})")
    df[prob_cols] = probs
    return df


def summarize_run(run: Path, *, name: str, task: Task, heads: str, folds: dict[int, dict], finished: bool,
                  decision: dict | None = None) -> dict:
    """summary.json: per-fold bests, mean over folds, out-of-fold F1 when several folds ran, and the
    decision tuning's cross-fitted result (decision.json holds its offsets)."""
    oof = read_oof(run, folds)
    scores = oof_scores(oof, task) if oof is not None else None
    done = [r["best_f1"] for r in folds.values() if r.get("best_f1") is not None and r["best_f1"] >= 0]
    summary = {"run": name, **task.to_meta(), "heads": heads,
               "folds": {str(f): r for f, r in sorted(folds.items())},
               "mean_f1": float(np.mean(done)) if done else None,
               "oof_f1": scores["f1"] if scores and oof["fold"].nunique() > 1 else None,
               "head_f1": (scores["head_f1"] or None) if scores else None,
               "finished": finished,
               "decision": {k: v for k, v in decision.items() if k != "offsets"} if decision else None}
    atomic_write_json(run / "summary.json", summary)
    return summary
