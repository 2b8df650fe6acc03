"""What an audit reads: a run's out-of-fold probabilities, matched row by row to the prepared
manifest the run trained on — and every reason that pairing cannot be trusted.

An out-of-fold row is the prediction of a model that never saw the image (nor its person:
folds are person-grouped), so its disagreement with the label is evidence about the label.
That holds only for the exact manifest the run trained on, hence the checks: the prepared
directory still exists, its manifest checksum equals the one run.json recorded at training,
and the out-of-fold rows name the same images, labels, persons and folds as the manifest.
Nothing here writes.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CheckpointError
from ..prep.prepared import Prepared, load_prepared
from ..rundir.files import read_run_info
from ..rundir.oof import read_oof
from ..rundir.summary import read_summary
from ..task import Task

log = logging.getLogger(__name__)


@dataclass
class AuditInput:
    """Out-of-fold rows joined with the manifest, and their K-class probabilities."""
    run: Path
    prep: Prepared
    task: Task
    rows: pd.DataFrame  # image_id, path, abs_path, group, label, mask, gender, age, age_years, fold
    probs: np.ndarray  # (rows, K), each row summing to 1
    folds: list[int]  # folds audited
    missing_folds: list[int] = field(default_factory=list)  # folds without oof.csv (audited with partial)
    notes: list[str] = field(default_factory=list)  # what the user should know about this audit

    @property
    def partial(self) -> bool:
        return bool(self.missing_folds)


def manifest_checksum(manifest: pd.DataFrame) -> str:
    """The manifest's content checksum, computed as ``prepare`` records it in prepare.json (path|label per row):
    equal to run.json's, the manifest on disk is the one the run trained on, even if prepare.json was kept."""
    text = (manifest["path"].astype(str) + "|" + manifest["label"].astype(str)).str.cat(sep="\n")
    return hashlib.sha1(text.encode()).hexdigest()


def _changed(prep: Prepared, run: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{prep.dir} changed since {run} was trained ({what}); an audit needs the manifest the "
                           "run trained on: pass that prepared directory with --data, or train again on this one")


def _locate_prepared(run: Path, info: dict, prepared: str | Path | None) -> Prepared:
    if prepared is None and not info.get("prepared"):
        raise CheckpointError(f"{run / 'run.json'} records no prepared directory; pass the one the run trained on "
                              "with --data DIR")
    path = Path(prepared) if prepared is not None else Path(info["prepared"])
    if prepared is None and not (path / "prepare.json").is_file():
        raise CheckpointError(f"{run / 'run.json'} names the prepared directory {path}, which is gone (moved or "
                              "deleted); pass its new location with --data DIR")
    prep = load_prepared(path)
    recorded, current = info.get("manifest_sha1"), prep.meta.get("manifest_sha1")
    if recorded and current != recorded:
        raise _changed(prep, run, f"its manifest checksum {current} differs from {recorded}, recorded in run.json "
                       "at training: a different or re-prepared directory")
    return prep


def _fold_coverage(run: Path, prep: Prepared, oof: pd.DataFrame | None, partial: bool) -> tuple[list[int], list[int]]:
    """(folds with out-of-fold rows, folds without); an error for missing folds unless ``partial``."""
    all_folds = list(range(prep.num_folds))
    present = sorted(set(oof["fold"])) if oof is not None else []
    missing = [f for f in all_folds if f not in present]
    if not present:
        raise CheckpointError(f"{run} has no out-of-fold predictions yet (no fold*/oof.csv): train its folds "
                              "first (`maskcls train PREPARED --folds all`), or wait for a fold's first epoch")
    if missing and not partial:
        train = prep.train_rows()
        n_missing = int(train["fold"].isin(missing).sum())
        raise CheckpointError(
            f"{run} has out-of-fold predictions for fold(s) {present} only: fold(s) {missing} of {prep.dir} were "
            f"not trained, so {n_missing} of {len(train)} training images have none. Train every fold "
            f"(`maskcls train {prep.dir} --folds all`) and audit that run, or pass --partial to audit the "
            f"{len(train) - n_missing} images that have them")
    return present, missing


def _check_fold_rows(run: Path, prep: Prepared, oof: pd.DataFrame, folds: list[int]) -> None:
    """Each fold's oof.csv names exactly the training images of that fold of the manifest it was checked to
    have trained on (same checksum): a difference is the file's fault, and said so."""
    train = prep.train_rows()
    for f in folds:
        have = set(oof.loc[oof["fold"] == f, "image_id"])
        want = set(train.loc[train["fold"] == f, "image_id"].astype(str))
        if have == want:
            continue
        path = run / f"fold{f}" / "oof.csv"
        lacking, extra = sorted(want - have), sorted(have - want)
        what = (f"lacks {len(lacking)} of the {len(want)} training images of fold {f} (e.g. {lacking[0]!r}): it was "
                "cut short or edited" if lacking else
                f"holds {len(extra)} image(s) that are not training images of fold {f} (e.g. {extra[0]!r})")
        raise CheckpointError(f"{path} {what}, while the manifest is the one the run trained on (same checksum); "
                              "restore the file from a copy or train that fold again (or audit the other folds: "
                              "move it away and pass --partial)")


