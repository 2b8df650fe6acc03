"""The inference layer: trained folds loaded back from a run, and their averaged probabilities.

``predict``, ``export`` (and serving) all load folds here: the model is rebuilt from the
checkpoint's meta (architecture, heads, preprocessing, task), never from a guess.
"""
from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..config import Config
from ..config_io import config_from_dict
from ..data.preprocessing import Preprocessing
from ..engine.checkpoint import load_checkpoint
from ..engine.rundir import KEYS_OLD_DEFAULTS
from ..errors import CheckpointError, ConfigError, did_you_mean
from ..models.factory import MaskClsNet, build_model
from ..models.heads import probabilities, tta_views
from ..prep.folds import parse_fold_list
from ..progress import track
from ..task import Task

Tta = Literal["none", "hflip"]
TTA_CHOICES: tuple[str, ...] = typing.get_args(Tta)


TTA_REQUESTS: tuple[str, ...] = ("auto", *TTA_CHOICES)  # what predict accepts: auto = the run's train.valid_tta


def check_tta(tta: str, choices: tuple[str, ...] = TTA_CHOICES) -> str:
    """``tta`` if it is one of ``choices``; else a ConfigError listing them (never a silent 'none')."""
    if tta not in choices:
        raise ConfigError(f"tta={tta!r} is not a valid choice; choose one of {', '.join(choices)}"
                          f"{did_you_mean(str(tta), choices)}")
    return tta


def resolve_tta(tta: str, folds: list[LoadedFold]) -> Tta:
    """The views prediction averages: 'auto' is those the run validated with (its ``train.valid_tta``; 'none' for a
    run trained before that key existed), which its oof.csv and decision offsets saw; 'none' and 'hflip'
    are themselves."""
    if check_tta(tta, TTA_REQUESTS) == "auto":
        return folds[0].cfg.train.valid_tta
    return tta


@dataclass
class LoadedFold:
    fold: int
    model: MaskClsNet
    meta: dict
    cfg: Config

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**self.meta["preprocessing"])

    @property
    def task(self) -> Task:
        return Task.from_meta(self.meta)

    @property
    def heads(self) -> str:
        return self.meta["heads"]


def available_folds(run: Path) -> dict[int, Path]:
    return {int(p.parent.name[4:]): p for p in sorted(run.glob("fold*/best.pt")) if p.parent.name[4:].isdigit()}


def select_folds(run: str | Path, spec: str = "all") -> dict[int, Path]:
    """'all' → every fold with a best.pt; 'best' → the fold with the highest validation F1; '0,2' → those."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found")
    found = available_folds(run)
    if not found:
        raise CheckpointError(f"{run} has no checkpoints (no fold*/best.pt); train first, or wait until the first "
                              "epoch of a running training has finished")
    if spec == "all":
        return found
    if spec == "best":
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").exists() else {}
        scores = {int(f): r.get("best_f1") or -1 for f, r in summary.get("folds", {}).items() if int(f) in found}
        best = max(scores, key=scores.get) if scores else min(found)
        return {best: found[best]}
    wanted = parse_fold_list(spec, words=("all", "best"))
    missing = [f for f in wanted if f not in found]
    if missing:
        raise CheckpointError(f"--folds {spec!r}: no best.pt for fold(s) {missing} in {run}; "
                              f"available: {sorted(found)}")
    return {f: found[f] for f in wanted}


def load_fold(path: Path, fold: int) -> LoadedFold:
    ck = load_checkpoint(path)
    meta, cfg = ck["meta"], config_from_dict(ck["config"], missing=KEYS_OLD_DEFAULTS)
    pp = meta["preprocessing"]
    task = Task.from_meta(meta)
    model, _ = build_model(meta["model_name"], num_outputs=task.outputs(meta["heads"]), pretrained="none",
                           mean=pp["mean"], std=pp["std"], image_size=pp["image_size"])
    model.load_state_dict(ck["model"])
    model.eval()
    return LoadedFold(fold, model, meta, cfg)


def check_compatible(folds: list[LoadedFold]) -> None:
    """Folds of one ensemble must share preprocessing and label space."""
    ref = folds[0]
    for f in folds[1:]:
        for key in ("num_classes", "heads", "preprocessing", "class_names"):
            if f.meta[key] != ref.meta[key]:
                raise CheckpointError(f"fold {f.fold} differs from fold {ref.fold} in {key}; ensemble folds of one run "
                                      "only, or pick folds with --folds")


def load_folds(run: str | Path, spec: str = "all") -> list[LoadedFold]:
    """The folds of ``run`` chosen by ``spec`` ('all', 'best', '0,2'), checked to form one ensemble."""
    folds = [load_fold(p, f) for f, p in select_folds(run, spec).items()]
    check_compatible(folds)
    return folds


def device_for_inference() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def ensemble_probs(folds: list[LoadedFold], loader, *, tta: Tta = "none", device: torch.device | None = None,
                   bf16: bool | None = None, progress: bool = True) -> np.ndarray:
    """Average class probabilities of ``folds`` (and of the flipped view with tta='hflip') over ``loader``.

    Precision: on a CPU always fp32, whatever the run was trained in and whatever the CPU, so that
    ``predict``, the exported model (fp32) and ``serve`` agree on every machine; bf16 autocast only
    on a CUDA GPU that supports it (``bf16=False`` turns it off there too).
    """
    check_tta(tta)
    device = device or device_for_inference()
    if bf16 is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    bf16 = bf16 and device.type == "cuda"
    models = [f.model.to(device).to(memory_format=torch.channels_last).eval() for f in folds]
    task, heads = folds[0].task, folds[0].heads
    out = []
    for x, _, _ in track(loader, desc="predict", enabled=progress):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        views = tta_views(x, tta)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            p = sum(probabilities(m(v).float(), task, heads) for m in models for v in views)
            p = p / (len(models) * len(views))
        out.append(p.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, task.num_classes), np.float32)
