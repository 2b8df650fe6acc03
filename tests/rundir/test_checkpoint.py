"""Checkpoints: plain dicts round-tripped, best.pt and oof.csv written back to back before last.pt, a pickled
object told from corruption."""
from __future__ import annotations

import pytest
import torch

from maskcls.errors import CheckpointError
from maskcls.rundir.checkpoint import FoldCheckpoints, Trainable, load_checkpoint


def _trainable(seed: int) -> Trainable:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return Trainable(model, opt, torch.optim.lr_scheduler.StepLR(opt, 1))


def test_fold_checkpoints_round_trip_as_plain_dicts(tmp_path):
    ck = FoldCheckpoints(tmp_path, config={"train": {"epochs": 3}}, meta={"heads": "single"})
    a = _trainable(0)
    a.optimizer.step()
    a.scheduler.step()
    ck.save_last(a, {"epoch": 1, "best_f1": 0.5, "status": "running"})
    after_save = torch.rand(3)  # what the RNG draws next, from the state last.pt holds
    ck.save_best(a.model, epoch=1, metric=0.5)
    for path in (ck.last, ck.best):  # plain data, loadable without maskcls
        d = torch.load(path, weights_only=True)
        assert d["config"] == {"train": {"epochs": 3}} and d["meta"] == {"heads": "single"}
    last = torch.load(ck.last, weights_only=True)
    assert last["epoch"] == 1 and last["metric"] == 0.5 and "ema" not in last
    b = _trainable(1)
    state = ck.restore_last(b)
    assert state["status"] == "running" and torch.equal(torch.rand(3), after_save)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    assert b.optimizer.state_dict()["state"][0]["step"] == a.optimizer.state_dict()["state"][0]["step"]


def test_best_and_oof_are_written_back_to_back_before_last(tmp_path):
    """oof.csv is written once best.pt's content is on disk, just before best.pt's rename: whatever the
    with_it hook sees, best.pt is still the previous epoch's (or absent)."""
    ck = FoldCheckpoints(tmp_path, config={})
    seen = []
    model = torch.nn.Linear(2, 2)
    ck.save_best(model, epoch=1, metric=0.1, with_it=lambda: seen.append(ck.best.exists()))
    ck.save_best(model, epoch=2, metric=0.2, with_it=lambda: seen.append(load_checkpoint(ck.best)["epoch"]))
    assert seen == [False, 1] and load_checkpoint(ck.best)["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_pickled_object_is_told_from_corruption_without_reading_torch_messages(tmp_path):
    import argparse
    ck = tmp_path / "foreign.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, ck)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(argparse\.Namespace\)"):
        load_checkpoint(ck, fallback=False)
    ck.write_bytes(ck.read_bytes()[:-40])  # the same file truncated: corrupt, not foreign
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(ck, fallback=False)
