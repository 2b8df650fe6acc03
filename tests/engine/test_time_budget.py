"""train.time: the steps that fit a wall-clock budget, planned and re-planned, on an injected clock (no sleeps)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from helpers import tiny
from maskcls.config_io import load_config
from maskcls.engine.extensions import time_budget
from maskcls.engine.extensions.time_budget import plan_total_steps
from maskcls.engine.trainer.callbacks import Callback
from maskcls.engine.trainer.optim import WarmupCosine, set_schedule_length
from maskcls.errors import ConfigError
from maskcls.rundir.checkpoint import load_checkpoint


def test_plan_fits_training_and_every_validation_into_the_budget():
    # 1 s a step, 10 s a validation, 20 steps an epoch: 3 whole epochs cost 90 s, a 4th step costs a 4th validation
    assert plan_total_steps(100, step_s=1, valid_s=10, done=0, steps_per_epoch=20) == 60
    # 105 s: 3 epochs and a partial 4th of 5 steps, validated (65 + 4 x 10 = 105)
    assert plan_total_steps(105, step_s=1, valid_s=10, done=0, steps_per_epoch=20) == 65
    # from the middle of epoch 2 (25 done), 50 s left: that epoch's validation is still owed
    assert plan_total_steps(50, step_s=1, valid_s=10, done=25, steps_per_epoch=20) == 55
    # nothing fits: stop where it is
    assert plan_total_steps(0, step_s=1, valid_s=10, done=40, steps_per_epoch=20) == 40


def test_a_stretched_schedule_ends_at_its_floor_on_the_new_last_step():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total=100, warmup=10, floor=0.01))
    for _ in range(30):
        opt.step()
        sched.step()
    assert set_schedule_length(sched, 50)
    assert opt.param_groups[0]["lr"] == pytest.approx(WarmupCosine(50, 10, 0.01)(30))
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    # a length set while training keeps the warm-up under a fifth of it; a length given at the start is as asked
    short = WarmupCosine(total=100, warmup=10, floor=0.0)
    short.set_total(20)
    assert short.warmup == 4 and WarmupCosine(total=20, warmup=10, floor=0.0).warmup == 10
    # the stretched length travels in the scheduler's state dict (a resumed fold keeps it)
    fresh = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(total=100, warmup=10, floor=0.01))
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_lambdas[0].total == 50


class FakeClock:
    """Seconds that pass only when the test says: ``step_s`` per optimizer step, ``valid_s`` per validation."""

    def __init__(self, step_s: float, valid_s: float):
        self.now, self.step_s, self.valid_s = 1000.0, step_s, valid_s

    def __call__(self) -> float:
        return self.now


class Ticker(Callback):
    """Advances the fake clock as if each step and each validation took their time (called before the budget)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def on_step_end(self, trainer, step):
        self.clock.now += self.clock.step_s

    def on_epoch_end(self, trainer, epoch, row):
        self.clock.now += self.clock.valid_s


def _train_on_the_clock(prepared_dir, run, cfg, callbacks):
    from maskcls.engine.run import run_training
    from maskcls.prep.prepared import load_prepared
    from maskcls.rundir.files import read_run_info
    s = run_training(cfg, load_prepared(prepared_dir), folds=[0], run_dir=run, callbacks=callbacks)
    last = load_checkpoint(run / "fold0" / "last.pt")
    spe = read_run_info(run)["resolved"]["steps_per_epoch"]["0"]["optimizer_steps"]
    return s, last["state"]["extras"]["time_budget"], spe


@pytest.mark.slow
def test_train_time_stops_at_the_budget_with_the_schedule_stretched_to_it(prepared_dir, tmp_path, monkeypatch,
                                                                          caplog):
    caplog.set_level("INFO", logger="maskcls")
    clock = FakeClock(step_s=1.0, valid_s=4.0)
    monkeypatch.setattr(time_budget, "default_clock", clock)
    cfg = tiny(train={"epochs": 2, "time": 1.0, "accum_steps": 1}, sched={"min_lr": 1e-5},
               optim={"lr": 1e-3})  # one minute for the one fold: far more than the 2 epochs train.epochs names
    s, extras, spe = _train_on_the_clock(prepared_dir, tmp_path / "run", cfg, [Ticker(clock)])
    fold = tmp_path / "run" / "fold0"
    lrs = pd.read_csv(fold / "lr.csv")["lr"].to_numpy()
    metrics = pd.read_csv(fold / "metrics.csv")
    assert extras["planned_steps"] == len(lrs)  # trained exactly the steps planned
    # what the measured times allow, and nothing less: one step more would not have fitted
    assert len(lrs) == plan_total_steps(60.0, step_s=1.0, valid_s=4.0, done=0, steps_per_epoch=spe)
    assert len(metrics) == math.ceil(len(lrs) / spe) > 2  # train.time, not train.epochs, decided the length
    assert extras["spent"] <= 60.0 + 1e-9  # within the budget
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-3)  # the cosine reached its floor at the last step
    assert s["folds"]["0"]["status"] == "done"
    assert (fold / "best.pt").is_file() and (fold / "oof.csv").is_file()
    # the banner says what decides the length, and the plan is logged with the measured speed
    assert "time budget 1 min (1.0 min per fold; train.epochs is not used" in caplog.text
    assert f"time budget 1.0 min: {len(lrs)} optimizer steps" in caplog.text


@pytest.mark.slow
def test_a_slower_machine_than_the_first_steps_said_still_ends_within_the_budget(prepared_dir, tmp_path,
                                                                                  monkeypatch):
    clock = FakeClock(step_s=1.0, valid_s=4.0)
    monkeypatch.setattr(time_budget, "default_clock", clock)

    class SlowsDown(Callback):
        def on_epoch_end(self, trainer, epoch, row):
            clock.step_s = 2.0  # after the first epoch every step takes twice as long

    cfg = tiny(train={"epochs": 2, "time": 1.0, "accum_steps": 1})
    _, extras, _ = _train_on_the_clock(prepared_dir, tmp_path / "run", cfg, [SlowsDown(), Ticker(clock)])
    assert extras["spent"] <= 60.0 + 1e-9
    assert extras["step_s"] == pytest.approx(2.0)  # the plan was corrected with what was measured
    assert len(pd.read_csv(tmp_path / "run" / "fold0" / "lr.csv")) == extras["planned_steps"]


def test_train_time_is_refused_with_what_needs_the_length_in_advance():
    with pytest.raises(ConfigError, match="onecycle"):
        load_config(None, ["train.time=5", "sched.name=onecycle"])
    with pytest.raises(ConfigError, match="train.average=top with train.time"):
        load_config(None, ["train.time=5", "train.average=last"])
