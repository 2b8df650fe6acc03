"""Quality on real photos: the two development sets at a named budget, defaults against a variant, out of fold.

``maskcls bench quality`` prepares each development set once (5 person/photo-grouped folds, seed 719) and
trains the defaults (and, with ``--set``/``-c``, a variant) on the first ``--folds`` folds, once per seed, at a
named budget: ``quick`` (128 px, 3 epochs: screening) or ``standard`` (128 px, 10 epochs: closer to the runs
users make). Each fold's best epoch (what ``best.pt`` and ``oof.csv`` keep) is scored, and the folds' validation
predictions are pooled into one **out-of-fold macro F1**: three folds validate three times the images of fold 0
alone, for three trainings. A variant is compared fold by fold (the same split and seed on both sides): the
paired per-fold deltas, their mean and standard deviation, and the out-of-fold delta.

Results are cached per (set, fold, seed, resolved config) in the work folder, so the defaults are trained once for
many comparisons; ``--fresh`` retrains.

The development sets are built by ``../shared/devdata/build_devdata.py`` (see docs/quality.md); they are never
committed and never used by the tests.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..engine.batch_size import DEFAULT_BATCH
from ..errors import ConfigError
from ..fsutil import atomic_write_json, read_json

log = logging.getLogger(__name__)

DEV_SETS = ("mask3dev", "agegender6dev")


@dataclass(frozen=True)
class Budget:
    """A decision budget: what every compared run trains at."""
    name: str
    image_size: int
    epochs: int

    def overrides(self) -> list[str]:
        """The budget as ``--set`` words."""
        return [f"data.image_size={self.image_size}", f"train.epochs={self.epochs}"]


# quick screens ideas; standard is closer to the 15-30 epoch runs users make on GPUs, at a size a 2-core CPU can
# train on three folds of both sets in about an hour per configuration (docs/quality.md)
BUDGETS = {"quick": Budget("quick", 128, 3), "standard": Budget("standard", 128, 10)}
BUDGET = {"image_size": BUDGETS["quick"].image_size, "epochs": BUDGETS["quick"].epochs}  # the quick budget, as before


def get_budget(name: str) -> Budget:
    if name not in BUDGETS:
        raise ConfigError(f"budget {name!r}: choose one of {', '.join(BUDGETS)}")
    return BUDGETS[name]


def budget_config(base: Config | None = None, budget: Budget | str = "quick") -> Config:
    """``base`` (default: the defaults) at ``budget`` (default: quick, 128 px and 3 epochs)."""
    b = get_budget(budget) if isinstance(budget, str) else budget
    cfg = base or Config()
    return replace(cfg, data=replace(cfg.data, image_size=b.image_size), train=replace(cfg.train, epochs=b.epochs))


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
    (work / "locks").mkdir(parents=True, exist_ok=True)
    with open(work / "locks" / f"prepare-{name}.lock", "w") as lock:  # two benches on one work folder: one prepares
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = read_json(out / "bench-source.json")
        if stamp is None or stamp.get("manifest_sha256") != digest:
            shutil.rmtree(out, ignore_errors=True)
            prepare(manifest, out, folds=5, seed=719)
            atomic_write_json(out / "bench-source.json", {"manifest": str(manifest), "manifest_sha256": digest})
    return load_prepared(out)


@dataclass
class SeedResult:
    """One fold of one seed: its F1 curve and its best epoch's validation predictions."""
    set: str
    seed: int
    f1: list[float]        # validation macro F1 per epoch
    seconds: list[float]   # seconds per epoch (train + validation)
    best_f1: float
    run_dir: str
    fold: int = 0
    labels: list[int] = field(default_factory=list)  # the fold's validation labels, in oof.csv's order
    preds: list[int] = field(default_factory=list)   # the best epoch's predicted classes (what oof.csv holds)


# Keys added after results were first cached, each with the value that trains exactly as before the key
# existed: at that value the key is left out of the cache key, so earlier results stay valid (a new key would
# otherwise retrain every cached configuration). Add a key here only when that value changes nothing at all.
NEUTRAL_SINCE_ADDED = {("optim", "fused"): False, ("distill", "unlabelled"): False, ("loss", "age_sigma"): 0.0,
                       ("train", "valid_tta"): "none", ("train", "time"): 0.0}
# Keys that change nothing on the CPU the bench trains on, left out of every cache key: train.lr_scaling scales the lr
# only for a batch that auto grew on a GPU (on a CPU auto is the default batch; an explicit batch is never scaled).
CPU_INERT = (("train", "lr_scaling"),)


