"""Quality on real photos: the two development sets at a fixed budget, defaults against a variant.

``maskcls bench quality`` prepares each development set once (5 person/photo-grouped folds,
seed 719), trains fold 0 at the fixed budget (the default config, ``data.image_size=128``,
``train.epochs=3``; CPU) for each seed, and prints validation macro F1 per epoch as the mean
± half the range over seeds, seconds per epoch, and the best epoch's F1 (what ``best.pt``
keeps). With ``--set`` overrides the variant is trained too and compared with the defaults,
seed by seed. Results are cached per (set, seed, resolved config) in the work folder, so the
defaults are trained once for many comparisons; ``--fresh`` retrains.

The development sets are built by ``../shared/devdata/build_devdata.py`` (see
docs/quality.md); they are never committed and never used by the tests.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..fsutil import atomic_write_json, read_json

log = logging.getLogger(__name__)

DEV_SETS = ("mask3dev", "agegender6dev")
BUDGET = {"image_size": 128, "epochs": 3}
FOLD = 0


def budget_config(base: Config | None = None) -> Config:
    """``base`` (default: the defaults) at the fixed budget: 128 px, 3 epochs."""
    cfg = base or Config()
    return replace(cfg, data=replace(cfg.data, image_size=BUDGET["image_size"]),
                   train=replace(cfg.train, epochs=BUDGET["epochs"]))


def prepared_set(data_dir: Path, name: str, work: Path):
    """The prepared directory of dev set ``name`` (made once; remade when its manifest changes)."""
    from ..prep.prepare import prepare
    from ..prep.prepared import load_prepared
    manifest = data_dir / name / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found; build the development sets with "
                                "`python ../shared/devdata/build_devdata.py MASK_GITDIR UTK_GITDIR "
                                f"{data_dir}` (docs/quality.md)")
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    out = work / "prepared" / name
    stamp = read_json(out / "bench-source.json")
    if stamp is None or stamp.get("manifest_sha256") != digest:
        shutil.rmtree(out, ignore_errors=True)
        prepare(manifest, out, folds=5, seed=719)
        atomic_write_json(out / "bench-source.json", {"manifest": str(manifest), "manifest_sha256": digest})
    return load_prepared(out)


@dataclass
class SeedResult:
    set: str
    seed: int
    f1: list[float]        # validation macro F1 per epoch
    seconds: list[float]   # seconds per epoch (train + validation)
    best_f1: float
    run_dir: str


# Keys added after results were first cached, each with the value that trains exactly as before the key
# existed: at that value the key is left out of the cache key, so earlier results stay valid (a new key would
# otherwise retrain every cached configuration). Add a key here only when that value changes nothing at all.
NEUTRAL_SINCE_ADDED = {("optim", "fused"): False, ("distill", "unlabelled"): False, ("loss", "age_sigma"): 0.0,
                       ("train", "valid_tta"): "none"}


def _key(cfg: Config, name: str, prep) -> str:
    """What a result depends on: every config section but ``run`` (names, folders, trackers), the set, the split,
    and the precision that actually trains (``auto`` is bf16 on one CPU and fp32 on another)."""
    from ..engine.accel import resolve_precision
    settings = {k: dict(v) for k, v in cfg.to_dict().items() if k != "run"}
    settings["train"]["mixed_precision"] = resolve_precision(cfg.train.mixed_precision)
    for (section, key), neutral in NEUTRAL_SINCE_ADDED.items():
        if section in settings and settings[section].get(key, neutral) == neutral:
            settings[section].pop(key, None)
    blob = json.dumps({"config": settings, "set": name, "manifest": prep.meta.get("manifest_sha1"),
                       "fold": FOLD}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def train_one(cfg: Config, name: str, prep, work: Path, fresh: bool = False) -> SeedResult:
    """Train fold 0 of ``prep`` with ``cfg`` (cached by config)."""
    from ..engine.run import run_training
    key = _key(cfg, name, prep)
    cached = work / "results" / f"{key}.json"
    if not fresh and (hit := read_json(cached)) is not None:
        return SeedResult(**{f: hit[f] for f in SeedResult.__dataclass_fields__})
    run_dir = work / "runs" / f"{name}-{key}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a half-finished earlier attempt
    t0 = time.perf_counter()
    s = run_training(cfg, prep, folds=[FOLD], run_dir=run_dir)
    m = pd.read_csv(run_dir / f"fold{FOLD}" / "metrics.csv")
    res = SeedResult(name, cfg.train.seed, m["valid_f1"].round(6).tolist(), m["seconds"].round(2).tolist(),
                     round(float(s["folds"][str(FOLD)]["best_f1"]), 6), str(run_dir))
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, {**res.__dict__, "config": cfg.to_dict(), "wall_seconds": time.perf_counter() - t0})
    return res


def _mean_spread(values: list[float]) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.4f} ± {(v.max() - v.min()) / 2:.4f}"


def _rows(label: str, results: list[SeedResult]) -> list[str]:
    epochs = min(len(r.f1) for r in results)
    out = []
    for e in range(epochs):
        out.append(f"  {label:<10} epoch {e + 1}   F1 {_mean_spread([r.f1[e] for r in results])}   "
                   f"{np.mean([r.seconds[e] for r in results]):6.1f} s/epoch")
    out.append(f"  {label:<10} best      F1 {_mean_spread([r.best_f1 for r in results])}   "
               f"seeds: {', '.join(f'{r.seed}: {r.best_f1:.4f}' for r in results)}")
    return out


def bench_quality(*, data_dir: str | Path = ".cache/devdata", seeds: int = 2, variant: Config | None = None,
                  variant_label: str = "variant", sets: tuple[str, ...] = DEV_SETS,
                  work: str | Path = ".cache/quality", fresh: bool = False) -> dict:
    """Defaults (and ``variant``, when given) on each dev set, ``seeds`` seeds each; returns the table text.

    Args:
        data_dir: folder holding ``<set>/manifest.csv`` for each development set.
        seeds: training seeds per set (719, 720, …: the default seed and the next ones).
        variant: a config to compare with the defaults, already at the fixed budget.
        variant_label: how the variant's rows are labelled (its overrides).
        sets: which development sets.
        work: folder for prepared sets, runs and cached results.
        fresh: retrain even when a cached result exists.
    """
    data_dir, work = Path(data_dir), Path(work)
    configs = {"defaults": budget_config()}
    if variant is not None:
        configs[variant_label] = variant
    lines = [f"quality bench: fold {FOLD} of 5, {seeds} seed(s), budget data.image_size={BUDGET['image_size']} "
             f"train.epochs={BUDGET['epochs']}; F1 = validation macro F1, mean ± half-range over seeds"]
    best: dict[str, dict[str, float]] = {label: {} for label in configs}
    for name in sets:
        prep = prepared_set(data_dir, name, work)
        lines.append(f"{name}: {len(prep.train_rows())} images, {prep.task.num_classes} classes")
        per: dict[str, list[SeedResult]] = {}
        for label, cfg in configs.items():
            per[label] = [train_one(replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + i)), name, prep,
                                    work, fresh) for i in range(seeds)]
            lines += _rows(label, per[label])
            best[label][name] = float(np.mean([r.best_f1 for r in per[label]]))
        if variant is not None:
            d = [v.best_f1 - b.best_f1 for v, b in zip(per[variant_label], per["defaults"])]
            lines.append(f"  delta ({variant_label} - defaults): {np.mean(d):+.4f} "
                         f"(seeds: {', '.join(f'{x:+.4f}' for x in d)})")
    for label in configs:
        lines.append(f"quality{'' if label == 'defaults' else ' (' + label + ')'}: "
                     + ", ".join(f"{n} F1 {f:.4f}" for n, f in best[label].items()))
    if variant is not None:  # the configuration measured comes last
        lines.append(lines.pop(-2))
    return {"text": "\n".join(lines), "best": best}
