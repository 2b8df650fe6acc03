"""The inference layer's arithmetic: the views averaged (flip TTA), where inference runs, and the averaged class
probabilities of a run's folds (loaded by :mod:`maskcls.rundir.models`) over a loader."""
from __future__ import annotations

import typing
from typing import Literal

import numpy as np
import torch

from ..engine.accel import inference_precision
from ..errors import ConfigError, did_you_mean
from ..models.heads import probabilities, tta_views
from ..progress import track
from ..rundir.models import LoadedFold

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


def device_for_inference() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def inference_bf16(folds: list[LoadedFold], device: torch.device) -> bool:
    """Whether ``folds`` are scored in bf16 autocast on ``device``: :func:`~maskcls.engine.accel.inference_precision`,
    the rule validation follows too, so predict on a device sees the numbers its oof.csv saw there."""
    return inference_precision(device, folds[0].cfg.train.mixed_precision) == "bf16"


@torch.no_grad()
def ensemble_probs(folds: list[LoadedFold], loader, *, tta: Tta = "none", device: torch.device | None = None,
                   progress: bool = True) -> np.ndarray:
    """Average class probabilities of ``folds`` (and of the flipped view with tta='hflip') over ``loader``, in the
    inference precision (:func:`inference_bf16`): fp32 on a CPU, whatever the run was trained in, so that
    ``predict``, the exported model (fp32) and ``serve`` agree on every machine."""
    check_tta(tta)
    device = device or device_for_inference()
    bf16 = inference_bf16(folds, device)
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