def _key(cfg: Config, name: str, prep, fold: int = 0) -> str:
    """What a result depends on: every config section but ``run`` (names, folders, trackers), the set, the split,
    the fold, and the precision that actually trains (``auto`` is bf16 on one CPU and fp32 on another)."""
    from ..engine.accel import resolve_precision
    settings = {k: dict(v) for k, v in cfg.to_dict().items() if k != "run"}
    settings["train"]["mixed_precision"] = resolve_precision(cfg.train.mixed_precision)
    if settings["train"]["batch_size"] == "auto":  # the bench trains on a CPU, where auto is the default batch
        settings["train"]["batch_size"] = DEFAULT_BATCH
    for (section, key), neutral in NEUTRAL_SINCE_ADDED.items():
        if section in settings and settings[section].get(key, neutral) == neutral:
            settings[section].pop(key, None)
    for section, key in CPU_INERT:
        settings.get(section, {}).pop(key, None)
    blob = json.dumps({"config": settings, "set": name, "manifest": prep.meta.get("manifest_sha1"),
                       "fold": fold}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _oof_codes(run_dir: Path, fold: int) -> tuple[list[int], list[int]]:
    oof = pd.read_csv(run_dir / f"fold{fold}" / "oof.csv", usecols=["label", "pred"])
    return oof["label"].astype(int).tolist(), oof["pred"].astype(int).tolist()


def train_one(cfg: Config, name: str, prep, work: Path, fresh: bool = False, fold: int = 0) -> SeedResult:
    """Train fold ``fold`` of ``prep`` with ``cfg`` (cached by config, set and fold). Two benches sharing the work
    folder (one per core) wait for each other on the same result instead of training it twice."""
    key = _key(cfg, name, prep, fold)
    (work / "locks").mkdir(parents=True, exist_ok=True)
    with open(work / "locks" / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _train_one(cfg, name, prep, work, fresh, fold, key)


def _train_one(cfg: Config, name: str, prep, work: Path, fresh: bool, fold: int, key: str) -> SeedResult:
    from ..engine.run import run_training
    cached = work / "results" / f"{key}.json"
    run_dir = work / "runs" / f"{name}-{key}"
    if not fresh and (hit := read_json(cached)) is not None:
        res = SeedResult(**{f: hit[f] for f in SeedResult.__dataclass_fields__ if f in hit})
        if not res.preds and (run_dir / f"fold{fold}" / "oof.csv").is_file():  # cached before predictions were
            res.labels, res.preds = _oof_codes(run_dir, fold)
            atomic_write_json(cached, {**hit, "labels": res.labels, "preds": res.preds})
        if res.preds:
            return res
    shutil.rmtree(run_dir, ignore_errors=True)  # a half-finished earlier attempt
    t0 = time.perf_counter()
    s = run_training(cfg, prep, folds=[fold], run_dir=run_dir)
    m = pd.read_csv(run_dir / f"fold{fold}" / "metrics.csv")
    labels, preds = _oof_codes(run_dir, fold)
    res = SeedResult(name, cfg.train.seed, m["valid_f1"].round(6).tolist(), m["seconds"].round(2).tolist(),
                     round(float(s["folds"][str(fold)]["best_f1"]), 6), str(run_dir), fold, labels, preds)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, {**res.__dict__, "config": cfg.to_dict(), "wall_seconds": time.perf_counter() - t0})
    return res


def oof_f1(results: list[SeedResult], num_classes: int) -> float:
    """Macro F1 of the folds' best-epoch validation predictions pooled into one out-of-fold set."""
    from ..metrics import confusion, macro_f1
    y = np.concatenate([r.labels for r in results]).astype(np.int64)
    p = np.concatenate([r.preds for r in results]).astype(np.int64)
    return macro_f1(confusion(y, p, num_classes))


@dataclass
class Scored:
    """One configuration on one set: results per seed, each a list over folds."""
    by_seed: dict[int, list[SeedResult]]
    num_classes: int

    def oof(self) -> dict[int, float]:
        return {s: oof_f1(rs, self.num_classes) for s, rs in self.by_seed.items()}

    def mean_oof(self) -> float:
        return float(np.mean(list(self.oof().values())))

    def flat(self) -> list[SeedResult]:
        return [r for rs in self.by_seed.values() for r in rs]


def _fmt(values, sign: bool = False) -> str:
    return ", ".join(f"{v:+.4f}" if sign else f"{v:.4f}" for v in values)


def _rows(label: str, sc: Scored) -> list[str]:
    results = sc.flat()
    epochs = min(len(r.f1) for r in results)
    out = []
    for e in range(epochs):
        v = np.array([r.f1[e] for r in results])
        out.append(f"  {label:<10} epoch {e + 1:<3} F1 {v.mean():.4f} ± {v.std():.4f} (mean ± sd over "
                   f"{len(v)} fold×seed)   {np.mean([r.seconds[e] for r in results]):6.1f} s/epoch")
    for seed, rs in sc.by_seed.items():
        out.append(f"  {label:<10} seed {seed}: best epoch per fold {_fmt(r.best_f1 for r in rs)} "
                   f"(epochs {', '.join(str(int(np.argmax(r.f1)) + 1) for r in rs)}); "
                   f"out-of-fold F1 {sc.oof()[seed]:.4f} over {sum(len(r.labels) for r in rs)} images")
    return out


def paired_delta(variant: Scored, base: Scored) -> dict:
    """Per-(seed, fold) deltas of the best-epoch F1 and per-seed out-of-fold deltas, variant − base."""
    per_fold = [v.best_f1 - b.best_f1 for s in sorted(variant.by_seed) if s in base.by_seed
                for v, b in zip(variant.by_seed[s], base.by_seed[s])]
    oof_v, oof_b = variant.oof(), base.oof()
    per_seed = [oof_v[s] - oof_b[s] for s in sorted(oof_v) if s in oof_b]
    d = np.asarray(per_fold, float)
    return {"per_fold": per_fold, "mean": float(d.mean()), "sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "oof": float(np.mean(per_seed)), "oof_per_seed": per_seed}


def bench_quality(*, data_dir: str | Path = ".cache/devdata", seeds: int = 1, variant: Config | None = None,
                  variant_label: str = "variant", sets: tuple[str, ...] = DEV_SETS,
                  work: str | Path = ".cache/quality", fresh: bool = False, budget: str = "quick",
                  folds: int = 3, first_seed: int | None = None, base: Config | None = None,
                  base_label: str = "defaults") -> dict:
    """Defaults (and ``variant``, when given) on each dev set: ``folds`` folds × ``seeds`` seeds; returns the text.

    Args:
        data_dir: folder holding ``<set>/manifest.csv`` for each development set.
        seeds: training seeds per fold (``first_seed``, the next, …).
        variant: a config to compare with the defaults, already at the budget.
        variant_label: how the variant's rows are labelled (its overrides).
        sets: which development sets.
        work: folder for prepared sets, runs and cached results.
        fresh: retrain even when a cached result exists.
        budget: ``quick`` or ``standard`` (:data:`BUDGETS`); the defaults are trained at it.
        folds: how many of the 5 folds (0, 1, …) are trained and pooled out of fold.
        first_seed: the first seed (default: the config's, 719).
        base: what the variant is compared with, already at the budget (default: the defaults at the budget), for
            two alternatives side by side (``train.epochs=20`` against ``train.epochs=30``).
        base_label: how the base's rows are labelled (its overrides).
    """
    b = get_budget(budget)
    if not 1 <= folds <= 5:
        raise ConfigError(f"--folds {folds}: the development sets have 5 folds; give 1 to 5")
    data_dir, work = Path(data_dir), Path(work)
    if base is None:
        base, base_label = budget_config(budget=b), "defaults"
    if variant is not None and variant_label == base_label:
        raise ConfigError(f"the variant and the base are the same overrides ({variant_label}): give them different "
                          "--set and --base-set words")
    configs = {base_label: base}
    if variant is not None:
        configs[variant_label] = variant
    first = base.train.seed if first_seed is None else first_seed
    seed_list = [first + i for i in range(seeds)]
    lines = [f"quality bench, {b.name} budget (data.image_size={b.image_size} train.epochs={b.epochs}): folds "
             f"{', '.join(map(str, range(folds)))} of 5, seed(s) {', '.join(map(str, seed_list))}; F1 = validation "
             "macro F1 (the run's valid_tta view), out-of-fold = the folds' best epochs pooled"]
    summary: dict[str, dict[str, float]] = {label: {} for label in configs}
    deltas: dict[str, dict] = {}
    for name in sets:
        prep = prepared_set(data_dir, name, work)
        lines.append(f"{name}: {len(prep.train_rows())} images, {prep.task.num_classes} classes")
        scored: dict[str, Scored] = {}
        for label, cfg in configs.items():
            by_seed = {s: [train_one(replace(cfg, train=replace(cfg.train, seed=s)), name, prep, work, fresh, f)
                           for f in range(folds)] for s in seed_list}
            scored[label] = Scored(by_seed, prep.task.num_classes)
            lines += _rows(label, scored[label])
            summary[label][name] = scored[label].mean_oof()
        if variant is not None:
            d = deltas[name] = paired_delta(scored[variant_label], scored[base_label])
            lines.append(f"  delta ({variant_label} - {base_label}): out-of-fold {d['oof']:+.4f} "
                         f"(per seed {_fmt(d['oof_per_seed'], True)}); per fold {_fmt(d['per_fold'], True)}: "
                         f"mean {d['mean']:+.4f} ± {d['sd']:.4f} sd")
    for label in configs:  # the variant's label comes after its figures, so the line starts the same for any label
        figures = ", ".join(f"{n} {f:.4f}" for n, f in summary[label].items())
        if label == "defaults":
            lines.append(f"quality, out-of-fold macro F1: {figures}")
        else:
            role = "base" if label == base_label else "variant"
            lines.append(f"quality of the {role}, out-of-fold macro F1: {figures} ({role}: {label})")
    if variant is not None:  # the configuration measured comes last
        lines.append(lines.pop(-2))
    return {"text": "\n".join(lines), "oof": summary, "deltas": deltas}
