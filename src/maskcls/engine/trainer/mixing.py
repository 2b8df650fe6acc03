"""MixUp / CutMix through timm's ``Mixup``, and a vertical CutMix: mixed batches and soft targets over the K classes.

A soft target ``lam·onehot(a) + (1 − lam)·onehot(b)`` over the task's classes marginalises, for
each attribute, to ``lam·onehot(a_h) + (1 − lam)·onehot(b_h)``: the per-head soft targets of a
multi-head model are the marginals of the K-class one (``Task.marginals``), so one mixer serves
both head layouts. Label smoothing stays with the criterion (PyTorch's cross-entropy smooths
probability targets as timm's ``mixup_target`` would), so it is applied once, per head.

The vertical CutMix (``data.vcutmix``, what two round winners of the competition used) keeps the
left part of an image and takes the right part from another image of the batch, the split column
drawn near the middle; ``lam`` is the left part's share of the width, exactly. A face is left-right
symmetric, so each part still shows most of one face's cues, unlike a random box. It is refused
together with mixup/cutmix: one mixing recipe per run keeps what a measurement compares clear.

Both draw from NumPy's global RNG, which checkpoints save and restore: a resumed run mixes
exactly as an uninterrupted one. timm's Mixup needs an even batch; an odd last batch is not mixed
by it (the vertical CutMix takes any batch).
"""
from __future__ import annotations

import numpy as np
import torch

from ...config import DataConfig
from ...errors import ConfigError
from ...task import Task


def pair_partners(n: int, groups: np.ndarray | None = None, rng=np.random) -> np.ndarray:
    """A partner index for each of ``n`` batch rows: a random cycle through the batch (no row is its
    own partner when n ≥ 2), or with ``groups`` one random cycle per group, so partners share a group
    (a row alone in its group is its own partner, and stays unmixed)."""
    partner = np.arange(n)
    keys = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    for g in np.unique(keys):
        members = np.flatnonzero(keys == g)
        order = members[rng.permutation(len(members))]
        partner[order] = np.roll(order, -1)
    return partner


class VerticalCutMix:
    """Each image, with probability ``prob``, keeps its columns left of a split drawn uniformly in
    ``span`` (fractions of the width) and takes the rest from its partner; the soft target is
    ``lam·onehot(y) + (1 − lam)·onehot(y_partner)`` with ``lam`` = the left columns / width.

    Args:
        prob: probability that an image is mixed (the others get their one-hot target).
        span: (low, high) fractions of the width the split column is drawn in.
        num_classes: K, the soft targets' width.
        group_of: optional map class ids → pairing group (e.g. the mask state): partners share it.
    """

    def __init__(self, *, prob: float, span: tuple[float, float], num_classes: int, group_of: np.ndarray | None = None):
        self.prob, self.span, self.num_classes = float(prob), (float(span[0]), float(span[1])), int(num_classes)
        self.group_of = None if group_of is None else np.asarray(group_of)

    def draw(self, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(partner index, split column) per row; column ``width`` means the row is not mixed."""
        n = len(y)
        partner = pair_partners(n, None if self.group_of is None else self.group_of[y])
        cols = np.rint(np.random.uniform(*self.span, size=n) * width).astype(np.int64)
        cols = np.where(np.random.rand(n) < self.prob, np.clip(cols, 1, width - 1), width)
        return partner, cols

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        partner, cols = self.draw(y.cpu().numpy(), x.shape[-1])
        p = torch.as_tensor(partner, device=x.device)
        c = torch.as_tensor(cols, device=x.device)
        left = torch.arange(x.shape[-1], device=x.device)[None, :] < c[:, None]  # N×W
        out = torch.where(left[:, None, None, :], x, x[p])
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        lam = (c.float() / x.shape[-1])[:, None]
        onehot = torch.nn.functional.one_hot(y, self.num_classes).float()
        return out, lam * onehot + (1 - lam) * onehot[p]


def _vertical(cfg: DataConfig, num_classes: int, task: Task | None) -> VerticalCutMix:
    if cfg.mixup > 0 or cfg.cutmix > 0:
        raise ConfigError(f"data.vcutmix={cfg.vcutmix:g} cannot be combined with data.mixup={cfg.mixup:g} / "
                          f"data.cutmix={cfg.cutmix:g}: choose one recipe (set data.mixup=0 data.cutmix=0, or "
                          "data.vcutmix=0)")
    span = tuple(cfg.vcutmix_range)
    if len(span) != 2 or not 0 < span[0] <= span[1] < 1:
        raise ConfigError(f"data.vcutmix_range={list(span)} must be two fractions of the width, 0 < low <= high < 1 "
                          "(e.g. [0.35, 0.65])")
    group_of = None
    if cfg.vcutmix_same_mask:
        if task is None or task.attribute("mask") is None:
            names = "unknown" if task is None else (", ".join(task.class_names[:4])
                                                    + ("…" if task.num_classes > 4 else ""))
            raise ConfigError(f"data.vcutmix_same_mask=true needs a mask attribute, but this task has none (classes "
                              f"{names}): set data.vcutmix_same_mask=false")
        group_of = np.asarray(task.split(np.arange(task.num_classes))["mask"])
    return VerticalCutMix(prob=cfg.vcutmix, span=span, num_classes=num_classes, group_of=group_of)


def make_mixer(cfg: DataConfig, *, num_classes: int, task: Task | None = None):
    """The batch mixer ``cfg`` asks for: timm's Mixup (``data.mixup`` / ``data.cutmix`` alphas), the
    vertical CutMix (``data.vcutmix``; ``task`` is needed for ``data.vcutmix_same_mask``), or None."""
    if cfg.vcutmix > 0:
        return _vertical(cfg, num_classes, task)
    if cfg.vcutmix_same_mask:
        raise ConfigError("data.vcutmix_same_mask=true has no effect with data.vcutmix=0: set data.vcutmix "
                          "(e.g. 0.5) or remove data.vcutmix_same_mask")
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                 switch_prob=cfg.mix_switch_prob, mode="batch", label_smoothing=0.0, num_classes=num_classes)


def mix_batch(mixer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, targets) to train on: mixed images (float 0–255 from timm's Mixup, the input's dtype from
    the vertical CutMix; the model accepts both) and soft targets N×K, or the batch as it is (hard labels)
    when there is no mixer or timm's mixer gets an odd batch."""
    if mixer is None:
        return x, y
    if isinstance(mixer, VerticalCutMix):
        return mixer(x, y)
    if len(x) % 2:
        return x, y
    return mixer(x.float(), y)
