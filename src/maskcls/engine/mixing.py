"""MixUp / CutMix through timm's ``Mixup``: mixed batches and soft targets over the K classes.

A soft target ``lam·onehot(a) + (1 − lam)·onehot(b)`` over the task's classes marginalises, for
each attribute, to ``lam·onehot(a_h) + (1 − lam)·onehot(b_h)``: the per-head soft targets of a
multi-head model are the marginals of the K-class one (``Task.marginals``), so one mixer serves
both head layouts. Label smoothing stays with the criterion (PyTorch's cross-entropy smooths
probability targets as timm's ``mixup_target`` would), so it is applied once, per head.

timm's Mixup draws from NumPy's global RNG, which checkpoints save and restore: a resumed run
mixes exactly as an uninterrupted one. It needs an even batch; an odd last batch is not mixed.
"""
from __future__ import annotations

import torch

from ..config import DataConfig


def make_mixer(cfg: DataConfig, *, num_classes: int):
    """timm's Mixup for ``cfg`` (``data.mixup`` / ``data.cutmix`` alphas), or None when both are 0."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                 switch_prob=cfg.mix_switch_prob, mode="batch", label_smoothing=0.0, num_classes=num_classes)


def mix_batch(mixer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) to train on: mixed float images (0–255, as the model accepts) and soft
    targets N×K, or the batch as it is (hard labels) when there is no mixer or the batch is odd."""
    if mixer is None or len(x) % 2:
        return x, y
    return mixer(x.float(), y)
