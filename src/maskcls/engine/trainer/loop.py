"""One training epoch and one evaluation pass (torchvision-references style; what every epoch of a fold
uses travels in one :class:`EpochSetup`, what it measured comes back as :class:`~.metrics.EpochMetrics`)."""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from ...metrics import EpochMetrics, confusion
from ...models.heads import Heads, probabilities, tta_views
from ...progress import progress, track
from ...task import Task
from .mixing import mix_batch

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the fold stops and its last good checkpoint is kept."""


@dataclass
class EpochSetup:
    """What every epoch of a fold uses, built once by the fold's trainer.

    ``accum_steps``: gradients accumulate over this many batches (the last window may be shorter).
    ``max_batches``: stop each training epoch after this many batches (0 = all).
    ``mixer``: MixUp/CutMix (:mod:`.mixing`); the criterion then sees soft targets.
    ``eval_model``: the model validated (and kept in best.pt) instead of the trained one: the EMA of its weights.
    ``soft_targets``: distillation (:mod:`.distill`), soft age targets: (labels, row positions, the batch's
    images as the model gets them) → what the criterion gets.
    """
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    accelerator: Accelerator
    task: Task
    heads: Heads
    accum_steps: int = 1
    clip_grad: float = 0.0
    channels_last: bool = True
    max_batches: int = 0
    mixer: object | None = None
    eval_model: torch.nn.Module | None = None
    soft_targets: object | None = None
    train_size: int = 0  # progressive resizing: this epoch's training side in px (0 = as loaded)
    valid_tta: str = "none"  # train.valid_tta: "hflip" validates the mean of each image and its mirror image
    infer_bf16: bool = False  # validation in bf16 autocast (accel.inference_precision), else fp32
    on_step: Callable[[int], None] | None = None  # after every optimizer step, with the fold's steps so far
    should_stop: Callable[[], bool] | None = None  # asked after every optimizer step: end the epoch there

    @property
    def validated(self) -> torch.nn.Module:
        """The model that is validated (and kept in best.pt): ``eval_model`` when set, else the trained one."""
        return self.eval_model if self.eval_model is not None else self.model

    def batches(self, loader) -> int:
        return len(loader) if not self.max_batches else min(self.max_batches, len(loader))


def _to_device(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def progressive_size(full: int, start: float, epoch: int, epochs: int) -> int:
    """Training side at ``epoch`` (0-based): ``start`` × ``full`` at the first epoch, growing linearly to
    ``full`` at the last (fast.ai's and FFCV's progressive resizing), rounded to 8 px."""
    if start >= 1.0 or epochs <= 1:
        return full
    scale = start + (1.0 - start) * min(epoch, epochs - 1) / (epochs - 1)
    return min(full, max(8, int(round(full * scale / 8)) * 8))


def _resize(x: torch.Tensor, size: int, channels_last: bool) -> torch.Tensor:
    """A uint8 batch scaled down to ``size`` (antialiased bilinear, as 0–255 floats: the model normalises)."""
    x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _optimizer_step(s: EpochSetup, lr_log: list | None) -> None:
    acc = s.accelerator
    if s.clip_grad > 0:
        acc.clip_grad_norm_(s.model.parameters(), s.clip_grad)
    s.optimizer.step()
    if not getattr(s.optimizer, "step_was_skipped", False):
        s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    if lr_log is not None:
        lr_log.append(s.optimizer.param_groups[0]["lr"])
    if s.on_step is not None:
        s.on_step(len(lr_log) if lr_log is not None else 0)


def train_step(s: EpochSetup, x: torch.Tensor, y: torch.Tensor, *, sync: bool, window: int,
               lr_log: list | None = None, where: str = "", idx: torch.Tensor | None = None,
               check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One micro-batch: forward, loss, backward scaled by 1/``window`` (its accumulation window's length),
    then the optimizer step when ``sync`` (the window's last batch). Returns (labels on the device, logits,
    loss); ``maskcls lr-find`` drives it too.

    Raises:
        TrainingDiverged: the loss is NaN/inf (``where`` says at which batch).
    """
    acc = s.accelerator
    x, y = _to_device(x, acc.device, s.channels_last), y.to(acc.device)
    if s.train_size and x.shape[-1] != s.train_size:
        x = _resize(x, s.train_size, s.channels_last)
    x, target = mix_batch(s.mixer, x, y)
    if s.soft_targets is not None:  # ``idx``: the batch's row positions in the training set
        target = s.soft_targets(y, idx, x)
    # DDP must skip the gradient all-reduce on every micro-batch but the window's last
    with acc.no_sync(s.model) if not sync else contextlib.nullcontext():
        with acc.autocast():
            logits = s.model(x)
            loss = s.criterion(logits.float(), target)
        if check_finite and not torch.isfinite(loss):  # a read-back: train_one_epoch checks in batches on a GPU
            raise TrainingDiverged(f"loss is {loss.item()} at {where}")
        acc.backward(loss / window)
    if sync:
        _optimizer_step(s, lr_log)
    return y, logits, loss


