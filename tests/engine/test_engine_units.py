"""Fast unit tests of engine parts that the end-to-end tests only exercise as a whole:
schedulers, parameter groups, the epoch sampler, metrics, the fold state, resolved settings."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from helpers import config
from maskcls.config import SchedConfig
from maskcls.data.sampler import EpochSampler, balanced_weights
from maskcls.engine.fold_data import resolve_loader
from maskcls.engine.trainer.fold import FoldState
from maskcls.engine.trainer.optim import build_optimizer, build_scheduler, param_groups
from maskcls.errors import ConfigError
from maskcls.metrics import accuracy, class_table, confusion, macro_f1, oof_scores, summarize
from maskcls.models.factory import MaskClsNet, build_model
from maskcls.task import Task


def _lrs(name: str, steps_per_epoch: int = 10, epochs: int = 3, **kw) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-3)
    sched = build_scheduler(opt, SchedConfig(name=name, **kw), steps_per_epoch=steps_per_epoch, epochs=epochs,
                            base_lr=1e-3)
    out = []
    for _ in range(steps_per_epoch * epochs):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_cosine_warmup_rises_then_decays_to_the_floor():
    lrs = _lrs("cosine_warmup", warmup_epochs=1.0, min_lr=1e-6)
    assert lrs[:9] == sorted(lrs[:9]) and lrs[8] == pytest.approx(1e-3)  # warm-up: step 10 reaches 1e-3
    tail = lrs[9:]
    assert tail == sorted(tail, reverse=True) and tail[-1] == pytest.approx(1e-6, rel=1e-3)


def test_cosine_restarts_restart_every_period():
    lrs = _lrs("cosine_restarts", epochs=4, T_0=2, min_lr=0.0)
    assert lrs[19] > lrs[18] and lrs[19] == pytest.approx(1e-3)  # step 20 starts period 2
    assert min(lrs[:19]) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 19 / 20)), rel=1e-6)


def test_onecycle_peaks_at_max_lr_and_none_is_constant():
    assert max(_lrs("onecycle", max_lr=5e-3)) == pytest.approx(5e-3, rel=1e-3)
    assert set(_lrs("none")) == {1e-3}
    with pytest.raises(ConfigError, match="cosine_warmup"):
        _lrs("linear")


def test_param_groups_give_the_new_head_its_own_rate():
    model, _ = build_model("test_efficientnet", num_outputs=5, pretrained="none")
    groups = param_groups(model, lr=1e-3, head_lr_mult=10.0)
    head = list(model.backbone.get_classifier().parameters())
    assert [g["lr"] for g in groups] == [1e-3, 1e-2]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in head}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = build_optimizer(groups, name="adamw", lr=1e-3, weight_decay=0.01)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-2]


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_fused_optimizer_takes_the_same_steps_as_the_loop(name):
    """optim.fused: torch's fused kernel on CPU, within float rounding of the per-tensor loop."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    weights = []
    for fused in (False, True):
        model = copy.deepcopy(net)
        opt = build_optimizer(model.parameters(), name=name, lr=1e-2, weight_decay=0.01, fused=fused)
        assert opt.defaults.get("fused") is (True if fused else None)
        for _ in range(5):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        weights.append(torch.cat([p.detach().ravel() for p in model.parameters()]))
    moved = (weights[0] - torch.cat([p.detach().ravel() for p in net.parameters()])).abs().max()
    assert moved > 1e-3  # the steps did something
    torch.testing.assert_close(weights[1], weights[0], rtol=1e-4, atol=1e-5)


def test_epoch_sampler_order_is_a_function_of_seed_and_epoch():
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    a = list(s)
    s.set_epoch(2)
    assert sorted(a) == list(range(10)) and list(s) != a
    s.set_epoch(1)
    assert list(s) == a and list(EpochSampler(10, seed=3, shuffle=False)) == list(range(10))


def test_epoch_sampler_shards_without_duplicates():
    whole = EpochSampler(11, seed=5)
    ranks = [EpochSampler(11, seed=5, rank=r, world=2) for r in range(2)]
    a, b = (list(r) for r in ranks)
    assert len(a) == len(b) == 5 and not set(a) & set(b)  # training drops the uneven tail
    assert a + b != [] and sorted(a + b) == sorted(list(whole)[:10])
    va = [list(EpochSampler(11, seed=0, shuffle=False, rank=r, world=2, drop_uneven=False)) for r in range(2)]
    assert sorted(va[0] + va[1]) == list(range(11))  # validation: every image exactly once


def test_balanced_weights_draw_classes_equally():
    labels = np.array([0] * 90 + [1] * 10)
    w = balanced_weights(labels)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    drawn = np.array(list(EpochSampler(100, seed=0, weights=w)))
    assert 0.3 < (labels[drawn] == 1).mean() < 0.7


def test_metrics_equal_sklearn_including_absent_classes():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[p == 4] = 3  # class 4 never predicted
    cm = confusion(y, p, 6)  # class 5: neither true nor predicted
    assert macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro", labels=range(6), zero_division=0))
    assert accuracy(cm) == pytest.approx((y == p).mean())
    table = class_table(cm, list("abcdef"))
    assert table.loc["macro", "f1"] == pytest.approx(macro_f1(cm)) and table.loc["macro", "support"] == 300
    s = summarize(cm, loss_sum=30.0, n=300, task=Task.flat(list("abcdef")))
    assert s["loss"] == pytest.approx(0.1) and "f1_mask" not in s
    import pandas as pd
    scores = oof_scores(pd.DataFrame({"label": y, "pred": p}), Task.flat(list("abcdef")))
    assert scores["f1"] == pytest.approx(macro_f1(cm)) and scores["images"] == 300


def test_fold_state_round_trips_through_a_checkpoint_dict():
    st = FoldState()
    assert st.record({"epoch": 1}, 0.5, 0.6) and not st.record({"epoch": 2}, 0.4, 0.7)
    assert (st.best_epoch, st.bad_epochs, st.epoch) == (0, 1, 2)
    again = FoldState.from_dict(st.to_dict())
    assert again == st and again.result()["best_epoch"] == 1


def test_resolved_loader_settings():
    workers, kind = resolve_loader(config(data={"num_workers": 3}).data)
    assert workers == 3 and kind == ("threads" if torch.cuda.is_available() else "processes")
    assert resolve_loader(config(data={"preset": "reference"}).data)[1] == "processes"
    assert resolve_loader(config(data={"loader": "threads"}).data)[1] == "threads"


def test_fixed_size_architecture_is_built_for_the_size_or_refused():
    model, info = build_model("test_vit", num_outputs=3, pretrained="none", image_size=64)
    assert isinstance(model, MaskClsNet) and info.fixed_size
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)).shape == (1, 3)
    with pytest.raises(ConfigError, match="test_vit.*data.image_size=70"):
        build_model("test_vit", num_outputs=3, pretrained="none", image_size=70)
