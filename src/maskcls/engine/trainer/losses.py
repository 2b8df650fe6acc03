"""Losses: cross-entropy (label smoothing), focal, class-weighted CE, soft-F1; per head for multi.

Every loss takes hard targets (N class ids) or soft targets (N×K probabilities, from MixUp /
CutMix); a multi-head loss gives each head the marginal of the soft target over its attribute.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...config import LossConfig
from ...errors import ConfigError
from ...models.heads import Heads, check_heads
from ...task import Task

LOSSES = ("ce", "focal", "weighted_ce", "soft_f1")


class FocalLoss(nn.Module):
    """Focal loss −(1 − p_t)^γ·log p_t, averaged over the batch (unweighted: γ already favours the hard,
    often rare, examples; ``weighted_ce`` is the class-weighted loss)."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits, target):
        logp = F.log_softmax(logits.float(), dim=1)
        if target.dim() == 2:  # soft targets: −Σ t·(1 − p)^γ·log p
            return -(target * (1 - logp.exp()) ** self.gamma * logp).sum(1).mean()
        logpt = logp.gather(1, target[:, None]).squeeze(1)
        return (-((1 - logpt.exp()) ** self.gamma) * logpt).mean()


class SoftF1Loss(nn.Module):
    """1 − macro soft-F1 over the batch (probabilities instead of hard counts)."""

    def __init__(self, num_classes: int, eps: float = 1e-7):
        super().__init__()
        self.k, self.eps = num_classes, eps

    def forward(self, logits, target):
        p = logits.float().softmax(1)
        y = target.float() if target.dim() == 2 else F.one_hot(target, self.k).float()
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
    """Weighted sum of one loss per attribute, each on its slice of the logits; the attribute
    targets come from the class id through the task."""

    def __init__(self, task: Task, losses: dict[str, nn.Module], weights: list[float]):
        super().__init__()
        self.task = task
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(zip(losses, weights))

    def forward(self, logits, target):
        t = self.task.marginals(target) if target.dim() == 2 else self.task.split(target)
        slices = self.task.head_slices
        return sum(self.weights[h] * self.losses[h](logits[:, slices[h]], t[h]) for h in self.losses)


def build_loss(cfg: LossConfig, *, task: Task, heads: Heads, class_counts: np.ndarray) -> nn.Module:
    """The training criterion for ``heads`` ('single': one K-way loss; 'multi': one per attribute).

    Args:
        cfg: loss.name, label_smoothing, focal_gamma, weight_power, head_weights.
        task: the label space (attributes and their order).
        heads: 'single' or 'multi'.
        class_counts: training examples per class (weighted_ce; per attribute for multi).
    """
    args = dict(label_smoothing=cfg.label_smoothing, gamma=cfg.focal_gamma, power=cfg.weight_power)
    if check_heads(heads) == "single":
        return _one(cfg.name, task.num_classes, class_counts, **args)
    weights = cfg.head_weights or [1.0] * len(task.attributes)
    if len(weights) != len(task.attributes):
        raise ConfigError(f"loss.head_weights has {len(weights)} numbers but the task has "
                          f"{len(task.attributes)} heads ({', '.join(a.name for a in task.attributes)})")
    counts = task.attribute_counts(class_counts)
    return MultiHeadLoss(task, {a.name: _one(cfg.name, a.size, counts[a.name], **args) for a in task.attributes},
                         weights)
