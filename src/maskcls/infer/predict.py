"""``maskcls predict``: a competition submission, or one line per image for a person at a shell, with any of the
backends of :mod:`.backends` (torch, onnx, onnx-int8)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.imageio import is_image_name, probe
from ..data.loader import build_loader
from ..engine.decision import DECISION_FILE, TuneBias, apply_offsets, check_tune_bias, read_offsets
from ..engine.fold_data import make_dataset, paths_dataset, resolve_loader
from ..errors import DataError
from ..fsutil import atomic_write_text, free_name, read_json
from ..prep.prepare import prepare_for_prediction
from ..prep.prepared import Prepared, load_prepared
from ..rundir.models import LoadedFold, load_folds
from .backends import Backend, check_backend, exported_model, onnx_probs
from .loading import TTA_REQUESTS, check_tta, device_for_inference, ensemble_probs, inference_bf16, resolve_tta

log = logging.getLogger(__name__)

PREDICT_FIX = ("the dataset moved or lost files since `maskcls prepare`: restore them, or pass `--data` with its "
               "current location (a prepared directory, the competition folder or a CSV of images)")


def run_and_data(run: str | Path, *, folds: str = "all", data: str | Path | None = None):
    """(the run's chosen folds, the prepared directory to predict, whether it was indexed now from a raw source).

    ``data``: a prepared directory, or a raw source — a competition folder with eval/info.csv, or
    a CSV of images — indexed into ``RUN/predict-data/<name>`` (the source is only read); default:
    the prepared directory the run trained on. Its task must be the run's.
    """
    run = Path(run)
    loaded = load_folds(run, folds)
    prep, made = _prediction_data(run, data, loaded[0])
    ours, theirs = loaded[0].task, prep.task
    names = [[a.name for a in t.attributes] for t in (ours, theirs)]
    if ours.num_classes != theirs.num_classes or names[0] != names[1]:
        raise DataError(f"{prep.dir} has {theirs.num_classes} classes ({', '.join(theirs.class_names[:3])}, …) but the "
                        f"run was trained on {ours.num_classes} ({', '.join(ours.class_names[:3])}, …); predict data "
                        "of the run's task")
    return loaded, prep, made


def eval_probabilities(loaded: list, prep: Prepared, rows: pd.DataFrame, *, tta: str = "none",
                       batch_size: int | None = None, num_workers: int | None = None,
                       model: Path | None = None) -> np.ndarray:
    """Fold-ensemble probabilities of ``rows`` of ``prep``, in their order (``model``: an exported ONNX file
    to run instead of the checkpoints, see :func:`exported_model`)."""
    cfg = loaded[0].cfg
    ds = make_dataset(prep, rows, cfg.data, loaded[0].preprocessing, training=False, seed=0)
    workers, kind = resolve_loader(cfg.data)  # the run's data.num_workers and loader
    loader = build_loader(ds, batch_size=batch_size or cfg.train.valid_batch_size, sampler=range(len(ds)),
                          workers=workers if num_workers is None else num_workers, kind=kind)
    return ensemble_probs(loaded, loader, tta=tta) if model is None else onnx_probs(model, loader, tta=tta)


def predict_submission(run: str | Path, *, data: str | Path | None = None, out: str | Path | None = None,
                       folds: str = "all", tta: str = "auto", tune_bias: TuneBias = "auto", backend: Backend = "torch",
                       **loading: int | None) -> dict:
    """Predict the evaluation images of ``data``; write the submission and the probabilities beside it.

    A competition source gives eval/info.csv's rows in its order (``ImageID,ans``); a CSV source its
    ``split=eval`` rows in manifest order, identified by their manifest path (``path,ans,class_name``).

    Args:
        run: a run directory written by ``maskcls train``.
        data: a prepared directory or a raw source (see :func:`run_and_data`).
        out: the submission file, or an existing directory to write ``submission.csv`` into
            (default ``RUN/submission.csv``); an existing file is never overwritten (-2, -3, … suffixes).
        folds: 'all', 'best' or a list like '0,2'.
        tta: 'auto' (the views the run validated with, ``train.valid_tta``: what its oof.csv and decision
            offsets saw), 'none' or 'hflip'.
        tune_bias: 'auto' applies the run's decision offsets (decision.json) when they raised the
            cross-fitted out-of-fold macro F1, 'on' always, 'off' never (plain argmax).
        backend: 'torch', 'onnx' or 'onnx-int8' (see the module docstring).
        loading: ``batch_size`` (images per batch; default the run's validation batch) and
            ``num_workers`` (loader workers; default the run's).
    """
    run = Path(run)
    check_tune_bias(tune_bias)
    check_tta(tta, TTA_REQUESTS)
    check_backend(backend)
    if set(loading) - {"batch_size", "num_workers"}:
        raise TypeError(f"predict_submission() got unexpected keyword arguments {sorted(loading)}")
    loaded, prep, made = run_and_data(run, folds=folds, data=data)
    tta = resolve_tta(tta, loaded)
    rows, sub = _submission_rows(prep)
    offsets = read_offsets(run, tune_bias, k=loaded[0].task.num_classes)
    model = exported_model(run, loaded, backend)
    probs = eval_probabilities(loaded, prep, rows, tta=tta, model=model, **loading)
    sub["ans"] = apply_offsets(probs, offsets)
    if prep.meta.get("kind") == "csv":
        sub["class_name"] = [prep.class_names[c] for c in sub["ans"]]
    out_path = write_submission(sub, probs, submission_path(run, out))
    return {"submission": str(out_path), "probabilities": str(out_path.with_name(out_path.stem + ".probs.csv")),
            "rows": len(sub), "folds": [f.fold for f in loaded], "tta": tta, "decision_offsets": offsets is not None,
            "decision": decision_record(run, tune_bias, applied=offsets is not None, tta=tta, valid_tta=resolve_tta(
                "auto", loaded)),
            "backend": backend, "model": str(model) if model else None,
            "precision": {"torch": "bf16" if inference_bf16(loaded, device_for_inference()) else "fp32",
                          "onnx": "fp32", "onnx-int8": "int8"}[backend],
            "prepared": str(prep.dir), "prepared_now": made,
            "class_counts": np.bincount(sub["ans"], minlength=probs.shape[1]).tolist()}


def decision_record(run: Path, tune_bias: TuneBias, *, applied: bool, tta: str, valid_tta: str) -> dict:
    """Whether the run's decision offsets were applied, from which file, and why (not): ``reason`` is 'off'
    (--tune-bias off), 'missing' (no decision.json), 'no gain' (auto, and they did not raise the cross-fitted
    out-of-fold macro F1), 'on' or 'gain' (applied); with the F1s decision.json records, and whether the offsets
    were fitted on another view than the one predicted (``tta`` vs the run's ``valid_tta``)."""
    path = Path(run) / DECISION_FILE
    info = read_json(path) if tune_bias != "off" else None
    record = {"mode": tune_bias, "applied": applied, "file": str(path) if info is not None else None,
              "f1_argmax": None, "f1_tuned": None, "parts": None,
              "other_view": applied and tta != valid_tta, "fitted_view": valid_tta}
    if isinstance(info, dict):
        record.update(f1_argmax=info.get("f1_argmax"), f1_tuned=info.get("f1_tuned_cross_fitted"),
                      parts=info.get("parts"))
    record["reason"] = ("off" if tune_bias == "off" else "missing" if info is None else
                        ("on" if tune_bias == "on" else "gain") if applied else "no gain")
    return record


def write_submission(sub: pd.DataFrame, probs: np.ndarray, out_path: Path) -> Path:
    """The submission and, beside it, ``<name>.probs.csv`` (the id column, then prob_0..prob_{K-1})."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, sub.to_csv(index=False))
    prob_df = pd.DataFrame(probs, columns=[f"prob_{i}" for i in range(probs.shape[1])])
    prob_df.insert(0, sub.columns[0], sub.iloc[:, 0].to_numpy())
    atomic_write_text(out_path.with_name(out_path.stem + ".probs.csv"), prob_df.to_csv(index=False,
                                                                                     float_format="%.6f"))
    return out_path


def submission_path(run: Path, out: str | Path | None) -> Path:
    """``out`` (a file, or ``submission.csv`` in an existing directory) or RUN/submission.csv, never overwriting."""
    if out is None:
        return free_name(run / "submission.csv")
    target = Path(out)
    if target.is_dir() or str(out).endswith(("/", os.sep)):
        target = target / "submission.csv"
    return free_name(target)


def _prediction_data(run: Path, data: str | Path | None, fold: LoadedFold) -> tuple[Prepared, bool]:
    """(the prepared directory to predict, whether it was made now from a raw source)."""
    if data is None:
        trained_on = Path(fold.meta["prepared"])
        if not (trained_on / "prepare.json").is_file():
            raise FileNotFoundError(f"the prepared directory this run trained on, {trained_on}, is gone; pass --data "
                                    "with a prepared directory, the competition folder or a CSV of images")
        return load_prepared(trained_on), False
    source = Path(data)
    if (source / "prepare.json").is_file() or (source / "manifest.csv").is_file():
        return load_prepared(source), False
    if not source.exists():
        raise FileNotFoundError(f"--data {source} not found; give a prepared directory, a competition folder with "
                                "eval/info.csv, or a CSV of images")
    out = free_name(run / "predict-data" / (source.stem if source.is_file() else source.resolve().name))
    # A CSV given for prediction is the user's own list of images: absolute paths are fine here.
    prepare_for_prediction(source, out, task=fold.task, allow_absolute=True)
    if fold.preprocessing.faces:
        from ..prep.face_crop import FaceSettings
        from ..prep.faces import build_face_crops
        settings = FaceSettings.from_dict(fold.meta.get("face_settings") or {}, source=f"{run}'s face settings")
        build_face_crops(out, **settings.to_dict(), progress=False)
    return load_prepared(out), True


def _submission_rows(prep: Prepared) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest rows to predict, the submission's id columns in the same order); every image checked to exist."""
    rows = prep.eval_rows()
    prep.check_images(rows, fix=PREDICT_FIX)
    if prep.meta.get("kind") == "csv":
        if len(rows) == 0:
            raise DataError(f"{prep.dir} has no evaluation rows (its CSV marks no row split=eval); mark the rows to "
                            "predict with split=eval, pass --data with a CSV of images, or predict files with "
                            "`maskcls predict RUN IMAGE…`")
        return rows, pd.DataFrame({"path": rows["image_id"].to_numpy()})
    if not prep.meta.get("eval_csv") or len(rows) == 0:
        raise DataError(f"{prep.dir} has no evaluation images (its source had no eval/info.csv); pass --data with a "
                        "folder holding eval/info.csv, or predict image files with `maskcls predict RUN IMAGE…`")
    info_path = prep.root / prep.meta["eval_csv"]
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found; {PREDICT_FIX}")
    info = pd.read_csv(info_path, dtype=str, keep_default_na=False)
    if "ImageID" not in info.columns:
        raise DataError(f"{info_path}: no ImageID column")
    if list(info["ImageID"]) != list(rows["image_id"]):
        missing = sorted(set(info["ImageID"]) - set(rows["image_id"]))[:10]
        raise DataError(f"{info_path} and {prep.dir}/manifest.csv disagree (eval images excluded or changed: "
                        f"{missing}); re-run `maskcls prepare` without --skip-bad for the eval part")
    return rows, info.copy()


def expand_images(items: list[str]) -> list[str]:
    """Files as given; folders → their image files (sorted, hidden and ._* skipped)."""
    out = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            found = sorted(str(q) for q in p.rglob("*") if q.is_file() and is_image_name(q.name))
            if not found:
                raise DataError(f"folder {p} holds no images ({', '.join(('.jpg', '.png', '.jpeg'))} …)")
            out += found
        elif p.exists():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{p} not found")
    return out


def predict_images(run: str | Path, items: list[str], *, folds: str = "all", tta: str = "auto",
                   batch_size: int = 32, backend: Backend = "torch") -> list[dict]:
    """Predict arbitrary image files; unreadable ones get an ``error`` entry, the rest proceed (``tta``: as
    :func:`predict_submission`'s)."""
    check_tta(tta, TTA_REQUESTS)
    loaded = load_folds(run, folds)
    tta = resolve_tta(tta, loaded)
    model = exported_model(run, loaded, backend)
    meta = loaded[0].meta
    paths = expand_images(items)
    results, good = [], []
    for p in paths:
        try:
            probe(p)
            good.append(p)
        except (DataError, OSError) as e:
            results.append({"path": p, "error": str(e).replace(f"{p}: ", "")})
    if good:
        ds = paths_dataset(good, loaded[0].preprocessing, face_settings=meta.get("face_settings"))
        loader = build_loader(ds, batch_size=batch_size, sampler=range(len(ds)), workers=0)
        probs = (ensemble_probs(loaded, loader, tta=tta, progress=False) if model is None else
                 onnx_probs(model, loader, tta=tta, progress=False))
        names = meta["class_names"]
        for p, pr in zip(good, probs):
            c = int(pr.argmax())
            results.append({"path": p, "class_id": c, "label": names[c].replace("/", " / "),
                            "confidence": float(pr[c])})
    order = {p: i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])
