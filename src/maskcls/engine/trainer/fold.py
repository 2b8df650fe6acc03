"""One fold's training: model, data, loss, optimiser and schedule from the config, then epochs.

Each epoch ends with exact validation metrics, ``metrics.csv``, ``lr.csv`` and ``last.pt``
(full state: resuming from it equals not having stopped); ``best.pt`` and ``oof.csv`` follow
the best validation macro F1. Every rank trains its shard; rank 0 alone writes.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Sequence

import numpy as np
import torch
from accelerate.utils import broadcast_object_list

from ... import __version__
from ...data.loader import set_epoch
from ...metrics import EpochMetrics
from ...models.factory import build_model
from ...rundir.checkpoint import FoldCheckpoints, Trainable
from ...rundir.files import fold_dir, write_lr_csv, write_metrics_csv
from ...rundir.oof import write_oof
from ..accel import inference_precision, seed_everything
from ..fold_data import TrainingAges, fold_data
from .callbacks import Callback, Callbacks
from .loop import EpochSetup, TrainingDiverged, evaluate, progressive_size, steps_per_epoch, train_one_epoch
from .losses import build_loss
from .mixing import make_mixer
from .optim import build_optimizer, build_scheduler, param_groups, set_schedule_length
from .state import FoldState, RunContext, epoch_line, metrics_row

log = logging.getLogger(__name__)


class FoldTrainer:
    """Builds everything fold ``fold`` needs (restoring last.pt when the run resumes); :meth:`run` trains it to the
    end. ``callbacks`` (:mod:`.callbacks`) are the extensions it trains with."""

    def __init__(self, ctx: RunContext, fold: int, callbacks: Sequence[Callback] = ()):
        self.ctx, self.fold, self.dir = ctx, fold, fold_dir(ctx.run, fold)
        self.callbacks = Callbacks(callbacks)
        self.stop_epoch = self.stop_fold = False  # set by callbacks
        cfg, acc, task, t = ctx.cfg, ctx.acc, ctx.task, ctx.cfg.train
        if acc.is_main_process:
            self.dir.mkdir(exist_ok=True)
        seed = t.seed + fold
        seed_everything(seed)
        self.model, info = build_model(cfg.model.name, num_outputs=task.outputs(cfg.model.heads),
                                       pretrained=cfg.model.pretrained, drop_rate=cfg.model.drop_rate,
                                       mean=ctx.pp.mean, std=ctx.pp.std, image_size=ctx.pp.image_size)
        self.weights = info.weights  # where the starting weights came from (a callback may say otherwise)
        self.ages = TrainingAges(t.old_age, tuple(t.drop_ages), t.drop_age_margin)
        # the crop cache is built by rank 0 alone; the other ranks wait, then find it up to date
        with acc.main_process_first() if cfg.data.cache else contextlib.nullcontext():
            self.data = fold_data(ctx.prep, fold, cfg.data, ctx.pp, batch_size=t.batch_size,
                                  valid_batch_size=t.valid_batch_size, seed=seed,
                                  old_age=self.ages).sharded(acc.process_index, acc.num_processes)
        counts = np.bincount(self.data.train_labels, minlength=task.num_classes)
        self.criterion = build_loss(cfg.loss, task=task, heads=cfg.model.heads, class_counts=counts).to(acc.device)
        self.soft_targets = None
        self.callbacks.on_fold_build(self)  # before the schedule: a callback may lengthen the training set
        self.setup = self._setup()
        self.checkpoints = FoldCheckpoints(self.dir, config=cfg.to_dict())
        self.state = FoldState()
        self.callbacks.on_fold_start(self)
        if ctx.resume and self.checkpoints.can_resume():
            self._resume()
        self.checkpoints.meta = self._meta()

    def _setup(self) -> EpochSetup:
        """Optimizer, schedule and device placement of the built model; what every epoch uses."""
        cfg, acc, t = self.ctx.cfg, self.ctx.acc, self.ctx.cfg.train
        model = self.model.to(memory_format=torch.channels_last) if t.channels_last else self.model
        o = cfg.optim
        optimizer = build_optimizer(param_groups(model, lr=o.lr, head_lr_mult=o.head_lr_mult), name=o.name, lr=o.lr,
                                    weight_decay=o.weight_decay, momentum=o.momentum, nesterov=o.nesterov,
                                    fused=o.fused)
        self.steps_per_epoch = steps_per_epoch(len(self.data.train_loader), t.accum_steps, t.max_train_batches)
        self.epochs = t.epochs  # the fold's length; a callback may change it (set_total_steps)
        scheduler = build_scheduler(optimizer, cfg.sched, steps_per_epoch=self.steps_per_epoch, epochs=t.epochs,
                                    base_lr=o.lr)
        if t.compile:
            model = torch.compile(model)
        model, optimizer = acc.prepare(model, optimizer)
        # Accelerate wraps a prepared model's forward in the training autocast; training autocasts itself
        # (train_step), and scoring must follow the inference precision rule instead (accel.inference_precision),
        # so the wrapper goes (Accelerate's public unwrap, which removes it in place; the DDP wrapper stays)
        acc.unwrap_model(model, keep_fp32_wrapper=False)
        self.model = model
        task = self.ctx.task
        return EpochSetup(model, self.criterion, optimizer, scheduler, acc, task=task, heads=cfg.model.heads,
                          accum_steps=t.accum_steps, clip_grad=t.clip_grad, channels_last=t.channels_last,
                          max_batches=t.max_train_batches, valid_tta=t.valid_tta,
                          infer_bf16=inference_precision(acc.device, acc.mixed_precision) == "bf16",
                          mixer=make_mixer(cfg.data, num_classes=task.num_classes, task=task),
                          soft_targets=self.soft_targets,
                          on_step=lambda step: self.callbacks.on_step_end(self, step),
                          should_stop=lambda: self.stop_epoch)

    # ------------------------------------------------------------------ for callbacks
    @property
    def is_main(self) -> bool:
        return self.ctx.acc.is_main_process

    @property
    def single_process(self) -> bool:
        return self.ctx.acc.num_processes == 1

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps of this fold so far (resumed ones included)."""
        return len(self.state.lrs)

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
    @property
    def _trainable(self) -> Trainable:
        s = self.setup
        return Trainable(s.model, s.optimizer, s.scheduler, scaler=self.ctx.acc.scaler,
                         extras=self.callbacks.stateful())

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
            from ...prep.faces import face_settings, load_face_crops
            meta["face_settings"] = face_settings(load_face_crops(ctx.prep.dir)[1]).to_dict()
        return meta

    def _save_last(self, *, final: bool) -> None:
        """last.pt (the final one keeps last.prev.pt as the epoch before) with metrics.csv and lr.csv."""
        if self.is_main:
            self.checkpoints.save_last(self._trainable, self.state.to_dict(), rotate=not final)
            write_metrics_csv(self.dir / "metrics.csv", self.state.history)
            write_lr_csv(self.dir / "lr.csv", self.state.lrs)

    # ------------------------------------------------------------------ epochs
    def _end_epoch(self, epoch: int, tm: EpochMetrics, vm: EpochMetrics, probs: np.ndarray) -> None:
        lr = self.setup.optimizer.param_groups[0]["lr"]
        row = metrics_row(epoch, tm, vm, lr, self.ctx.task)
        best = self.state.record(row, vm.f1, vm.acc)
        self.callbacks.on_epoch_end(self, epoch, row)
        if self.is_main:
            if best:  # best.pt and oof.csv of this epoch, then last.pt: the commit point
                rows = self.data.valid_rows
                self.checkpoints.save_best(self.setup.validated, epoch=epoch + 1, metric=vm.f1,
                                           with_it=lambda: write_oof(self.dir / "oof.csv", rows,
                                                                     self.ctx.prep.abs_paths(rows), probs))
        self._save_last(final=False)
        if self.is_main:
            log.info(epoch_line(self.fold, epoch, self.epochs, tm, vm, lr, best))
        self.callbacks.on_saved(self, False)  # last: a tracker may stop the run here (tune's pruning)

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

    @property
    def finished(self) -> bool:
        """Nothing left to train (a resumed fold that had ended)."""
        return self.state.status in ("done", "stopped")

    def run(self) -> dict:
        """Train the remaining epochs; returns the fold's summary entry."""
        if self.finished:
            return self.state.result()
        patience, epoch = self.ctx.cfg.train.patience, self.state.epoch
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
            if patience and self.state.bad_epochs >= patience:
                log.info("fold %d: no better validation F1 for %d epochs; stopping early", self.fold,
                         self.state.bad_epochs)
                self.state.status = "stopped"
                break
        else:
            self.state.status = "done"
        self.callbacks.on_fold_end(self)
        self._save_last(final=True)  # the same state with its final status
        self.callbacks.on_saved(self, True)
        self.ctx.acc.wait_for_everyone()
        return self.state.result()
