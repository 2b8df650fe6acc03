"""``maskcls predict``: a competition submission, or one line per image for a person at a shell."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .data.imageio import is_image_name, probe
from .data.loader import build_loader
from .engine.decision import apply_offsets, read_offsets
from .engine.fold_data import make_dataset, paths_dataset, resolve_loader
from .errors import DataError
from .fsutil import atomic_write_text, free_name
from .inference import ensemble_probs, load_folds
from .prep.prepared import load_prepared

log = logging.getLogger(__name__)


def run_and_data(run: str | Path, *, folds: str = "all", data: str | Path | None = None):
    """The run's chosen folds and the prepared directory to predict (default: the one it trained on)."""
    loaded = load_folds(run, folds)
    meta = loaded[0].meta
    prep = load_prepared(data or meta["prepared"])
    if prep.num_classes != meta["num_classes"]:
        raise DataError(f"{prep.dir} has {prep.num_classes} classes but the run was trained on {meta['num_classes']}")
    return loaded, prep


def eval_probabilities(loaded: list, prep, *, tta: str = "none", batch_size: int | None = None,
                       num_workers: int | None = None) -> np.ndarray:
    """Fold-ensemble probabilities of ``prep``'s evaluation rows, in manifest order."""
    rows = prep.eval_rows()
    if len(rows) == 0:
        raise DataError(f"{prep.dir} has no evaluation images (its source had no eval/info.csv); predict image "
                        "files with `maskcls predict RUN IMAGE…` instead")
    cfg = loaded[0].cfg
    ds = make_dataset(prep, rows, cfg.data, loaded[0].preprocessing, training=False, seed=0)
    workers, kind = resolve_loader(cfg.data)  # the run's data.num_workers and loader
    loader = build_loader(ds, batch_size=batch_size or cfg.train.valid_batch_size, sampler=range(len(ds)),
                          workers=workers if num_workers is None else num_workers, kind=kind)
    return ensemble_probs(loaded, loader, tta=tta)


def _info_csv(prep) -> pd.DataFrame:
    """eval/info.csv of the competition source, checked against the manifest's eval rows."""
    rows = prep.eval_rows()
    if not prep.meta.get("eval_csv") or len(rows) == 0:
        raise DataError(f"{prep.dir} has no evaluation images (its source had no eval/info.csv); predict image "
                        "files with `maskcls predict RUN IMAGE…` instead")
    info_path = prep.root / prep.meta["eval_csv"]
    info = pd.read_csv(info_path, dtype=str, keep_default_na=False)
    if "ImageID" not in info.columns:
        raise DataError(f"{info_path}: no ImageID column")
    if list(info["ImageID"]) != list(rows["image_id"]):
        missing = sorted(set(info["ImageID"]) - set(rows["image_id"]))[:10]
        raise DataError(f"{info_path} and {prep.dir}/manifest.csv disagree (eval images excluded or changed: "
                        f"{missing}); re-run `maskcls prepare` without --skip-bad for the eval part")
    return info


def predict_submission(run: str | Path, *, data: str | None = None, out: str | None = None, folds: str = "all",
                       tta: str = "none", batch_size: int | None = None, num_workers: int | None = None,
                       tune_bias: str = "auto") -> dict:
    """Predict eval/info.csv's images; write the submission (same rows, same order) and probabilities.

    ``tune_bias``: 'auto' applies the run's decision offsets (decision.json) when they raised the
    cross-fitted out-of-fold macro F1, 'on' always, 'off' never (plain argmax).
    """
    loaded, prep = run_and_data(run, folds=folds, data=data)
    info = _info_csv(prep)
    offsets = read_offsets(Path(run), tune_bias)
    probs = eval_probabilities(loaded, prep, tta=tta, batch_size=batch_size, num_workers=num_workers)
    sub = info.copy()
    sub["ans"] = apply_offsets(probs, offsets)
    out_path = free_name(Path(out) if out else Path(run) / "submission.csv")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path, sub.to_csv(index=False))
    prob_df = pd.DataFrame(probs, columns=[f"prob_{i}" for i in range(probs.shape[1])])
    prob_df.insert(0, "ImageID", info["ImageID"].to_numpy())
    probs_path = out_path.with_name(out_path.stem + ".probs.csv")
    atomic_write_text(probs_path, prob_df.to_csv(index=False, float_format="%.6f"))
    return {"submission": str(out_path), "probabilities": str(probs_path), "rows": len(sub),
            "folds": [f.fold for f in loaded], "tta": tta, "decision_offsets": offsets is not None,
            "class_counts": np.bincount(sub["ans"], minlength=probs.shape[1]).tolist()}


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


def predict_images(run: str | Path, items: list[str], *, folds: str = "all", tta: str = "none",
                   batch_size: int = 32) -> list[dict]:
    """Predict arbitrary image files; unreadable ones get an ``error`` entry, the rest proceed."""
    loaded = load_folds(run, folds)
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
        probs = ensemble_probs(loaded, build_loader(ds, batch_size=batch_size, sampler=range(len(ds)), workers=0),
                               tta=tta, progress=False)
        names = meta["class_names"]
        for p, pr in zip(good, probs):
            c = int(pr.argmax())
            results.append({"path": p, "class_id": c, "label": names[c].replace("/", " / "),
                            "confidence": float(pr[c])})
    order = {p: i for i, p in enumerate(paths)}
    return sorted(results, key=lambda r: order[r["path"]])
