"""Single 18-way head or three heads (mask 3, gender 2, age 3) combined into 18 classes."""
from __future__ import annotations

import torch

# outputs of the network per head mode; None = the task's number of classes
HEAD_OUTPUTS = {"single": None, "multi": 8}
HEAD_SLICES = {"mask": slice(0, 3), "gender": slice(3, 5), "age": slice(5, 8)}


def split_targets(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """18-class labels → mask/gender/age targets (class = mask·6 + gender·3 + age)."""
    return {"mask": labels // 6, "gender": (labels // 3) % 2, "age": labels % 3}


def probabilities(logits: torch.Tensor, heads: str) -> torch.Tensor:
    """Class probabilities (B×K) from the network's logits, in float32."""
    logits = logits.float()
    if heads == "single":
        return logits.softmax(dim=1)
    pm = logits[:, HEAD_SLICES["mask"]].softmax(1)
    pg = logits[:, HEAD_SLICES["gender"]].softmax(1)
    pa = logits[:, HEAD_SLICES["age"]].softmax(1)
    return torch.einsum("bm,bg,ba->bmga", pm, pg, pa).flatten(1)  # flatten: batch stays dynamic in exports
