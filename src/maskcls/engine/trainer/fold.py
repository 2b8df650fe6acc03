"""One fold's training: model, data, loss, optimiser and schedule from the config, then epochs.

Each epoch ends with exact validation metrics, ``metrics.csv``, ``lr.csv`` and ``last.pt``
(full state: resuming from it equals not having stopped); ``best.pt`` and ``oof.csv`` follow
the best validation macro F1. Every rank trains its shard; rank 0 alone writes.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .. import __version__
from ..config import Config
from ..data.loader import set_epoch
from ..data.preprocessing import Preprocessing
from ..models.factory import build_model, unwrap_model
from ..prep.prepared import Prepared
from ..task import Task
from .accel import seed_everything
from .averaging import finish_average, make_averager
from .callbacks import Callback, Callbacks
from .checkpoint import FoldCheckpoints, Trainable
from .ema import make_ema
from .fold_data import TrainingAges, fold_data
from .loop import EpochSetup, TrainingDiverged, evaluate, progressive_size, steps_per_epoch, train_one_epoch
from .losses import build_loss
from .metrics import EpochMetrics
from .mixing import make_mixer
from .optim import build_optimizer, build_scheduler, param_groups, set_schedule_length
from .rundir import fold_dir, write_lr_csv, write_metrics_csv, write_oof
from .soft_ages import age_soft_targets, soft_target_lookup
from .trackers import RunTrackers

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every fold of a run shares (the config is the resolved one, as config.yaml records it)."""
    cfg: Config
    prep: Prepared
    task: Task
    pp: Preprocessing
    run: Path
    acc: Accelerator
    resume: bool
    trackers: RunTrackers


@dataclass
class FoldState:
    """Progress of one fold; stored as a plain dict in last.pt (``state``) so resuming restores it."""
    epoch: int = 0              # epochs completed
    best_f1: float = -1.0
    best_acc: float = 0.0
    best_epoch: int = -1        # 0-based index of the best epoch; -1 = none yet
    bad_epochs: int = 0         # epochs since the best (early stopping)
    history: list[dict] = field(default_factory=list)  # metrics.csv rows
    lrs: list[float] = field(default_factory=list)     # lr after every optimizer step
    status: str = "running"     # running | done | stopped | diverged
    average: dict | None = None  # train.average's result (averaging.finish_average), once computed
    extras: dict = field(default_factory=dict)  # what callbacks keep across a resume, by callback

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FoldState:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def record(self, row: dict, f1: float, acc: float) -> bool:
        """Add a finished epoch's metrics row; True when it is the best so far."""
        best = f1 > self.best_f1
        self.epoch, self.history = row["epoch"], self.history + [row]
        if best:
            self.best_f1, self.best_acc, self.best_epoch, self.bad_epochs = f1, acc, row["epoch"] - 1, 0
        else:
            self.bad_epochs += 1
        return best

    def result(self) -> dict:
        """The fold's entry in summary.json."""
        return {"best_f1": self.best_f1, "best_acc": self.best_acc, "best_epoch": self.best_epoch + 1,
                "epochs_run": self.epoch, "status": self.status,
                **({"average": self.average} if self.average else {})}


def epoch_line(fold: int, epoch: int, epochs: int, tm: EpochMetrics, vm: EpochMetrics, lr: float, best: bool) -> str:
    heads = " ".join(f"{name} {f1:.3f}" for name, f1 in vm.head_f1.items())
    return (f"fold {fold} epoch {epoch + 1}/{epochs}: train loss {tm.loss:.4f} acc {tm.acc:.3f} "
            f"f1 {tm.f1:.3f} | valid loss {vm.loss:.4f} acc {vm.acc:.3f} f1 {vm.f1:.4f}"
            f"{' (' + heads + ')' if heads else ''} | lr {lr:.2e} | "
            f"{tm.seconds + vm.seconds:.1f}s {tm.images_per_s:.1f} img/s"
            f"{' *best*' if best else ''}")


