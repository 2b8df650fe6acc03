"""From a network's logits to class probabilities: one K-way head, or one head per attribute.

With ``heads="multi"`` the network outputs each attribute's logits side by side (the task's
``head_slices``: mask 3 + gender 2 + age 3 for the competition); the class probability is
the product of the attributes' softmax probabilities, in the task's class-id order.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from ..errors import ConfigError, did_you_mean
from ..task import Task

Heads = Literal["single", "multi"]  # resolved: the config's 'auto' is decided by Task.resolve_heads


def check_heads(heads: str) -> Heads:
    """``heads`` itself when it is one of :data:`Heads`, else a clear error (a checkpoint's or a caller's typo
    must not silently mean multi-head)."""
    if heads not in get_args(Heads):
        choices = get_args(Heads)
        raise ConfigError(f"heads={heads!r} is not one of {', '.join(choices)}{did_you_mean(str(heads), choices)}")
    return heads


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of an image batch (N×C×H×W) that test-time augmentation averages: the batch itself, and with
    ``tta="hflip"`` its mirror image (faces are left-right symmetric)."""
    return [x, torch.flip(x, dims=[3])] if tta == "hflip" else [x]


def probabilities(logits: torch.Tensor, task: Task, heads: Heads) -> torch.Tensor:
    """Class probabilities (B×K, float32) from the network's logits."""
    logits = logits.float()
    if check_heads(heads) == "single":
        return logits.softmax(dim=1)
    p = None
    for s in task.head_slices.values():
        q = logits[:, s].softmax(1)
        # outer product, flattened in mixed-radix order; flatten keeps the batch dynamic in exports
        p = q if p is None else (p[:, :, None] * q[:, None, :]).flatten(1)
    return p
