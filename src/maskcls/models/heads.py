"""From a network's logits to class probabilities: one K-way head, or one head per attribute.

With ``heads="multi"`` the network outputs each attribute's logits side by side (the task's
``head_slices``: mask 3 + gender 2 + age 3 for the competition); the class probability is
the product of the attributes' softmax probabilities, in the task's class-id order.
"""
from __future__ import annotations

import torch

from ..labels import Task


def probabilities(logits: torch.Tensor, task: Task, heads: str) -> torch.Tensor:
    """Class probabilities (B×K, float32) from the network's logits."""
    logits = logits.float()
    if heads == "single":
        return logits.softmax(dim=1)
    p = None
    for s in task.head_slices.values():
        q = logits[:, s].softmax(1)
        # outer product, flattened in mixed-radix order; flatten keeps the batch dynamic in exports
        p = q if p is None else (p[:, :, None] * q[:, None, :]).flatten(1)
    return p