def metrics_row(epoch: int, tm: EpochMetrics, vm: EpochMetrics, lr: float, task: Task) -> dict:
    """A metrics.csv row (1-based ``epoch``)."""
    return {"epoch": epoch + 1, "train_loss": tm.loss, "train_acc": tm.acc, "train_f1": tm.f1,
            "valid_loss": vm.loss, "valid_acc": vm.acc, "valid_f1": vm.f1,
            **{f"valid_f1_{a.name}": vm.head_f1.get(a.name) for a in task.attributes},
            "lr": lr, "seconds": tm.seconds + vm.seconds, "images_per_s": tm.images_per_s}


class FoldTrainer:
    """Builds everything fold ``fold`` needs; :meth:`run` trains it (or continues it) to the end."""

    def __init__(self, ctx: RunContext, fold: int, callbacks: Sequence[Callback] = ()):
        self.ctx, self.fold, self.dir = ctx, fold, fold_dir(ctx.run, fold)
        self.callbacks = Callbacks(callbacks)
        self.stop_epoch = self.stop_fold = False  # set by callbacks (see .callbacks)
        cfg, acc, task = ctx.cfg, ctx.acc, ctx.task
        if acc.is_main_process:
            self.dir.mkdir(exist_ok=True)
        seed = cfg.train.seed + fold
        seed_everything(seed)
        model, info = build_model(cfg.model.name, num_outputs=task.outputs(cfg.model.heads),
                                  pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate,
                                  mean=ctx.pp.mean, std=ctx.pp.std, image_size=ctx.pp.image_size)
        # the crop cache is built by rank 0 alone; the other ranks wait, then find it up to date
        ages = TrainingAges(cfg.train.old_age, tuple(cfg.train.drop_ages), cfg.train.drop_age_margin)
        with acc.main_process_first() if cfg.data.cache else contextlib.nullcontext():
            self.data = fold_data(ctx.prep, fold, cfg.data, ctx.pp, batch_size=cfg.train.batch_size,
                                  valid_batch_size=cfg.train.valid_batch_size, seed=seed,
                                  old_age=ages).sharded(acc.process_index, acc.num_processes)
        counts = np.bincount(self.data.train_labels, minlength=task.num_classes)
        criterion = build_loss(cfg.loss, task=task, heads=cfg.model.heads, class_counts=counts).to(acc.device)
        teachers = None
        if cfg.distill.teachers:  # before the schedule: distill.unlabelled lengthens the training set
            from .distill import teacher_targets
            from .teachers import student_start
            self.data, teachers = teacher_targets(ctx, fold, self.data)
            start = student_start(teachers.paths, cfg.distill.init, model_name=cfg.model.name,
                                  heads=cfg.model.heads, pp=ctx.pp)
            if start is not None:  # distill.init: the student starts from its teachers' weights
                model.load_state_dict(start)
                info.weights = (f"teacher {cfg.distill.teachers[0]}" if cfg.distill.init == "teacher" else
                                f"average of teachers {', '.join(cfg.distill.teachers)}")
                log.info("fold %d: the student starts from its teachers' weights (distill.init=%s)", fold,
                         cfg.distill.init)
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(param_groups(model, lr=cfg.optim.lr, head_lr_mult=cfg.optim.head_lr_mult),
                                    name=cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                    momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov,
                                    fused=cfg.optim.fused)
        t = cfg.train
        self.steps_per_epoch = steps_per_epoch(len(self.data.train_loader), t.accum_steps, t.max_train_batches)
        self.epochs = t.epochs  # the fold's length; a callback may change it (set_total_steps)
        scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch=self.steps_per_epoch, epochs=t.epochs,
                                    base_lr=cfg.optim.lr)
        if cfg.train.compile:
            model = torch.compile(model)
        model, optimizer = acc.prepare(model, optimizer)
        self.setup = EpochSetup(model, criterion, optimizer, scheduler, acc, task=task, heads=cfg.model.heads,
                                accum_steps=t.accum_steps, clip_grad=t.clip_grad, channels_last=t.channels_last,
                                max_batches=t.max_train_batches,
                                mixer=make_mixer(cfg.data, num_classes=task.num_classes, task=task),
                                ema=make_ema(unwrap_model(model), t) if t.ema else None, valid_tta=t.valid_tta,
                                on_step=lambda step: self.callbacks.on_step_end(self, step),
                                should_stop=lambda: self.stop_epoch)
        self.averager = make_averager(t, self.dir)
        if teachers is not None:  # the criterion learns from the teachers' probabilities of the training rows
            from .distill import attach_teachers
            attach_teachers(self, teachers)
        if cfg.loss.age_sigma > 0:  # soft age-group targets from the raw ages (training rows only)
            table = age_soft_targets(self.data.train_rows, self.data.train_labels, task, cfg.loss.age_sigma,
                                     ages.old_age or task.old_age or 60)
            self.setup.soft_targets = soft_target_lookup(table)
        self.checkpoints = FoldCheckpoints(self.dir, config=cfg.to_dict())
        self.state = FoldState()
        self.weights = info.weights

    @property
    def _trainable(self) -> Trainable:
        s = self.setup
        return Trainable(s.model, s.optimizer, s.scheduler, scaler=self.ctx.acc.scaler, ema=s.ema,
                         averager=self.averager)

    # ------------------------------------------------------------------ for callbacks
    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of this fold so far (resumed ones included)."""
        return len(self.state.lrs)

    @property
    def single_process(self) -> bool:
        return self.ctx.acc.num_processes == 1

    def agree(self, value):
        """Rank 0's ``value`` on every rank (decisions taken from one process's clock)."""
        if self.single_process:
            return value
        box = [value]
        broadcast_object_list(box)
        return box[0]

    def valid_views_per_step(self) -> float:
        """A validation pass in training-step units: validated images x views / images per optimizer step."""
        t = self.ctx.cfg.train
        views = 2 if t.valid_tta == "hflip" else 1
        return len(self.data.valid_rows) * views / max(1, t.batch_size * t.accum_steps * self.ctx.acc.num_processes)

    def set_total_steps(self, total: int) -> None:
        """Make the fold ``total`` optimizer steps long: the schedule is stretched to it, the epochs follow."""
        set_schedule_length(self.setup.scheduler, total)
        self.epochs = max(1, math.ceil(total / self.steps_per_epoch))

    # ------------------------------------------------------------------ state on disk
    def _resume(self) -> None:
        self.state = FoldState.from_dict(self.checkpoints.restore_last(self._trainable))
        log.info("fold %d: resuming after epoch %d (best f1 %.4f)", self.fold, self.state.epoch, self.state.best_f1)

    def _meta(self) -> dict:
        """What prediction needs to rebuild and feed the model (stored in every checkpoint)."""
        ctx = self.ctx
        meta = {**ctx.task.to_meta(), "heads": ctx.cfg.model.heads, "model_name": ctx.cfg.model.name,
                "fold": self.fold, "preprocessing": ctx.pp.to_dict(), "prepared": str(ctx.prep.dir.resolve()),
                "weights": self.weights, "maskcls_version": __version__}
        if ctx.pp.faces:  # predict on new photos must crop them the same way
            from ..prep.faces import face_settings, load_face_crops
            meta["face_settings"] = face_settings(load_face_crops(ctx.prep.dir)[1]).to_dict()
        return meta

    # ------------------------------------------------------------------ epochs
    def _end_epoch(self, epoch: int, tm: EpochMetrics, vm: EpochMetrics, probs: np.ndarray) -> None:
        acc = self.ctx.acc
        lr = self.setup.optimizer.param_groups[0]["lr"]
        row = metrics_row(epoch, tm, vm, lr, self.ctx.task)
        best = self.state.record(row, vm.f1, vm.acc)
        self.callbacks.on_epoch_end(self, epoch, row)
        if not acc.is_main_process:
            return
        if self.averager is not None:  # before last.pt, which records what it holds
            self.averager.after_epoch(self.setup.validated, epoch + 1, vm.f1)
        if best:  # best.pt and oof.csv of this epoch, then last.pt: the commit point
            rows = self.data.valid_rows
            self.checkpoints.save_best(self.setup.validated, epoch=epoch + 1, metric=vm.f1, with_it=lambda: write_oof(
                self.dir / "oof.csv", rows, self.ctx.prep.abs_paths(rows), probs))
        self.checkpoints.save_last(self._trainable, self.state.to_dict())
        write_metrics_csv(self.dir / "metrics.csv", self.state.history)
        write_lr_csv(self.dir / "lr.csv", self.state.lrs)
        self.ctx.trackers.log_epoch(self.fold, row)
        log.info(epoch_line(self.fold, epoch, self.epochs, tm, vm, lr, best))

    def _epoch(self, epoch: int) -> tuple[EpochMetrics, EpochMetrics, np.ndarray]:
        set_epoch(self.data.train_loader, epoch)
        self.stop_epoch = False
        self.callbacks.on_epoch_start(self, epoch)
        self.setup.train_size = progressive_size(self.ctx.pp.image_size, self.ctx.cfg.data.progressive, epoch,
                                                 self.epochs)
        where = f"fold {self.fold} epoch {epoch + 1}/{self.epochs}"
        at = f" at {self.setup.train_size}px" if self.setup.train_size != self.ctx.pp.image_size else ""
        tm = train_one_epoch(self.setup, self.data.train_loader, epoch=epoch, lr_log=self.state.lrs,
                             desc=f"{where} train{at}")
        vm, probs = evaluate(self.setup, self.data.valid_loader, self.data.valid_rows["label"].to_numpy(),
                             desc=f"{where} valid")
        return tm, vm, probs

    def run(self) -> dict:
        """Train the remaining epochs; returns the fold's summary entry."""
        cfg, acc = self.ctx.cfg, self.ctx.acc
        if self.ctx.resume and self.checkpoints.can_resume():
            self._resume()
        self.checkpoints.meta = self._meta()
        if self.state.status in ("done", "stopped"):
            return self.state.result()
        self.ctx.trackers.start_fold(self.fold, self.dir)
        self.callbacks.on_fold_start(self)
        try:
            epoch = self.state.epoch
            while epoch < self.epochs and not self.stop_fold:
                try:
                    tm, vm, probs = self._epoch(epoch)
                except TrainingDiverged as e:
                    log.error("fold %d stopped: %s; the last good checkpoint %s is kept", self.fold, e,
                              self.checkpoints.last)
                    self.state.status = "diverged"
                    break
                self._end_epoch(epoch, tm, vm, probs)
                epoch += 1
                if cfg.train.patience and self.state.bad_epochs >= cfg.train.patience:
                    log.info("fold %d: no better validation F1 for %d epochs; stopping early", self.fold,
                             self.state.bad_epochs)
                    self.state.status = "stopped"
                    break
            else:
                self.state.status = "done"
            self.callbacks.on_fold_end(self)
            if self.averager is not None and self.state.status in ("done", "stopped") and not self.state.average:
                self.state.average = finish_average(self)
            if acc.is_main_process:  # the same state with its final status; last.prev.pt stays the epoch before
                self.checkpoints.save_last(self._trainable, self.state.to_dict(), rotate=False)
                if self.averager is not None and self.state.average:
                    self.averager.cleanup()
        finally:
            self.ctx.trackers.end_fold(self.fold)
        acc.wait_for_everyone()
        return self.state.result()
