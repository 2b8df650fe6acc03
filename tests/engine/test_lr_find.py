"""maskcls lr-find: the exponential range test on the run's real set-up (tiny synthetic data, CPU)."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bad_inputs import snapshot
from helpers import TINY_SETS, tiny
from maskcls.cli import main
from maskcls.engine.lr_find import Smoother, exp_lrs, lr_find, suggest
from maskcls.errors import ConfigError
from maskcls.prep.prepared import load_prepared

FP32 = {"mixed_precision": "no"}


@pytest.mark.slow
def test_lr_find_sweeps_exponentially_keeps_group_ratios_and_writes_only_its_new_dir(prepared_dir, synth_root,
                                                                                     tmp_path):
    before = snapshot(prepared_dir), snapshot(synth_root)
    runs = tmp_path / "runs"
    cfg = tiny(train=FP32, optim={"head_lr_mult": 5.0}, run={"runs_dir": str(runs), "report": False})
    res = lr_find(cfg, load_prepared(prepared_dir), start=1e-5, end=1.0, steps=12)
    sw = res.sweep
    assert (snapshot(prepared_dir), snapshot(synth_root)) == before, "lr-find wrote into the dataset"
    assert res.out == runs / "lr-find-1" and sorted(p.name for p in res.out.iterdir()) == [
        "config.yaml", "lr_find.csv", "lr_find.json", "lr_find.png"]  # no checkpoint
    # 12 steps of 2 accumulated batches of 8: more than the fold's ~70 training images, so epochs cycle
    assert len(sw.lrs) >= 3
    ratios = np.asarray(sw.lrs[1:]) / np.asarray(sw.lrs[:-1])
    assert sw.lrs[0] == pytest.approx(1e-5) and np.allclose(ratios, (1.0 / 1e-5) ** (1 / 11))
    head_over_body = [g[1] / g[0] for g in sw.group_lrs]
    assert np.allclose(head_over_body, 5.0), "the head's multiple of the backbone lr must be kept"
    s = res.suggestion["suggested"]
    assert math.isfinite(s) and 1e-5 <= s <= 1.0
    csv = pd.read_csv(res.out / "lr_find.csv")
    assert list(csv.columns) == ["step", "lr", "loss", "smoothed"] and len(csv) == len(sw.lrs)
    assert np.allclose(csv["lr"], sw.lrs) and np.isfinite(csv[["loss", "smoothed"]].to_numpy()).all()
    with Image.open(res.out / "lr_find.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
        im.verify()
    assert json.loads((res.out / "lr_find.json").read_text())["suggested"] == s
    # a second sweep gets the next directory, the first stays as it was
    again = lr_find(cfg, load_prepared(prepared_dir), start=1e-5, end=1e-2, steps=3)
    assert again.out == runs / "lr-find-2" and len(again.sweep.lrs) == 3


@pytest.mark.slow
def test_lr_find_stops_early_when_the_loss_diverges(prepared_dir, tmp_path):
    cfg = tiny(train=FP32, optim={"name": "sgd", "momentum": 0.9})
    res = lr_find(cfg, load_prepared(prepared_dir), start=0.1, end=1e6, steps=40, out=tmp_path / "lf")
    assert len(res.sweep.lrs) < 40 and res.sweep.stopped
    assert re.match(r"(the smoothed loss exceeds 4x its minimum|the loss is not finite) at step \d+",
                    res.sweep.stopped)
    assert 0.1 <= res.suggestion["suggested"] <= 1e6


def test_smoother_corrects_the_bias_and_stops_at_4x_the_minimum_or_a_non_finite_loss():
    s = Smoother()
    assert [s.add(2.0)[0] for _ in range(3)] == pytest.approx([2.0] * 3)  # not 0.04 as a plain EMA's first value
    s, stop, n = Smoother(beta=0.5), None, 0
    for n, loss in enumerate([4.0, 2.0, 1.0, 1.0, 3.0, 9.0, 30.0, 100.0], 1):
        smoothed, stop = s.add(loss)
        if stop:
            break
    assert stop == "the smoothed loss exceeds 4x its minimum" and smoothed > 4 * s.best and n < 8
    assert Smoother().add(float("nan"))[1] == "the loss is not finite"


def test_suggest_reads_steepest_descent_and_min_over_10():
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    loss = 2 - np.tanh(2 * (x + 3)) + np.exp(3 * (x + 1))  # falls fastest at 1e-3, turns up near 1e-1
    sug = suggest(lrs, loss)
    assert sug["steepest"] == pytest.approx(1e-3, rel=0.13)
    i_min = int(np.argmin(loss))
    assert sug["min_over_10"] == pytest.approx(lrs[i_min] / 10) and sug["suggested"] == sug["min_over_10"]
    assert sug["rule"] == "min/10"
    rising = suggest(lrs, 1 + lrs)  # never falls: the sweep started too high
    assert rising["suggested"] == lrs[0] and rising["rule"] == "--start" and rising["steepest"] is None


def test_exp_lrs_are_geometric_and_bad_ranges_are_config_errors():
    lrs = exp_lrs(1e-7, 1.0, 8)
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** (7 / 7))
    with pytest.raises(ConfigError, match="--start < --end"):
        exp_lrs(1e-2, 1e-3, 10)


@pytest.mark.slow
def test_cli_prints_the_suggestion_and_the_line_to_use_it(prepared_dir, tmp_path, capsys):
    sets = [a for s in [*TINY_SETS, "train.mixed_precision='no'"] for a in ("--set", s)]
    out = tmp_path / "lf"
    assert main(["lr-find", str(prepared_dir), *sets, "--start", "1e-4", "--steps", "6", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    sug = json.loads((out / "lr_find.json").read_text())
    use = [ln for ln in lines if ln.startswith("use it: ")]
    assert len(use) == 1 and use[0].startswith(f"use it: maskcls train {prepared_dir} --set model.name=")
    value = float(re.search(r"--set optim\.lr=(\S+)$", use[0]).group(1))
    assert value == pytest.approx(sug["suggested"], rel=0.05) and 1e-4 <= value <= 1.0
    assert any(ln.startswith(f"suggested optim.lr = {value:.2g} (config: 0.001); rule ") for ln in lines)
    assert any(ln.startswith("steepest descent of the smoothed loss: ") for ln in lines)
    assert any(ln.startswith("minimum of the smoothed loss at ") and "min/10" in ln for ln in lines)
    # into the dataset: one error line, nothing written
    before = snapshot(prepared_dir)
    assert main(["lr-find", str(prepared_dir), *sets, "--out", str(prepared_dir / "lf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error: lr-find --out") and "inside the prepared directory" in err
    assert err.count("\n") == 1 and snapshot(prepared_dir) == before
