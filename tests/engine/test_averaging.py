"""Weight averaging (train.average) and the greedy soup across seeds (maskcls soup), on tiny synthetic runs."""
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score
from torch import nn

from helpers import tiny
from helpers import train as train_run
from maskcls.cli import main
from maskcls.engine.extensions.averaging import LastK, RunningSum, TopK, average_state_dicts, make_averager
from maskcls.errors import ConfigError
from maskcls.infer.soup import greedy_soup, make_soup
from maskcls.rundir.models import load_folds

EXACT = {"mixed_precision": "no"}  # exact comparisons: no bf16 autocast on CPUs that have it


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_running_sum_is_the_mean_and_keeps_the_last_integer_buffer():
    nets = [_net(s) for s in range(3)]
    for i, n in enumerate(nets):
        n[1].num_batches_tracked.fill_(10 * (i + 1))
        n[1].running_mean.fill_(float(i))
    avg = average_state_dicts(n.state_dict() for n in nets)
    for k, v in avg.items():
        if v.is_floating_point():
            hand = sum(n.state_dict()[k].double() for n in nets) / 3
            assert torch.equal(v, hand.float()), k
    assert avg["1.running_mean"].tolist() == [1.0] * 4  # BatchNorm statistics are averaged too
    assert int(avg["1.num_batches_tracked"]) == 30  # integer buffers: the last one
    with pytest.raises(ValueError):
        RunningSum().mean()


def test_last_k_averages_only_the_final_window_and_survives_a_resume():
    nets = [_net(s) for s in range(4)]
    last = LastK(k=2, epochs=4)
    for e, n in enumerate(nets[:3], start=1):
        last.after_epoch(n, e, 0.5)
    resumed = LastK(k=2, epochs=4)
    resumed.load_state_dict(last.state_dict())  # as last.pt carries it
    resumed.after_epoch(nets[3], 4, 0.1)
    weights, epochs = resumed.averaged()
    assert epochs == [3, 4]
    w = "0.weight"
    assert torch.equal(weights[w], ((nets[2].state_dict()[w].double() + nets[3].state_dict()[w].double()) / 2).float())


def test_top_k_keeps_the_best_epochs_on_disk_and_averages_them(tmp_path):
    nets = [_net(s) for s in range(4)]
    top = TopK(k=2, fold_dir=tmp_path)
    for e, (n, f1) in enumerate(zip(nets, [0.5, 0.7, 0.6, 0.8]), start=1):
        top.after_epoch(n, e, f1)
    assert sorted(p.name for p in (tmp_path / "avg").iterdir()) == ["epoch2.pt", "epoch4.pt"]
    weights, epochs = top.averaged()
    assert epochs == [2, 4]
    hand = (nets[1].state_dict()["0.bias"].double() + nets[3].state_dict()["0.bias"].double()) / 2
    assert torch.equal(weights["0.bias"], hand.float())
    top.cleanup()
    assert not (tmp_path / "avg").exists()


def test_config_refusals(tmp_path):
    with pytest.raises(ConfigError, match="average=top"):
        make_averager(tiny(train={"average": "last", "patience": 2, "epochs": 5}).train, tmp_path)
    with pytest.raises(ConfigError, match="more than train.epochs"):
        make_averager(tiny(train={"average": "top", "average_k": 4, "epochs": 3}).train, tmp_path)
    assert make_averager(tiny().train, tmp_path) is None


