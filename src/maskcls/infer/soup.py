"""``maskcls soup RUN1 RUN2 … --out NEWRUN``: a greedy model soup across runs of one config (Wortsman et al.,
2022): per fold, the runs' models are ranked by their validation macro F1, the best one starts the soup, and each
next one joins only if the soup's validation F1 (its weights averaged with the members', equal weights) does not
drop. One model's prediction cost, unlike an ensemble.

The runs must differ only in their seed (and run name/folder, loader workers): the same config, prepared split,
folds, architecture and preprocessing; anything else is refused naming the difference. Runs from different seeds
share the pretrained backbone but not the random head they started from, so whether their weights average into
a good model is exactly what the greedy rule tests.

The result is an ordinary run directory (config.yaml, run.json with a ``soup`` record, summary.json,
decision.json, and per fold best.pt + oof.csv) that predict, export, serve, report and audit accept; every
number in it is measured here as training validates: in the runs' view (``train.valid_tta``, flip TTA by default)
and the inference precision (fp32 on a CPU), so that a run's F1 alone equals what its training printed.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config_io import dump_yaml, flatten
from ..data.loader import build_loader
from ..engine.decision import tune_run
from ..engine.extensions.averaging import average_state_dicts
from ..engine.fold_data import fold_rows, make_dataset, resolve_loader
from ..errors import CheckpointError, ConfigError
from ..fsutil import atomic_write_json, atomic_write_text, ensure_new_dir
from ..metrics import confusion, macro_f1
from ..prep.prepared import load_prepared
from ..rundir.checkpoint import save_checkpoint
from ..rundir.files import fold_dir, fold_numbers, read_run_config, read_run_info
from ..rundir.models import LoadedFold, load_fold
from ..rundir.oof import read_oof, write_oof
from ..rundir.summary import summarize_run
from .loading import device_for_inference, ensemble_probs, inference_bf16

log = logging.getLogger(__name__)

# keys that may differ between the ingredients of one soup
FREE_KEYS = ("train.seed", "data.num_workers", "data.loader")


def check_soup_runs(runs: list[Path]) -> list[int]:
    """The folds every run trained, after checking that the runs differ only in :data:`FREE_KEYS` and trained
    on the same prepared data and folds. Raises ConfigError / CheckpointError naming the difference."""
    if len(runs) < 2:
        raise ConfigError("a soup needs at least two runs (of one config, different seeds)")
    if len(set(r.resolve() for r in runs)) != len(runs):
        raise ConfigError("a run is given twice; give each run once")
    infos = [read_run_info(r) for r in runs]
    cfgs = [{k: v for k, v in flatten(read_run_config(r).to_dict()).items()
             if k not in FREE_KEYS and not k.startswith("run.")} for r in runs]
    for r, info, cfg in zip(runs[1:], infos[1:], cfgs[1:]):
        diff = sorted(k for k in set(cfg) | set(cfgs[0]) if cfg.get(k) != cfgs[0].get(k))
        if diff:
            raise ConfigError(f"{r} and {runs[0]} differ in {', '.join(diff[:5])}: a soup averages runs of one "
                              f"config that differ only in train.seed")
        for key in ("prepared", "manifest_sha1", "folds"):
            if info.get(key) != infos[0].get(key):
                raise ConfigError(f"{r} and {runs[0]} differ in {key} ({info.get(key)} vs {infos[0].get(key)}): a "
                                  "soup averages runs trained on the same prepared data and folds")
    folds = sorted(set.intersection(*(set(fold_numbers(r, "best.pt")) for r in runs)))
    if not folds:
        raise CheckpointError("the runs have no trained fold in common (fold*/best.pt); train them first")
    return folds


class _FoldValidation:
    """A fold's validation images, scored for macro F1 with a given set of weights as training validated them: in
    the run's view (``train.valid_tta``) and the inference precision (fp32 on a CPU), so that an ingredient's F1
    alone is the one its training printed, and the soup's oof.csv holds the view its decision offsets and
    ``predict --tta auto`` use."""

    def __init__(self, template: LoadedFold, fold: int):
        self.template, self.fold = template, fold
        self.tta, self.device = template.cfg.train.valid_tta, device_for_inference()
        self.precision = "bf16" if inference_bf16([template], self.device) else "fp32"
        prep = load_prepared(template.meta["prepared"])
        self.prep, self.rows = prep, fold_rows(prep, fold)[1]
        cfg = template.cfg
        ds = make_dataset(prep, self.rows, cfg.data, template.preprocessing, training=False, seed=0)
        workers, kind = resolve_loader(cfg.data)
        self.loader = build_loader(ds, batch_size=cfg.train.valid_batch_size, sampler=range(len(ds)),
                                   workers=workers, kind=kind)
        self.labels = self.rows["label"].to_numpy()

    def score(self, weights: dict[str, torch.Tensor]) -> tuple[float, float, np.ndarray]:
        """(macro F1, accuracy, probabilities) of the template model with ``weights``."""
        self.template.model.load_state_dict(weights)
        probs = ensemble_probs([self.template], self.loader, tta=self.tta, device=self.device, progress=False)
        cm = confusion(self.labels, probs.argmax(1), self.template.task.num_classes)
        return macro_f1(cm), float(np.trace(cm) / max(cm.sum(), 1)), probs


def greedy_soup(ingredients: list[dict[str, torch.Tensor]], val: _FoldValidation) -> tuple[list[int], dict]:
    """Wortsman's greedy soup over ``ingredients`` (state dicts): returns (the indices kept, in the order
    tried, and the record: each ingredient's F1 alone, the soup's F1 after each try)."""
    alone = [val.score(w)[0] for w in ingredients]
    order = sorted(range(len(ingredients)), key=lambda i: (-alone[i], i))
    kept, best, tries = [order[0]], alone[order[0]], []
    for i in order[1:]:
        f1 = val.score(average_state_dicts(ingredients[j] for j in kept + [i]))[0]
        tries.append({"ingredient": i, "soup_f1": f1, "kept": f1 >= best})
        if f1 >= best:
            kept, best = kept + [i], f1
    return kept, {"f1_alone": alone, "tries": tries}


def make_soup(runs: list[str | Path], out: str | Path) -> dict:
    """Write the greedy soup of ``runs`` as a new run directory ``out``; returns its summary.json content."""
    runs = [Path(r) for r in runs]
    for r in runs:
        if not r.is_dir():
            raise FileNotFoundError(f"run directory {r} not found")
    folds = check_soup_runs(runs)
    out = ensure_new_dir(out)
    cfg = read_run_config(runs[0])
    results, record = {}, {}
    for f in folds:
        loaded = [load_fold(fold_dir(r, f) / "best.pt", f) for r in runs]
        for lf, r in zip(loaded[1:], runs[1:]):
            for key in ("model_name", "heads", "preprocessing", "class_names"):
                if lf.meta[key] != loaded[0].meta[key]:
                    raise CheckpointError(f"fold {f} of {r} differs from {runs[0]}'s in {key}")
        weights = [{k: v.clone() for k, v in lf.model.state_dict().items()} for lf in loaded]
        val = _FoldValidation(loaded[0], f)
        kept, rec = greedy_soup(weights, val)
        soup = average_state_dicts(weights[i] for i in kept)
        f1, acc, probs = val.score(soup)
        d = fold_dir(out, f)
        d.mkdir()
        write_oof(d / "oof.csv", val.rows, val.prep.abs_paths(val.rows), probs)
        save_checkpoint({"model": soup, "epoch": 0, "metric": f1, "config": cfg.to_dict(), "meta": loaded[0].meta,
                         "soup": {"runs": [str(runs[i].resolve()) for i in kept]}}, d / "best.pt")
        record[str(f)] = {"kept": [str(runs[i]) for i in kept], **rec}
        results[f] = {"best_f1": f1, "best_acc": acc, "best_epoch": None, "status": "done",
                      "soup": {"kept": len(kept), "of": len(runs), "best_ingredient_f1": max(rec["f1_alone"]),
                               "tta": val.tta, "precision": val.precision}}
        log.info("soup fold %d: %d of %d runs kept, validation macro F1 %.4f (best run alone %.4f; %s, %s)", f,
                 len(kept), len(runs), f1, max(rec["f1_alone"]), val.tta, val.precision)
    info = read_run_info(runs[0])
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    atomic_write_json(out / "run.json", {**{k: info[k] for k in ("prepared", "manifest_sha1") if k in info},
                                         "folds": folds, "soup": {"runs": [str(r.resolve()) for r in runs],
                                                                  "folds": record}})
    task = loaded[0].task
    oof = read_oof(out, folds)
    decision = tune_run(out, oof, task) if oof is not None else None
    return {**summarize_run(out, name=out.name, task=task, heads=loaded[0].heads, folds=results, finished=True,
                            decision=decision), "run_dir": str(out)}
