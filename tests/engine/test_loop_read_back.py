"""The training loop keeps its running metrics on the device and reads them back every few batches on a GPU (each
read-back stalls the device); the same numbers come out as reading every batch, and a non-finite loss still stops
the epoch. Run on CPU tensors with the GPU's read-back interval forced."""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from maskcls.engine.trainer import loop
from maskcls.task import Task


class _Tiny(torch.nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.fc = torch.nn.Linear(3, k)

    def forward(self, x):
        return self.fc(x.float().mean((2, 3)) / 255)


def _setup(k: int = 6, nan_at: int | None = None) -> loop.EpochSetup:
    torch.manual_seed(0)
    model, calls = _Tiny(k), {"n": 0}
    base = torch.nn.CrossEntropyLoss()

    def criterion(logits, y):
        calls["n"] += 1
        out = base(logits, y)
        return out * float("nan") if calls["n"] == nan_at else out
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return loop.EpochSetup(model, criterion, opt, sched, Accelerator(cpu=True), task=Task.flat(list("abcdef")),
                           heads="single", channels_last=False)


def _batches(n: int = 7, b: int = 4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (b, 3, 8, 8), dtype=torch.uint8, generator=g),
             torch.randint(0, 6, (b,), generator=g), torch.arange(i * b, (i + 1) * b)) for i in range(n)]


@pytest.mark.slow  # optimizer steps, if of a linear layer
def test_reading_back_every_few_batches_gives_the_same_metrics(monkeypatch):
    every_batch = loop.train_one_epoch(_setup(), _batches(), epoch=0)
    monkeypatch.setattr(loop, "read_back_every", lambda device: 3)
    in_threes = loop.train_one_epoch(_setup(), _batches(), epoch=0)
    assert every_batch.images == in_threes.images == 28
    assert (every_batch.loss, every_batch.acc, every_batch.f1) == (in_threes.loss, in_threes.acc, in_threes.f1)


@pytest.mark.slow
def test_a_non_finite_loss_stops_the_epoch_at_the_next_read_back(monkeypatch):
    monkeypatch.setattr(loop, "read_back_every", lambda device: 3)
    with pytest.raises(loop.TrainingDiverged, match=r"loss is not finite at epoch 1, batches 4-6"):
        loop.train_one_epoch(_setup(nan_at=5), _batches(), epoch=0)
    monkeypatch.undo()
    with pytest.raises(loop.TrainingDiverged, match=r"loss is nan at epoch 1, batch 5"):  # every batch: named
        loop.train_one_epoch(_setup(nan_at=5), _batches(), epoch=0)


def test_batches_pass_through_to_a_cpu_device_unchanged():
    batches = _batches(3)
    out = list(loop.to_device(batches, torch.device("cpu")))
    assert all(a[0] is b[0] and a[1] is b[1] for a, b in zip(out, batches)) and len(out) == 3
