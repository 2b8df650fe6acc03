"""train.batch_size=auto: the largest batch that fits the GPU's memory budget, the learning rate scaled with it, the
default batch on a CPU; the search, the rule and the fallback tested on CPU with a stand-in for the memory probe."""
from __future__ import annotations

import math

import pytest
import torch

from maskcls.config_io import load_config
from maskcls.engine.batch_size import DEFAULT_BATCH, largest_fitting, resolve_auto_batch, scaled_lr
from maskcls.errors import ConfigError


def test_the_largest_doubling_of_the_default_batch_within_the_budget():
    peak = lambda b: 1000 + 100 * b  # noqa: E731 - bytes a step of batch b takes
    assert largest_fitting(peak, budget=1000 + 100 * 240) == 240  # 30, 60, 120, 240 fit; 480 does not
    assert largest_fitting(peak, budget=10) == DEFAULT_BATCH  # not even the default fits: the default
    assert largest_fitting(peak, budget=10**12, cap=100) == 60  # the fold's training images cap it
    assert largest_fitting(peak, budget=10**12, cap=20) == 20


def test_running_out_of_memory_counts_as_not_fitting():
    def peak(b):
        if b > 120:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return b
    assert largest_fitting(peak, budget=10**9) == 120


@pytest.mark.parametrize("rule,factor", [("sqrt", 2.0), ("linear", 4.0), ("none", 1.0)])
def test_the_learning_rate_follows_the_batch_by_the_rule(rule, factor):
    assert math.isclose(scaled_lr(1e-3, 120, rule), 1e-3 * factor)


def test_a_cpu_trains_with_the_default_batch_and_lr():
    auto = resolve_auto_batch(device=torch.device("cpu"), lr=1.03e-3, rule="sqrt", probe=lambda: 480)
    assert (auto.batch, auto.lr) == (DEFAULT_BATCH, 1.03e-3)


def test_a_gpu_takes_the_probes_batch_and_a_failing_probe_falls_back(caplog):
    auto = resolve_auto_batch(device=torch.device("cuda", 0), lr=1e-3, rule="sqrt", probe=lambda: 120)
    assert auto.batch == 120 and math.isclose(auto.lr, 2e-3) and "sqrt rule from batch 30" in auto.why

    def broken():
        raise RuntimeError("driver too old")
    auto = resolve_auto_batch(device=torch.device("cuda", 0), lr=1e-3, rule="sqrt", probe=broken)
    assert (auto.batch, auto.lr) == (DEFAULT_BATCH, 1e-3) and "driver too old" in caplog.text


def test_the_config_takes_auto_or_a_batch_and_refuses_anything_else():
    assert load_config().train.batch_size == "auto"
    assert load_config(None, ["train.batch_size=64"]).train.batch_size == 64
    with pytest.raises(ConfigError, match=r"train.batch_size: .*'auto'.*did you mean 'auto'"):
        load_config(None, ["train.batch_size=autoo"])
    with pytest.raises(ConfigError, match="out of range"):
        load_config(None, ["train.batch_size=0"])


@pytest.mark.slow
def test_auto_on_a_cpu_trains_with_batch_30_and_records_it(prepared_dir, tmp_path, caplog):
    import yaml

    from helpers import tiny, train
    caplog.set_level("INFO", logger="maskcls")
    train(prepared_dir, tmp_path / "r", tiny(train={"epochs": 1, "batch_size": "auto", "max_train_batches": 1}))
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 30 and saved["optim"]["lr"] == load_config().optim.lr
    assert "train.batch_size=auto: batch 30 (the default batch on a CPU)" in caplog.text


def test_auto_grows_the_batch_only_while_an_epoch_keeps_100_steps():
    """Batch 120 (19 steps per epoch of agegender6dev) cost points on the real dev sets: auto keeps the default batch
    on sets of a few thousand photos and grows it only on sets large enough to keep 100 steps per epoch."""
    from maskcls.engine.batch_size import MAX_BATCH, MIN_STEPS_PER_EPOCH, steps_cap
    assert MIN_STEPS_PER_EPOCH == 100
    assert steps_cap(2259) == DEFAULT_BATCH          # agegender6dev's fold: the default batch, whatever fits
    assert steps_cap(20) == 20                       # a fold smaller than one default batch: the whole fold
    assert steps_cap(15120) == 151                   # the competition's fold (2,160 people x 7 photos)
    assert steps_cap(10**7) == MAX_BATCH
    huge = lambda b: b  # noqa: E731 - a device where any batch fits
    assert largest_fitting(huge, budget=10**12, cap=steps_cap(2259)) == DEFAULT_BATCH

    def never(b):
        raise AssertionError("a set this small needs no memory probe")
    assert largest_fitting(never, budget=10**12, cap=steps_cap(2259)) == DEFAULT_BATCH
    assert largest_fitting(huge, budget=10**12, cap=steps_cap(15120)) == 120  # 30, 60, 120; 240 > 151


def test_the_banner_says_when_the_steps_cap_decided_the_batch():
    cuda = torch.device("cuda", 0)
    capped = resolve_auto_batch(device=cuda, lr=1e-3, rule="sqrt", probe=lambda: 120, cap=151)
    assert "keeps 100 optimizer steps per epoch (at most batch 151 here)" in capped.why
    free = resolve_auto_batch(device=cuda, lr=1e-3, rule="sqrt", probe=lambda: 120, cap=1024)
    assert "optimizer steps" not in free.why and free.batch == 120
