"""One training epoch and one evaluation pass (torchvision-references style, explicit arguments)."""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from accelerate.utils import gather_object

from ..labels import Task
from ..models.factory import unwrap_model
from ..models.heads import probabilities
from ..progress import progress, track
from .metrics import confusion, summarize
from .mixing import mix_batch

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the fold stops and its last good checkpoint is kept."""


def _to_device(x: torch.Tensor, device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(model, criterion, optimizer, scheduler, loader, accelerator, *, epoch: int, task: Task,
                    heads: str, accum_steps: int = 1, clip_grad: float = 0.0, channels_last: bool = True,
                    max_batches: int = 0, lr_log: list | None = None, mixer=None, ema=None,
                    desc: str | None = None) -> dict:
    """Train for one epoch; gradients accumulate over ``accum_steps`` batches (the last window may be shorter).

    ``mixer``: MixUp/CutMix (:mod:`.mixing`), the criterion then sees soft targets; training
    accuracy and F1 are still counted against the batch's own labels. ``ema``: a timm ModelEmaV3
    updated after every optimizer step (its step count is the number of optimizer steps so far).
    ``desc`` starts the progress lines (default "epoch <n> train").
    """
    model.train()
    num_classes = task.num_classes
    n_batches = len(loader) if not max_batches else min(max_batches, len(loader))
    cm = np.zeros((num_classes, num_classes), np.int64)
    loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
    bar = progress(total=n_batches, desc=desc or f"epoch {epoch + 1} train", unit="batch",
                   enabled=accelerator.is_main_process)
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y, _) in enumerate(loader):
        if i >= n_batches:
            break
        window_start = (i // accum_steps) * accum_steps
        window = min(accum_steps, n_batches - window_start)
        sync = (i + 1 - window_start) == window
        x, y = _to_device(x, accelerator.device, channels_last), y.to(accelerator.device)
        x, target = mix_batch(mixer, x, y)
        # DDP must skip the gradient all-reduce on every micro-batch but the window's last
        with accelerator.no_sync(model) if not sync else _nullctx():
            with accelerator.autocast():
                logits = model(x)
                loss = criterion(logits.float(), target)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at epoch {epoch + 1}, batch {i + 1}")
            accelerator.backward(loss / window)
        if sync:
            if clip_grad > 0:
                accelerator.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
            if not getattr(optimizer, "step_was_skipped", False):
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if lr_log is not None:
                lr_log.append(optimizer.param_groups[0]["lr"])
            if ema is not None:
                ema.update(unwrap_model(model), step=len(lr_log) if lr_log is not None else None)
        pred = logits.detach().float()
        pred = probabilities(pred, task, heads).argmax(1) if heads == "multi" else pred.argmax(1)
        cm += confusion(y.cpu().numpy(), pred.cpu().numpy(), num_classes)
        loss_sum += loss.item() * len(y)
        seen += len(y)
        elapsed = time.perf_counter() - t0
        bar.update(1, loss=f"{loss_sum / seen:.4f}", acc=f"{np.trace(cm) / seen:.3f}",
                   img_s=f"{seen * accelerator.num_processes / max(elapsed, 1e-9):.1f}")
    bar.close()
    totals = accelerator.reduce(torch.tensor(np.append(cm.ravel(), [loss_sum, seen]), dtype=torch.float64,
                                             device=accelerator.device), reduction="sum").cpu().numpy()
    cm = totals[:-2].reshape(num_classes, num_classes).round().astype(np.int64)
    out = summarize(cm, float(totals[-2]), int(totals[-1]), task)
    out["images"] = int(totals[-1])
    out["seconds"] = time.perf_counter() - t0
    return out


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@torch.no_grad()
def predict_probs(model, loader, accelerator, *, task: Task, heads: str, channels_last: bool = True,
                  criterion=None, desc: str = "valid") -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities for every sample of a (possibly sharded) loader, gathered on all ranks.

    Returns (row positions, probabilities N×K, summed loss). Each rank's shard is disjoint and
    gathered by position, so no sample is counted twice.
    """
    model.eval()
    idx_parts, prob_parts, loss_sum = [], [], 0.0
    for x, y, idx in track(loader, desc=desc, enabled=accelerator.is_main_process):
        x = _to_device(x, accelerator.device, channels_last)
        with accelerator.autocast():
            logits = model(x).float()
            if criterion is not None and (y >= 0).all():
                loss_sum += criterion(logits, y.to(accelerator.device)).item() * len(y)
            p = probabilities(logits, task, heads)
        idx_parts.append(idx.numpy())
        prob_parts.append(p.cpu().numpy())
    idx = np.concatenate(idx_parts) if idx_parts else np.zeros(0, np.int64)
    probs = np.concatenate(prob_parts) if prob_parts else np.zeros((0, 0), np.float32)
    if accelerator.num_processes > 1:
        parts = gather_object([(idx, probs, loss_sum)])
        idx = np.concatenate([p[0] for p in parts])
        probs = np.concatenate([p[1] for p in parts if len(p[1])])
        loss_sum = sum(p[2] for p in parts)
    order = np.argsort(idx, kind="stable")
    return idx[order], probs[order], loss_sum


def evaluate(model, loader, accelerator, *, criterion, labels: np.ndarray, task: Task, heads: str,
             channels_last: bool = True, desc: str = "valid") -> tuple[dict, np.ndarray]:
    """Validation metrics over the whole set (exact macro F1), and the probabilities."""
    t0 = time.perf_counter()
    idx, probs, loss_sum = predict_probs(model, loader, accelerator, task=task, heads=heads,
                                         channels_last=channels_last, criterion=criterion, desc=desc)
    if len(idx) != len(labels) or (idx != np.arange(len(labels))).any():
        raise RuntimeError(f"validation gathered {len(idx)} rows for {len(labels)} images: rows lost or duplicated")
    cm = confusion(labels, probs.argmax(1), task.num_classes)
    out = summarize(cm, loss_sum, len(labels), task)
    out["seconds"] = time.perf_counter() - t0
    return out, probs


def steps_per_epoch(n_batches: int, accum_steps: int, max_batches: int = 0) -> int:
    if max_batches:
        n_batches = min(n_batches, max_batches)
    return math.ceil(n_batches / accum_steps)