def train_one_epoch(s: EpochSetup, loader, *, epoch: int, lr_log: list | None = None,
                    desc: str | None = None) -> EpochMetrics:
    """Train for one epoch (``s``: the model, optimiser and settings); ``lr_log`` gets the lr after every
    optimizer step; ``desc`` starts the progress lines (default "epoch <n> train").

    With a mixer, training accuracy and F1 are still counted against the batch's own labels.
    """
    s.model.train()
    acc, k = s.accelerator, s.task.num_classes
    dev, n_batches = acc.device, s.batches(loader)
    every = read_back_every(dev)
    cm = torch.zeros(k * k, dtype=torch.int64, device=dev)  # metrics stay on the device between read-backs
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    finite, checked, seen, t0 = torch.ones((), dtype=torch.bool, device=dev), 0, 0, time.perf_counter()
    bar = progress(total=n_batches, desc=desc or f"epoch {epoch + 1} train", unit="batch",
                   enabled=acc.is_main_process)
    s.optimizer.zero_grad(set_to_none=True)
    for i, (x, y, idx) in enumerate(to_device(loader, dev)):
        if i >= n_batches:
            break
        window_start = (i // s.accum_steps) * s.accum_steps
        window = min(s.accum_steps, n_batches - window_start)
        sync = (i + 1 - window_start) == window
        y, logits, loss = train_step(s, x, y, sync=sync, window=window, lr_log=lr_log, idx=idx,
                                     where=f"epoch {epoch + 1}, batch {i + 1}", check_finite=every == 1)
        pred = logits.detach().float()
        pred = probabilities(pred, s.task, s.heads).argmax(1) if s.heads == "multi" else pred.argmax(1)
        cm += torch.bincount(y * k + pred, minlength=k * k)
        loss_sum += loss.detach().double() * len(y)
        finite &= torch.isfinite(loss.detach())
        seen += len(y)
        stop = sync and s.should_stop is not None and s.should_stop()
        if (i + 1) % every and i + 1 < n_batches and not stop:
            bar.update(1)
            continue
        if not finite.item():  # the one read-back in ``every`` batches
            raise TrainingDiverged(f"loss is not finite at epoch {epoch + 1}, batches {checked + 1}-{i + 1}")
        checked = i + 1
        elapsed = time.perf_counter() - t0
        bar.update(1, loss=f"{loss_sum.item() / seen:.4f}", acc=f"{cm.view(k, k).trace().item() / seen:.3f}",
                   img_s=f"{seen * acc.num_processes / max(elapsed, 1e-9):.1f}")
        if stop:
            break
    bar.close()
    totals = acc.reduce(torch.cat([cm.double(), loss_sum.view(1), torch.tensor([seen], dtype=torch.float64,
                                                                                device=dev)]), reduction="sum")
    totals = totals.cpu().numpy()
    cm = totals[:-2].reshape(k, k).round().astype(np.int64)
    return EpochMetrics.from_confusion(cm, float(totals[-2]), int(totals[-1]), s.task, time.perf_counter() - t0)


# How often, in batches, the training loop reads its running metrics back: every batch on a CPU (it costs nothing
# there, and a non-finite loss is named at its batch); every READ_BACK_GPU batches on a GPU, where every read-back
# waits for the device to finish and leaves it idle while Python catches up.
READ_BACK_GPU = 25


def read_back_every(device: torch.device) -> int:
    return 1 if device.type == "cpu" else READ_BACK_GPU


def to_device(loader, device: torch.device):
    """The loader's batches; on a CUDA device, each batch's copy is issued on a side stream one step ahead, so it
    overlaps the current step (the loaders hand pinned memory there), and the step finds its batch already on the
    device. Elsewhere the batches pass through as they are."""
    if device.type != "cuda":
        yield from loader
        return
    stream = torch.cuda.Stream(device)

    def ahead(it):
        try:
            x, y, idx = next(it)
        except StopIteration:
            return None
        with torch.cuda.stream(stream):
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True), idx

    it = iter(loader)
    nxt = ahead(it)
    while nxt is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        x, y, idx = nxt
        x.record_stream(torch.cuda.current_stream(device))  # the side stream's memory is freed after its use here
        y.record_stream(torch.cuda.current_stream(device))
        nxt = ahead(it)
        yield x, y, idx


