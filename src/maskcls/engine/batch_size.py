"""``train.batch_size=auto``: on a GPU the largest batch whose training step fits a share of the free memory,
found by a short probe (as Ultralytics' ``batch=-1`` and Lightning's batch-size finder do), with the learning rate
scaled from the batch the defaults were chosen at; on a CPU the default batch, as chosen.

The probe takes real training steps (forward, backward, an AdamW step: its state counts too) of a throw-away copy
of the model at the run's input size and precision, doubling the batch from the default until a step's peak memory
passes the budget or the device runs out; the last batch that fitted is kept. Any failure of the probe itself
falls back to the default batch, with a warning: a probe must never be why a training does not start.

The learning-rate rule (``train.lr_scaling``): ``sqrt`` multiplies ``optim.lr`` by sqrt(batch / 30), the rule for
Adam-type optimizers (the noise of a step falls with the square root of the batch); ``linear`` by batch / 30 (Goyal
et al., for SGD); ``none`` keeps it. Measured on agegender6dev at the quick budget with a forced batch of 120
(docs/quality.md): ``none`` (the default) lost least of the three, and every rule lost points, because the batch
took three quarters of the optimizer steps away; hence the floor of steps per epoch (:data:`MIN_STEPS_PER_EPOCH`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger(__name__)

DEFAULT_BATCH = 30   # the batch every default was chosen at (the reference recipe's)
MEMORY_SHARE = 0.8   # of the free GPU memory a training step may use: room for the loader's pinned batches, EMA
MAX_BATCH = 1024     # beyond this, a batch is more epochs' worth of steps lost than speed won on these datasets
# An epoch keeps at least this many optimizer steps: a larger batch is fewer steps per epoch, and on the real dev
# sets batch 120 (19 steps per epoch of agegender6dev) cost 2.6-4.1 points at the quick budget whatever the lr rule
# (docs/quality.md), so auto only grows the batch on sets large enough to keep the steps the defaults were chosen
# with (agegender6dev: 75 per epoch at batch 30; the competition's 15,000 training photos: 500).
MIN_STEPS_PER_EPOCH = 100


@dataclass(frozen=True)
class AutoBatch:
    """What ``auto`` resolved to, and why (the banner says it)."""
    batch: int
    lr: float
    why: str


def scaled_lr(lr: float, batch: int, rule: str) -> float:
    """``lr`` for ``batch`` by ``rule`` (sqrt, linear or none), from the default batch."""
    factor = {"sqrt": math.sqrt(batch / DEFAULT_BATCH), "linear": batch / DEFAULT_BATCH, "none": 1.0}[rule]
    return lr * factor


def largest_fitting(step_peak: Callable[[int], int], budget: int, *, start: int = DEFAULT_BATCH,
                    cap: int = MAX_BATCH) -> int:
    """The largest batch of ``start``·2^k (at most ``cap``) whose step peak (``step_peak(batch)``, bytes) is within
    ``budget``; ``start`` when even it does not fit; never more than ``cap`` (:func:`steps_cap`). An out-of-memory
    error counts as not fitting. When ``cap`` leaves no batch above ``start``, nothing is probed."""
    if cap <= start:  # small sets: the steps floor decides, a probe (a model built and stepped on the GPU) cannot
        return cap
    best, batch = None, start
    while batch <= cap:
        try:
            peak = step_peak(batch)
        except torch.cuda.OutOfMemoryError:
            break
        if peak > budget:
            break
        best, batch = batch, batch * 2
    return min(best or start, cap)


def steps_cap(train_images: int) -> int:
    """The largest batch ``auto`` may take for a fold of ``train_images`` training images (per process): the
    default batch (or the whole fold when it is smaller), and more only while an epoch keeps
    :data:`MIN_STEPS_PER_EPOCH` optimizer steps, never more than :data:`MAX_BATCH`."""
    return max(min(DEFAULT_BATCH, train_images), min(MAX_BATCH, train_images // MIN_STEPS_PER_EPOCH))


def cuda_step_peak(make_model: Callable[[], torch.nn.Module], image_size: int, classes: int, bf16: bool,
                   device: torch.device) -> Callable[[int], int]:
    """``batch`` → the peak memory (bytes) of one training step of a fresh model on ``device``."""
    def peak(batch: int) -> int:
        model = make_model().to(device).to(memory_format=torch.channels_last).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.randint(0, 256, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)
            y = torch.randint(0, classes, (batch,), device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16 if bf16 else torch.float16):
                loss = torch.nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last))
                                                         .float(), y)
            loss.backward()
            opt.step()
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device)
        finally:
            del model, opt
            torch.cuda.empty_cache()
    return peak


def resolve_auto_batch(*, device: torch.device, lr: float, rule: str, probe: Callable[[], int] | None,
                       cap: int | None = None) -> AutoBatch:
    """The batch ``auto`` means on ``device`` and the learning rate that goes with it; ``probe`` finds the GPU's
    (None on a CPU), within ``cap`` (:func:`steps_cap` of the smallest fold; the banner says when it binds)."""
    if device.type != "cuda" or probe is None:
        return AutoBatch(DEFAULT_BATCH, lr, "the default batch on a CPU")
    try:
        batch = probe()
    except Exception as e:  # noqa: BLE001 - the probe must never stop a training from starting
        log.warning("train.batch_size=auto: the memory probe failed (%s); training with batch %d", e, DEFAULT_BATCH)
        return AutoBatch(DEFAULT_BATCH, lr, f"the probe failed: {e}")
    new_lr = scaled_lr(lr, batch, rule)
    limit = (f" and keeps {MIN_STEPS_PER_EPOCH} optimizer steps per epoch (at most batch {cap} here)"
             if cap is not None and 2 * batch > cap else "")
    return AutoBatch(batch, new_lr, f"the largest batch whose step fits {MEMORY_SHARE:.0%} of the free GPU memory"
                                    f"{limit}; lr {lr:.3g} -> {new_lr:.3g} ({rule} rule from batch {DEFAULT_BATCH})")