@pytest.mark.slow
def test_trained_average_equals_the_hand_average_and_is_the_fold_model(prepared_dir, tmp_path):
    # ema off: the hand average below is of the raw weights each epoch validated
    cfg = tiny(train={"epochs": 3, "average": "last", "average_k": 2, "average_use": "always", "ema": False,
                      **EXACT})
    s = train_run(prepared_dir, tmp_path / "avg", cfg)
    fold = Path(s["run_dir"]) / "fold0"
    e3 = torch.load(fold / "last.pt", weights_only=True)
    e2 = torch.load(fold / "last.prev.pt", weights_only=True)
    assert e3["epoch"] == 3 and e2["epoch"] == 2
    avg = torch.load(fold / "avg.pt", weights_only=True)
    best = torch.load(fold / "best.pt", weights_only=True)
    for k, v in avg["model"].items():
        if v.is_floating_point():
            hand = ((e2["model"][k].double() + e3["model"][k].double()) / 2).float()
            assert torch.equal(v, hand), k
            assert torch.equal(best["model"][k], v), k  # average_use=always: it is what predict loads
    assert (fold / "best_epoch.pt").exists()
    entry = s["folds"]["0"]["average"]
    assert entry["epochs"] == [2, 3] and entry["used"] is True
    oof = pd.read_csv(fold / "oof.csv")  # the averaged model's out-of-fold rows
    f1 = f1_score(oof["label"], oof["pred"], average="macro", labels=list(range(18)), zero_division=0)
    assert entry["f1"] == pytest.approx(f1, abs=1e-9) and s["folds"]["0"]["best_f1"] == pytest.approx(f1, abs=1e-9)
    assert avg["metric"] == pytest.approx(f1, abs=1e-9)
    loaded = load_folds(Path(s["run_dir"]))  # predict / export / serve load it like any fold model
    sd = loaded[0].model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in avg["model"].items())
    summary = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
    assert summary["folds"]["0"]["average"]["f1"] == pytest.approx(f1, abs=1e-9)


@pytest.mark.slow
def test_average_never_leaves_best_pt_alone(prepared_dir, tmp_path):
    cfg = tiny(train={"epochs": 2, "average": "top", "average_k": 2, "average_use": "never", **EXACT})
    s = train_run(prepared_dir, tmp_path / "never", cfg)
    fold = Path(s["run_dir"]) / "fold0"
    assert (fold / "avg.pt").exists() and not (fold / "best_epoch.pt").exists() and not (fold / "avg").exists()
    best = torch.load(fold / "best.pt", weights_only=True)
    assert "average" not in best and s["folds"]["0"]["average"]["used"] is False


class _Quadratic:
    """A stand-in validation set: the 'F1' of weights w is −(w − 0.55)²."""

    def score(self, weights):
        return -float((weights["w"].double() - 0.55) ** 2), 0.0, None


def test_greedy_soup_keeps_only_runs_that_do_not_lower_validation_f1():
    ingredients = [{"w": torch.tensor([v])} for v in (0.5, 0.6, 2.0)]
    kept, rec = greedy_soup(ingredients, _Quadratic())
    assert kept == [0, 1]  # 0.55 beats 0.5 alone; adding 2.0 would move the mean to 1.03
    assert [t["kept"] for t in rec["tries"]] == [True, False]
    assert rec["tries"][1]["soup_f1"] < rec["tries"][0]["soup_f1"]


@pytest.mark.slow
def test_soup_is_a_run_that_predict_accepts_and_refuses_other_configs(prepared_dir, tmp_path, capsys):
    runs = [Path(train_run(prepared_dir, tmp_path / f"s{seed}", tiny(train={"epochs": 1, "seed": seed, **EXACT}))
                 ["run_dir"]) for seed in (1, 2)]
    s = make_soup(runs, tmp_path / "soup")
    soup = Path(s["run_dir"])
    fold = s["folds"]["0"]
    alone = json.loads((soup / "run.json").read_text())["soup"]["folds"]["0"]["f1_alone"]
    assert fold["best_f1"] >= max(alone) - 1e-12  # never worse than its best ingredient
    oof = pd.read_csv(soup / "fold0" / "oof.csv")
    f1 = f1_score(oof["label"], oof["pred"], average="macro", labels=list(range(18)), zero_division=0)
    assert fold["best_f1"] == pytest.approx(f1, abs=1e-9)
    assert main(["predict", str(soup), "--out", str(tmp_path / "sub.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "sub.csv")) > 0
    other = Path(train_run(prepared_dir, tmp_path / "lr", tiny(train={"epochs": 1, "seed": 3, **EXACT},
                                                                   optim={"lr": 0.01}))["run_dir"])
    assert main(["soup", str(runs[0]), str(other), "--out", str(tmp_path / "bad")]) == 2
    assert "differ in optim.lr" in capsys.readouterr().err
