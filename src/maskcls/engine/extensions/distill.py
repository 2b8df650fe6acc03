"""Distillation (``maskcls distill``, ``distill.teachers``): a student learns the averaged class probabilities
of teacher runs instead of (or beside) the labels.

For the student of fold f the teachers are the fold-f models of the teacher runs. Those must come from the same
split — checked: their fold-f validation images are the student's — so they never saw the images the student is
validated on, and the student's validation F1 stays honest. Their probabilities of the student's training rows
(each teacher with its own preprocessing, optionally with flip TTA; equal weights over runs and views) are
computed in fp32 when the fold starts, again on resume (the same numbers). With ``distill.online`` the teachers
score each training batch as the student gets it, augmented, instead; ``distill.init`` starts the student from
their weights (:mod:`.teachers` loads them).

The probabilities are the K-class joint that :func:`~maskcls.models.heads.probabilities` gives for single and
multi heads alike (a multi-head teacher's is the product of its heads'); a multi-head student's loss takes each
attribute's marginal of it (:class:`~.losses.MultiHeadLoss`), which is the product distribution closest in KL to
the joint, so a teacher ensemble's correlations between attributes are not lost by anything the student could
represent.

The loss: ``alpha · L(z, labels) + (1 − alpha) · T² · CE(z / T, p_T)``: L is the config's loss, CE the soft
cross-entropy (per head for a multi-head student, with loss.head_weights) against the teachers' probabilities
p_T at temperature T, i.e. KL(p_T ‖ student) plus a constant; no class weights and no label smoothing there, since
the teachers' probabilities already carry their own loss's. Validation loss is L alone.

Unlabelled images (``distill.unlabelled``, ``maskcls distill --unlabelled``): the prepared directory's evaluation
images (split ``eval``) join every fold's training set after its labelled rows, with the teachers' probabilities
as their only target: their label is −1 in the loss, whose hard part counts them as 0 (it is L over the labelled
rows times their share of the batch, so a labelled image weighs the same whatever else shares its batch). Their
probabilities come from the same fold-f teacher models as the labelled rows': a teacher's other folds were
trained on the student's validation images, and what they say about any image carries those labels into the
student, whose validation F1 would then no longer be honest. Validation stays on the fold's labelled rows. In
the loader they carry the teachers' argmax as label, which is what training accuracy/F1 and
``data.sampler=balanced`` count them as. The prepared directory is only read (unlike ``maskcls pseudo``).
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...config import DataConfig
from ...data.dataset import ImageDataset
from ...data.preprocessing import Preprocessing
from ...errors import ConfigError, DataError
from ...prep.prepared import Prepared
from ..fold_data import FoldData, make_dataset
from ..trainer.callbacks import Callback, Trainer
from ..trainer.losses import build_loss
from ..trainer.state import RunContext
from .teachers import OnlineTeachers, ensemble_teacher_probs, student_start, teacher_checkpoints

log = logging.getLogger(__name__)


class DistillLoss(nn.Module):
    """``alpha`` · ``hard``(logits, labels) + (1 − ``alpha``) · T² · ``soft``(logits / T, teacher probabilities).

    The target is ``(labels, probabilities)`` in training (what :func:`attach_teachers` feeds the loop) and the
    labels alone in validation, where the loss is ``hard``'s. A label −1 marks an unlabelled image: ``hard`` runs
    on the labelled rows only, times their share of the batch (an unlabelled row's hard term is 0).
    """

    def __init__(self, hard: nn.Module, soft: nn.Module, *, alpha: float, temperature: float):
        super().__init__()
        self.hard, self.soft, self.alpha, self.t = hard, soft, float(alpha), float(temperature)

    def forward(self, logits: torch.Tensor, target) -> torch.Tensor:
        if not isinstance(target, tuple):
            return self.hard(logits, target)
        labels, teacher = target
        loss = (1 - self.alpha) * self.t ** 2 * self.soft(logits / self.t, teacher)
        if self.alpha > 0:
            loss = loss + self.alpha * self._hard(logits, labels)
        return loss

    def _hard(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        known = labels >= 0
        if bool(known.all()):
            return self.hard(logits, labels)
        if not bool(known.any()):
            return logits.sum() * 0.0  # no labelled row in this batch: nothing to learn from labels
        return self.hard(logits[known], labels[known]) * known.float().mean()


class _Joined:
    """Two image sources read as one (an :class:`~maskcls.data.dataset.ImageSource`): ``first``'s images, then
    ``second``'s."""

    def __init__(self, first, second):
        self.first, self.second, self.n = first, second, len(first)

    def __len__(self) -> int:
        return self.n + len(self.second)

    def read(self, i: int) -> np.ndarray:
        return self.first.read(i) if i < self.n else self.second.read(i - self.n)

    def name(self, i: int) -> str:
        return self.first.name(i) if i < self.n else self.second.name(i - self.n)


def unlabelled_rows(prep: Prepared, data: DataConfig, training: pd.DataFrame) -> pd.DataFrame:
    """The evaluation rows of ``prep`` that ``distill.unlabelled`` adds to training (those already in
    ``training``, as pseudo-labelled copies, are left out).

    Raises:
        DataError: ``prep`` has no evaluation images, or some are missing on disk.
        ConfigError: ``data.cache`` is on (the crop cache holds the labelled images only).
    """
    rows = prep.eval_rows()
    if not len(rows):
        raise DataError(f"distill.unlabelled (--unlabelled): {prep.dir} holds no evaluation images (manifest rows "
                        "with split 'eval') to distill on; prepare a directory that includes them (the competition "
                        "layout's eval/info.csv, or rows with split=eval in a CSV manifest), or drop --unlabelled")
    if data.cache:
        raise ConfigError("distill.unlabelled: the crop cache (data.cache) holds the labelled training images only, "
                          "so the evaluation images would be seen through another crop; set data.cache=false")
    dup = rows["image_id"].astype(str).isin(set(training["image_id"].astype(str)))
    if dup.any():
        log.info("distill.unlabelled: %d evaluation images are already in training (pseudo-labelled); not added "
                 "again", int(dup.sum()))
    rows = rows[~dup.to_numpy()]
    prep.check_images(rows)
    return rows


def with_unlabelled(data: FoldData, prep: Prepared, rows: pd.DataFrame, labels: np.ndarray, cfg: DataConfig,
                    pp: Preprocessing, *, rank: int = 0, world: int = 1) -> FoldData:
    """``data`` with ``rows`` appended to its training set (augmented like the labelled rows, which keep their
    positions 0..n−1 and so their augmentation), served with ``labels``; validation unchanged."""
    first = data.loading.train_ds
    extra = make_dataset(prep, rows, cfg, pp, training=True, seed=first.seed, labels=labels)
    both = ImageDataset(_Joined(first.source, extra.source), np.concatenate([first.labels, extra.labels]),
                        first.transform, seed=first.seed)
    loading = dataclasses.replace(data.loading, train_ds=both)
    train, valid = loading.loaders(data.fold, rank, world)
    return dataclasses.replace(data, train_rows=pd.concat([data.train_rows, rows]), train_labels=both.labels,
                               train_loader=train, valid_loader=valid, loading=loading)


@dataclasses.dataclass
class TeacherTargets:
    """The teachers' probabilities of a fold's training rows, by row position; rows from ``labelled`` on are
    the unlabelled evaluation images that ``distill.unlabelled`` appended. ``paths``: the teachers' checkpoints."""
    probs: np.ndarray
    labelled: int
    paths: list[Path] = dataclasses.field(default_factory=list)


def teacher_targets(ctx: RunContext, fold: int, data: FoldData) -> tuple[FoldData, TeacherTargets]:
    """The teachers' probabilities of ``data``'s training rows, and with ``distill.unlabelled`` ``data`` with the
    evaluation rows appended to its training set. Called before the fold builds its loss, optimizer and lr
    schedule, so that these see the training set the student trains on."""
    cfg = ctx.cfg
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0 or cfg.data.vcutmix > 0:
        raise ConfigError("distillation learns each training image's teacher probabilities, which MixUp/CutMix "
                          "would mix away: set data.mixup, data.cutmix and data.vcutmix to 0 with distill.teachers")
    rows, online = data.train_rows, cfg.distill.online
    extra = unlabelled_rows(ctx.prep, cfg.data, rows) if cfg.distill.unlabelled else rows.iloc[:0]
    paths = teacher_checkpoints(cfg, ctx.prep, fold, data.valid_rows)
    n = len(rows)
    # Online, the teachers label every batch as it comes and only the unlabelled rows are scored now (the
    # loader still needs a label for them); offline, every row is. Either way the unlabelled rows come last.
    scored = extra if online else pd.concat([rows, extra])
    probs = ensemble_teacher_probs(cfg, ctx.prep, fold, scored, data.valid_rows, device=ctx.acc.device,
                                   paths=paths) if len(scored) else np.zeros((0, ctx.task.num_classes), np.float32)
    if online:
        log.info("fold %d: %d teacher(s) (tta %s, T=%g) label every training batch as the student sees it (online)%s",
                 fold, len(paths), cfg.distill.tta, cfg.distill.temperature,
                 f"; {len(extra)} unlabelled evaluation images join training" if len(extra) else "")
    else:
        agree = float((probs[:n].argmax(1) == data.train_labels).mean()) if n else float("nan")
        log.info("fold %d: %d teacher(s) (tta %s, T=%g) on %d training images%s; their argmax agrees with the "
                 "labels on %.1f %%", fold, len(paths), cfg.distill.tta, cfg.distill.temperature, n,
                 f" and {len(extra)} unlabelled evaluation images" if len(extra) else "", 100 * agree)
    if len(extra):
        data = with_unlabelled(data, ctx.prep, extra, probs[len(probs) - len(extra):].argmax(1), cfg.data, ctx.pp,
                               rank=ctx.acc.process_index, world=ctx.acc.num_processes)
    return data, TeacherTargets(probs, n, paths)


def attach_teachers(trainer: Trainer, targets: TeacherTargets) -> None:
    """Make ``trainer``'s fold learn from its teachers: ``targets`` (:func:`teacher_targets`) looked up by row
    position for every batch, and a :class:`DistillLoss` around the fold's criterion."""
    ctx = trainer.ctx
    cfg = ctx.cfg
    n = targets.labelled
    counts = np.bincount(trainer.data.train_labels[:n], minlength=ctx.task.num_classes)
    # plain soft cross-entropy (per head): the teachers' probabilities already carry their own loss's class
    # weighting, and weighting them again would pull the student away from them
    soft = build_loss(dataclasses.replace(cfg.loss, name="ce", label_smoothing=0.0), task=ctx.task,
                      heads=cfg.model.heads, class_counts=counts).to(ctx.acc.device)
    trainer.criterion = DistillLoss(trainer.criterion, soft, alpha=cfg.distill.alpha,
                                    temperature=cfg.distill.temperature)
    d = cfg.distill
    online = OnlineTeachers(targets.paths, task=ctx.task, pp=ctx.pp, tta=d.tta, temperature=d.temperature,
                            device=ctx.acc.device, channels_last=cfg.train.channels_last) if d.online else None
    table = torch.from_numpy(targets.probs)

    def soft_targets(y: torch.Tensor, idx: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # rows from position n on are unlabelled: −1 keeps them out of the hard loss
        labels = torch.where(idx.to(y.device) < n, y, -1)
        return labels, online(x) if online is not None else table[idx.cpu()].to(y.device)
    trainer.soft_targets = soft_targets


class Distill(Callback):
    """``distill.teachers``: the fold's student learns its teachers' probabilities (offline or online), on the
    unlabelled evaluation images too with ``distill.unlabelled``, and starts from their weights with
    ``distill.init``. Everything happens while the fold is built, before its optimizer and schedule."""

    def on_fold_build(self, trainer: Trainer) -> None:
        ctx, cfg, fold = trainer.ctx, trainer.ctx.cfg, trainer.fold
        trainer.data, targets = teacher_targets(ctx, fold, trainer.data)  # may lengthen the training set
        start = student_start(targets.paths, cfg.distill.init, model_name=cfg.model.name, heads=cfg.model.heads,
                              pp=ctx.pp)
        if start is not None:  # distill.init: the student starts from its teachers' weights
            trainer.model.load_state_dict(start)
            trainer.weights = (f"teacher {cfg.distill.teachers[0]}" if cfg.distill.init == "teacher" else
                               f"average of teachers {', '.join(cfg.distill.teachers)}")
            log.info("fold %d: the student starts from its teachers' weights (distill.init=%s)", fold,
                     cfg.distill.init)
        attach_teachers(trainer, targets)
