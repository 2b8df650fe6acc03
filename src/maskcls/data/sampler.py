"""Epoch-seeded sampling, sharded across processes without duplicated samples.

The order of epoch ``e`` depends only on (seed, e), so a resumed run sees exactly the
batches an uninterrupted one would. Shards interleave (``order[rank::world]``), so the
union of the ranks' i-th batches is the single-process i-th batch of world× the size.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(self, n: int, *, seed: int, shuffle: bool = True, weights: np.ndarray | None = None,
                 rank: int = 0, world: int = 1, drop_uneven: bool = True):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.drop_uneven = drop_uneven
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        return torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)

    def __iter__(self):
        order = self._order()
        if self.world > 1:
            if self.drop_uneven:  # training: equal shards, nothing counted twice
                order = order[: len(order) - len(order) % self.world]
            order = order[self.rank::self.world]
        return iter(order.tolist())

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        if self.drop_uneven:
            return self.n // self.world
        return len(range(self.rank, self.n, self.world))


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights that draw every present class equally often."""
    counts = np.bincount(labels)
    return 1.0 / counts[labels]