@dataclass
class Scoring:
    """How a model is scored over a loader: its label space and heads, the views averaged (``tta``), the loss to
    sum (None: none), and the precision (``bf16``: autocast to bf16, else fp32), which
    :func:`~..accel.inference_precision` decides for validation, predict and serve alike."""
    model: torch.nn.Module
    accelerator: Accelerator
    task: Task
    heads: Heads
    channels_last: bool = True
    tta: str = "none"
    criterion: torch.nn.Module | None = None
    bf16: bool = False


@torch.no_grad()
def predict_probs(sc: Scoring, loader, *, desc: str = "valid") -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities for every sample of a (possibly sharded) loader, gathered on all ranks; with
    ``tta="hflip"`` the mean of each image's and its mirror image's (the loss is the unflipped view's).

    Returns (row positions, probabilities N×K, summed loss). Each rank's shard is disjoint and
    gathered by position, so no sample is counted twice.
    """
    acc, model = sc.accelerator, sc.model
    model.eval()
    idx_parts, prob_parts, loss_sum = [], [], 0.0
    for x, y, idx in track(loader, desc=desc, enabled=acc.is_main_process):
        x = _to_device(x, acc.device, sc.channels_last)
        with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=sc.bf16):
            logits = [model(v).float() for v in tta_views(x, sc.tta)]  # the photo first: the loss is its
            if sc.criterion is not None and (y >= 0).all():
                loss_sum += sc.criterion(logits[0], y.to(acc.device)).item() * len(y)
            p = sum(probabilities(z, sc.task, sc.heads) for z in logits) / len(logits)
        idx_parts.append(idx.numpy())
        prob_parts.append(p.cpu().numpy())
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    probs = np.concatenate(prob_parts) if prob_parts else np.zeros((0, 0), np.float32)
    if acc.num_processes > 1:
        parts = gather_object([(idx, probs, loss_sum)])
        idx = np.concatenate([p[0] for p in parts])
        probs = np.concatenate([p[1] for p in parts if len(p[1])])
        loss_sum = sum(p[2] for p in parts)
    order = np.argsort(idx, kind="stable")
    return idx[order], probs[order], loss_sum


def evaluate(s: EpochSetup, loader, labels: np.ndarray, *, desc: str = "valid") -> tuple[EpochMetrics, np.ndarray]:
    """Validation metrics of ``s.validated`` over the whole set (exact macro F1, with ``s.valid_tta``, in the
    inference precision ``s.infer_bf16``), and the probabilities."""
    t0 = time.perf_counter()
    sc = Scoring(s.validated, s.accelerator, s.task, s.heads, channels_last=s.channels_last, tta=s.valid_tta,
                 criterion=s.criterion, bf16=s.infer_bf16)
    idx, probs, loss_sum = predict_probs(sc, loader, desc=desc)
    if len(idx) != len(labels) or (idx != np.arange(len(labels))).any():
        raise RuntimeError(f"validation gathered {len(idx)} rows for {len(labels)} images: rows lost or duplicated")
    cm = confusion(labels, probs.argmax(1), s.task.num_classes)
    return EpochMetrics.from_confusion(cm, loss_sum, len(labels), s.task, time.perf_counter() - t0), probs


def steps_per_epoch(n_batches: int, accum_steps: int, max_batches: int = 0) -> int:
    if max_batches:
        n_batches = min(n_batches, max_batches)
    return math.ceil(n_batches / accum_steps)
