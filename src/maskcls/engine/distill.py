"""Distillation (``maskcls distill``, ``distill.teachers``): a student learns the averaged class probabilities
of teacher runs instead of (or beside) the labels.

For the student of fold f the teachers are the fold-f models of the teacher runs. Those must come from the same
split — checked: their fold-f validation images are the student's — so they never saw the images the student is
validated on, and the student's validation F1 stays honest. Their probabilities of the student's training rows
(each teacher with its own preprocessing, optionally with flip TTA; equal weights over runs and views) are
computed in fp32 when the fold starts, again on resume (the same numbers).

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
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..config import Config, DataConfig
from ..config_io import config_from_dict
from ..data.dataset import ImageDataset
from ..data.loader import build_loader
from ..data.preprocessing import Preprocessing
from ..errors import CheckpointError, ConfigError, DataError
from ..models.factory import build_model
from ..models.heads import probabilities, tta_views
from ..prep.prepared import Prepared
from ..progress import track
from ..task import Task
from .checkpoint import load_checkpoint
from .fold_data import FoldData, make_dataset, resolve_loader
from .losses import build_loss
from .rundir import fold_dir, read_oof_file, read_run_info

if TYPE_CHECKING:
    from .fold import FoldTrainer, RunContext

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


def _same_task(a: Task, b: Task) -> bool:
    return list(a.class_names) == list(b.class_names) and [x.name for x in a.attributes] == [
        x.name for x in b.attributes]


def teacher_checkpoint(run: str | Path, fold: int, *, valid_ids: pd.Series, task: Task) -> Path:
    """The fold-``fold`` best.pt of teacher ``run``, after checking that it was validated on exactly the
    student's validation images (``valid_ids``: their manifest image ids) and predicts the same classes.

    Raises:
        CheckpointError: not a run, no such fold, another split or another label space (the message says which).
    """
    run = Path(run)
    read_run_info(run)  # a clear error when it is not a run directory
    d = fold_dir(run, fold)
    best = d / "best.pt"
    if not best.is_file() or not (d / "oof.csv").is_file():
        raise CheckpointError(f"teacher {run} has no trained fold {fold} ({best}); the student's fold {fold} needs "
                              f"the teachers' fold {fold}: train it (maskcls train --folds {fold}) or distill other "
                              "folds with --folds")
    theirs = set(read_oof_file(d / "oof.csv")["image_id"].astype(str))
    ours = set(valid_ids.astype(str))
    if theirs != ours:
        raise CheckpointError(f"teacher {run} was validated on other images in fold {fold} ({len(theirs ^ ours)} "
                              "differ): it was trained on another split, so it may have seen the student's "
                              "validation images; use teachers trained on the same prepared directory and folds")
    meta = load_checkpoint(best, fallback=False)["meta"]
    if not _same_task(Task.from_meta(meta), task):
        raise CheckpointError(f"teacher {run} predicts other classes ({', '.join(meta['class_names'][:4])}, …) than "
                              f"the student's task ({', '.join(task.class_names[:4])}, …)")
    return best


@torch.no_grad()
def teacher_probs(path: Path, prep: Prepared, rows: pd.DataFrame, *, tta: str = "none", temperature: float = 1.0,
                  device: torch.device | None = None, batch_size: int = 64, workers: int = 0) -> np.ndarray:
    """One teacher checkpoint's class probabilities (N×K, fp32) of manifest ``rows`` at ``temperature``, with its
    own preprocessing; ``tta='hflip'`` averages the photo and its mirror."""
    ck = load_checkpoint(path, fallback=False)
    meta, cfg = ck["meta"], config_from_dict(ck["config"])
    pp, task = Preprocessing(**meta["preprocessing"]), Task.from_meta(meta)
    model, _ = build_model(meta["model_name"], num_outputs=task.outputs(meta["heads"]), pretrained="none",
                           mean=pp.mean, std=pp.std, image_size=pp.image_size)
    model.load_state_dict(ck["model"])
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    ds = make_dataset(prep, rows, cfg.data, pp, training=False, seed=0)
    kind = resolve_loader(cfg.data)[1]
    loader = build_loader(ds, batch_size=batch_size, sampler=range(len(ds)), workers=workers, kind=kind)
    out = []
    for x, _, _ in track(loader, desc=f"teacher {path.parent.parent.name}", enabled=True):
        x = x.to(device)
        views = tta_views(x, tta)
        p = sum(probabilities(model(v).float() / temperature, task, meta["heads"]) for v in views) / len(views)
        out.append(p.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, task.num_classes), np.float32)


def ensemble_teacher_probs(cfg: Config, prep: Prepared, fold: int, train_rows: pd.DataFrame,
                           valid_rows: pd.DataFrame, *, device: torch.device | None = None) -> np.ndarray:
    """The teachers' (``cfg.distill``) averaged fold-``fold`` probabilities of ``train_rows``, in their order."""
    d = cfg.distill
    if not d.teachers:
        raise ConfigError("distill.teachers is empty; give at least one teacher run (maskcls distill --teacher RUN)")
    paths = [teacher_checkpoint(r, fold, valid_ids=valid_rows["image_id"], task=prep.task) for r in d.teachers]
    workers = resolve_loader(cfg.data)[0]
    total = None
    for p in paths:
        q = teacher_probs(p, prep, train_rows, tta=d.tta, temperature=d.temperature, device=device,
                          batch_size=cfg.train.valid_batch_size, workers=workers)
        total = q if total is None else total + q
    return total / len(paths)


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
    the unlabelled evaluation images that ``distill.unlabelled`` appended."""
    probs: np.ndarray
    labelled: int


def teacher_targets(ctx: RunContext, fold: int, data: FoldData) -> tuple[FoldData, TeacherTargets]:
    """The teachers' probabilities of ``data``'s training rows, and with ``distill.unlabelled`` ``data`` with the
    evaluation rows appended to its training set. Called before the fold builds its loss, optimizer and lr
    schedule, so that these see the training set the student trains on."""
    cfg = ctx.cfg
    if cfg.data.mixup > 0 or cfg.data.cutmix > 0 or cfg.data.vcutmix > 0:
        raise ConfigError("distillation learns each training image's teacher probabilities, which MixUp/CutMix "
                          "would mix away: set data.mixup, data.cutmix and data.vcutmix to 0 with distill.teachers")
    rows = data.train_rows
    extra = unlabelled_rows(ctx.prep, cfg.data, rows) if cfg.distill.unlabelled else rows.iloc[:0]
    probs = ensemble_teacher_probs(cfg, ctx.prep, fold, pd.concat([rows, extra]), data.valid_rows,
                                   device=ctx.acc.device)
    n = len(rows)
    agree = float((probs[:n].argmax(1) == data.train_labels).mean()) if n else float("nan")
    log.info("fold %d: %d teacher(s) (tta %s, T=%g) on %d training images%s; their argmax agrees with the labels "
             "on %.1f %%", fold, len(cfg.distill.teachers), cfg.distill.tta, cfg.distill.temperature, n,
             f" and {len(extra)} unlabelled evaluation images" if len(extra) else "", 100 * agree)
    if len(extra):
        data = with_unlabelled(data, ctx.prep, extra, probs[n:].argmax(1), cfg.data, ctx.pp,
                               rank=ctx.acc.process_index, world=ctx.acc.num_processes)
    return data, TeacherTargets(probs, n)


def attach_teachers(trainer: FoldTrainer, targets: TeacherTargets) -> None:
    """Make ``trainer``'s fold learn from its teachers: ``targets`` (:func:`teacher_targets`) looked up by row
    position for every batch, and a :class:`DistillLoss` around the fold's criterion."""
    ctx, setup = trainer.ctx, trainer.setup
    cfg = ctx.cfg
    n = targets.labelled
    counts = np.bincount(trainer.data.train_labels[:n], minlength=ctx.task.num_classes)
    # plain soft cross-entropy (per head): the teachers' probabilities already carry their own loss's class
    # weighting, and weighting them again would pull the student away from them
    soft = build_loss(dataclasses.replace(cfg.loss, name="ce", label_smoothing=0.0), task=ctx.task,
                      heads=cfg.model.heads, class_counts=counts).to(ctx.acc.device)
    setup.criterion = DistillLoss(setup.criterion, soft, alpha=cfg.distill.alpha, temperature=cfg.distill.temperature)
    table = torch.from_numpy(targets.probs)

    def soft_targets(y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # rows from position n on are unlabelled: −1 keeps them out of the hard loss
        return torch.where(idx.to(y.device) < n, y, -1), table[idx.cpu()].to(y.device)
    setup.soft_targets = soft_targets
