"""Progressive resizing (data.progressive): early epochs train on smaller images, the last at full size."""
from __future__ import annotations

import pandas as pd
import pytest

from helpers import tiny, train
from maskcls.engine.trainer import loop
from maskcls.engine.trainer.loop import progressive_size


@pytest.mark.parametrize("full, start, epochs, sizes", [
    (128, 0.75, 3, [96, 112, 128]),
    (128, 1.0, 3, [128, 128, 128]),          # off
    (128, 0.5, 1, [128]),                     # one epoch: always full size
    (224, 0.75, 8, [168, 176, 184, 192, 200, 208, 216, 224]),
])
def test_sizes_grow_linearly_to_full_at_the_last_epoch(full, start, epochs, sizes):
    assert [progressive_size(full, start, e, epochs) for e in range(epochs)] == sizes


@pytest.mark.slow
def test_training_sees_the_small_sizes_and_validation_the_full(prepared_dir, tmp_path, monkeypatch):
    seen: list[tuple[int, tuple]] = []
    resize = loop._resize

    def recording(x, size, channels_last):
        out = resize(x, size, channels_last)
        seen.append((size, tuple(out.shape[-2:])))
        return out

    valid_sizes: list[tuple] = []
    evaluate = loop.evaluate

    def recording_eval(s, loader, labels, **kw):
        valid_sizes.extend({tuple(x.shape[-2:]) for x, _, _ in loader})
        return evaluate(s, loader, labels, **kw)

    monkeypatch.setattr(loop, "_resize", recording)
    monkeypatch.setattr("maskcls.engine.trainer.fold.evaluate", recording_eval)
    cfg = tiny(train={"epochs": 3, "mixed_precision": "no"}, data={"image_size": 64, "num_workers": 0,
                                                                  "progressive": 0.5})
    summary = train(prepared_dir, tmp_path / "run", cfg)
    assert {size for size, _ in seen} == {32, 48}            # epochs 1 and 2; epoch 3 is not resized
    assert all(shape == (size, size) for size, shape in seen)
    assert set(valid_sizes) == {(64, 64)}
    # every epoch was validated at full size and recorded; best.pt is the best of them
    metrics = pd.read_csv(tmp_path / "run" / "fold0" / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert summary["folds"]["0"]["best_f1"] == pytest.approx(metrics["valid_f1"].max())