def _join(run: Path, prep: Prepared, oof: pd.DataFrame, folds: list[int], *, same_manifest: bool) -> pd.DataFrame:
    """The manifest rows of ``folds``, each with its out-of-fold row; any disagreement is an error.

    ``same_manifest``: run.json's checksum equals the manifest's, so a disagreement is the oof files' fault.
    """
    if oof["image_id"].duplicated().any():
        dup = oof.loc[oof["image_id"].duplicated(), "fold"]
        image = oof.loc[oof["image_id"].duplicated(), "image_id"].iloc[0]
        both = sorted(oof.loc[oof["image_id"] == image, "fold"])
        raise CheckpointError(f"{run}: image {image!r} has out-of-fold rows in folds {both} (fold{both[0]}/oof.csv "
                              f"and fold{both[-1]}/oof.csv); the run's folds overlap, or a file was copied "
                              f"over another ({len(dup)} image(s) in all)")
    if same_manifest:
        _check_fold_rows(run, prep, oof, folds)
    train = prep.train_rows()
    man = train[train["fold"].isin(folds)].reset_index(drop=True)
    man = man.assign(abs_path=prep.abs_paths(man))
    merged = man.merge(oof.drop(columns=["path"]), on="image_id", how="outer", suffixes=("", "_oof"),
                       indicator=True)
    unknown = merged[merged["_merge"] == "right_only"]
    if len(unknown):
        raise _changed(prep, run, f"{len(unknown)} out-of-fold image(s) are not training images of the manifest, "
                       f"e.g. {unknown['image_id'].iloc[0]!r}")
    lacking = merged[merged["_merge"] == "left_only"]
    if len(lacking):
        raise _changed(prep, run, f"{len(lacking)} training image(s) of fold(s) {folds} have no out-of-fold row, "
                       f"e.g. {lacking['image_id'].iloc[0]!r}")
    for col, what in (("label", "label"), ("group", "person/group"), ("fold", "fold")):
        given, recorded = merged[col], merged[f"{col}_oof"]
        same = (given.astype(np.int64) == recorded.astype(np.int64)) if col != "group" else \
            (given.astype(str) == recorded.astype(str))
        diff = merged[~same.to_numpy()]
        if len(diff):
            r = diff.iloc[0]
            where = f"fold{r['fold_oof']}/oof.csv"
            if same_manifest:
                raise CheckpointError(f"{run / where}: the {what} of {len(diff)} image(s) differs from the manifest "
                                      f"the run trained on (same checksum), e.g. {r['image_id']!r}: {r[f'{col}_oof']} "
                                      f"in the file, {r[col]} in the manifest; the file was edited: restore it or "
                                      "train that fold again")
            raise _changed(prep, run, f"the {what} of {len(diff)} image(s) differs, e.g. {r['image_id']!r}: "
                           f"{r[f'{col}_oof']} at training, {r[col]} now")
    return merged


def _probabilities(run: Path, merged: pd.DataFrame, k: int) -> np.ndarray:
    # read_oof checked the columns, values >= 0 and sums within 1e-3 of 1 (no all-zero rows)
    probs = merged[[f"prob_{i}" for i in range(k)]].to_numpy(np.float64)
    return probs / probs.sum(1, keepdims=True)  # the CSV keeps 6 decimals


def load_audit_input(run_dir: str | Path, *, prepared: str | Path | None = None, partial: bool = False) -> AuditInput:
    """Read and check what an audit of ``run_dir`` needs.

    Args:
        run_dir: a run directory written by ``maskcls train``.
        prepared: the prepared directory, when it moved since training (default: the one in run.json);
            its manifest must still be the one the run trained on.
        partial: audit the folds that have out-of-fold rows instead of refusing a run with missing folds.
    Raises:
        CheckpointError: not a run, no or missing out-of-fold rows, or a moved/changed prepared directory.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found")
    info = read_run_info(run)
    prep = _locate_prepared(run, info, prepared)
    task = prep.task
    oof = read_oof(run, range(prep.num_folds), num_classes=task.num_classes)  # each file's shape checked
    folds, missing = _fold_coverage(run, prep, oof, partial)
    same_manifest = bool(info.get("manifest_sha1")) and info["manifest_sha1"] == manifest_checksum(prep.manifest)
    merged = _join(run, prep, oof, folds, same_manifest=same_manifest)
    probs = _probabilities(run, merged, task.num_classes)
    notes = []
    if missing:
        notes.append(f"partial audit: fold(s) {missing} have no out-of-fold predictions; "
                     f"{len(merged)} images of fold(s) {folds} audited")
    if not info.get("manifest_sha1"):
        notes.append("run.json records no manifest checksum (trained by an older maskcls): the prepared directory "
                     "was checked against the out-of-fold rows only")
    summary = read_summary(run, required=False)
    if summary is not None and summary.get("finished") is False:
        notes.append("the run is unfinished: some folds' out-of-fold rows come from their best epoch so far")
    keep = ["image_id", "path", "abs_path", "group", "label", "mask", "gender", "age", "age_years", "fold"]
    rows = merged[keep].copy()
    log.info("audit input: %d images, %d groups, folds %s of %s", len(rows), rows["group"].nunique(), folds, run)
    return AuditInput(run=run, prep=prep, task=task, rows=rows, probs=probs, folds=folds, missing_folds=missing,
                      notes=notes)
