"""Losses: cross-entropy (label smoothing), focal, class-weighted CE, soft-F1; per head for multi."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.heads import HEAD_SLICES, split_targets

LOSSES = ("ce", "focal", "weighted_ce", "soft_f1")


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits, target):
        logp = F.log_softmax(logits.float(), dim=1)
        logpt = logp.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logpt.exp()) ** self.gamma) * logpt
        if self.weight is not None:
            loss = loss * self.weight[target]
        return loss.mean()


class SoftF1Loss(nn.Module):
    """1 − macro soft-F1 over the batch (probabilities instead of hard counts)."""

    def __init__(self, num_classes: int, eps: float = 1e-7):
        super().__init__()
        self.k, self.eps = num_classes, eps

    def forward(self, logits, target):
        p = logits.float().softmax(1)
        y = F.one_hot(target, self.k).float()
        tp = (p * y).sum(0)
        fp = (p * (1 - y)).sum(0)
        fn = ((1 - p) * y).sum(0)
        f1 = 2 * tp / (2 * tp + fp + fn + self.eps)
        return 1 - f1.mean()


def class_weights(counts: np.ndarray, power: float = 1.0) -> torch.Tensor:
    """Inverse-frequency weights ``1 / count**power`` normalised to mean 1 over the present
    classes (power 1 = fully balanced, 0.5 = square root, 0 = unweighted).

    A class absent from the training fold gets weight 1: it never occurs in training, and a
    zero weight would make the weighted mean 0/0 = NaN on a validation batch of that class.
    """
    c = np.asarray(counts, dtype=np.float64)
    present = c > 0
    w = np.ones_like(c)
    if present.any():
        inv = 1.0 / c[present] ** power
        w[present] = inv * present.sum() / inv.sum()
    return torch.tensor(w, dtype=torch.float32)


def _one(name: str, k: int, counts: np.ndarray, label_smoothing: float, gamma: float,
         power: float = 1.0) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=class_weights(counts, power), label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma)
    if name == "soft_f1":
        return SoftF1Loss(k)
    raise ConfigError(f"loss.name={name!r}; choose one of {', '.join(LOSSES)}")


class MultiHeadLoss(nn.Module):
    """Weighted sum of the mask, gender and age losses, targets derived from the 18-class label."""

    def __init__(self, losses: dict[str, nn.Module], weights: list[float]):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(zip(("mask", "gender", "age"), weights))

    def forward(self, logits, target):
        t = split_targets(target)
        return sum(self.weights[h] * self.losses[h](logits[:, HEAD_SLICES[h]], t[h]) for h in self.losses)


def build_loss(name: str, *, num_classes: int, class_counts: np.ndarray, heads: str = "single",
               label_smoothing: float = 0.0, focal_gamma: float = 2.0,
               head_weights: list[float] | None = None, weight_power: float = 1.0) -> nn.Module:
    """The training criterion.

    Args:
        name: ce | focal | weighted_ce | soft_f1.
        num_classes: K.
        class_counts: training examples per class (weighted_ce).
        heads: 'single' or 'multi' (one loss per head, weighted sum).
        label_smoothing: for ce / weighted_ce.
        focal_gamma: focal loss focusing parameter.
        head_weights: multi heads: weights of mask, gender, age.
        weight_power: weighted_ce: class weights ``1 / count**weight_power``.
    """
    if heads == "single":
        return _one(name, num_classes, class_counts, label_smoothing, focal_gamma, weight_power)
    counts = np.asarray(class_counts).reshape(3, 2, 3)
    per_head = {"mask": counts.sum((1, 2)), "gender": counts.sum((0, 2)), "age": counts.sum((0, 1))}
    sizes = {"mask": 3, "gender": 2, "age": 3}
    return MultiHeadLoss({h: _one(name, sizes[h], per_head[h], label_smoothing, focal_gamma, weight_power)
                          for h in sizes},
                         head_weights or [1.0, 1.0, 1.0])
