"""A fold's state and an epoch's metrics as typed data."""
from __future__ import annotations

import numpy as np
import pytest

from maskcls.task import Task

COMP = Task.competition()


# --------------------------------------------------------------------------- typed data
def test_epoch_metrics_and_metrics_row_carry_what_metrics_csv_had():
    from maskcls.engine.trainer.fold import epoch_line, metrics_row
    from maskcls.metrics import EpochMetrics, confusion, macro_f1
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 18, 200), rng.integers(0, 18, 200)
    cm = confusion(y, p, 18)
    vm = EpochMetrics.from_confusion(cm, loss_sum=50.0, n=200, task=COMP, seconds=2.0)
    tm = EpochMetrics(loss=1.0, acc=0.5, f1=0.4, images=100, seconds=4.0)
    assert vm.f1 == pytest.approx(macro_f1(cm)) and vm.loss == pytest.approx(0.25) and vm.images == 200
    assert set(vm.head_f1) == {"mask", "gender", "age"} and tm.images_per_s == 25.0
    row = metrics_row(2, tm, vm, lr=1e-3, task=COMP)
    assert list(row) == ["epoch", "train_loss", "train_acc", "train_f1", "valid_loss", "valid_acc", "valid_f1",
                         "valid_f1_mask", "valid_f1_gender", "valid_f1_age", "lr", "seconds", "images_per_s"]
    assert row["epoch"] == 3 and row["valid_f1_age"] == vm.head_f1["age"] and row["seconds"] == 6.0
    line = epoch_line(0, 2, 5, tm, vm, 1e-3, best=True)
    assert line.startswith("fold 0 epoch 3/5: train loss 1.0000") and "(mask " in line and line.endswith("*best*")
