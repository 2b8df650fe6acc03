"""maskcls bench time-to-f1, offline: a stand-in for timm's train.py in a tiny git repository.

The stand-in writes what the real train.py writes (summary.csv, checkpoint-<e>.pth.tar with a timm
state dict, last/model_best, per-update log lines in its format). Its checkpoint of epoch e predicts
class e for every photo, so its macro F1 per epoch is known without running a model; its log's
average update time is 0.25 + 0.05·e s. The ratios are recomputed here from the recorded files.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from helpers import TINY_SETS

FAKE_TRAIN_PY = r'''
import argparse, csv, os, sys, time
import timm, torch

ap = argparse.ArgumentParser()
ap.add_argument("data")
ap.add_argument("--model")
ap.add_argument("--num-classes", type=int)
ap.add_argument("-b", type=int)
ap.add_argument("--epochs", type=int)
ap.add_argument("--output")
ap.add_argument("--experiment")
ap.add_argument("--checkpoint-hist", type=int)
a, _ = ap.parse_known_args()
out = os.path.join(a.output, a.experiment)
os.makedirs(out, exist_ok=True)
n_train = sum(len(f) for _, _, f in os.walk(os.path.join(a.data, "train")))
updates = n_train // a.b
for e in range(a.epochs):
    time.sleep(0.3)
    model = timm.create_model(a.model, pretrained=False, num_classes=a.num_classes)
    head = model.get_classifier()
    with torch.no_grad():  # every photo -> class e
        head.weight.zero_()
        head.bias.zero_()
        head.bias[e] = 10.0
    avg = 0.25 + 0.05 * e
    print(f"Train: {e} [{updates - 1:>4d}/{updates} (100%)]  Loss: 1.00 (1.00)  Time: 0.300s, {a.b / 0.3:>7.2f}/s  "
          f"({avg:.3f}s, {a.b / avg:>7.2f}/s)  LR: 1.000e-03  Data: 0.010 (0.010)", file=sys.stderr, flush=True)
    tmp, last = os.path.join(out, "tmp.pth.tar"), os.path.join(out, "last.pth.tar")
    torch.save({"epoch": e, "state_dict": model.state_dict(), "args": a}, tmp)
    os.replace(tmp, last)
    os.link(last, os.path.join(out, f"checkpoint-{e}.pth.tar"))
    if e == 0:
        os.link(last, os.path.join(out, "model_best.pth.tar"))
    with open(os.path.join(out, "summary.csv"), "a") as fh:
        w = csv.writer(fh)
        if e == 0:
            w.writerow(["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"])
        w.writerow([e, 1.0, 1.0, 10.0, 50.0, 1e-3])
'''


@pytest.fixture(scope="module")
def fake_timm_repo(tmp_path_factory) -> Path:
    """A git repository whose HEAD holds the stand-in train.py; returns its git directory."""
    work = tmp_path_factory.mktemp("fake-timm")
    (work / "train.py").write_text(FAKE_TRAIN_PY)
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "train.py"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "stand-in"], check=True)
    return work / ".git"


def test_time_to_f1_table_and_ratios_from_the_recorded_files(prepared_dir, fake_timm_repo, tmp_path, capsys,
                                                           monkeypatch):
    from maskcls.cli import main
    out = tmp_path / "ttf"
    monkeypatch.chdir(prepared_dir.parent)  # a relative PREPARED (each side runs in its own folder)
    rc = main(["bench", "time-to-f1", prepared_dir.name, "--timm-repo", str(fake_timm_repo), "--epochs", "2",
               "--image-size", "48", "--precision", "no", "--seed", "5", "--out", str(out),
               *[x for s in TINY_SETS for x in ("--set", s)]])
    text = capsys.readouterr().out
    assert rc == 0, text
    result = json.loads((out / "result.json").read_text())

    # every epoch of both sides is in the table
    for side in ("timm", "maskcls"):
        for e in (1, 2):
            assert re.search(rf"^{side}\s+{e}\s+[\d.]+\s+[\d.]+\s+[\d.]+$", text, re.M), (side, e, text)
    # both sides got the same budget: seed, epochs, batch, size, no autocast
    cmd = result["timm"]["command"]
    for flag, value in (("--seed", "5"), ("--epochs", "2"), ("-b", "8"), ("--grad-accum-steps", "2"),
                        ("--img-size", "48"), ("--model", "test_efficientnet")):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--amp" not in cmd and "--pretrained" not in cmd

    # timm's side from its files: F1 of "all photos are class e" on the validation fold, checkpoint mtimes
    from maskcls.prep.prepared import load_prepared
    prep = load_prepared(prepared_dir)
    rows = prep.train_rows()
    k = prep.task.num_classes
    y = rows.loc[rows["fold"] == 0, "label"].to_numpy()
    timm_f1 = [f1_score(y, np.full(len(y), e), average="macro", labels=range(k), zero_division=0) for e in (0, 1)]
    started = result["timm"]["started"]
    ckpt = out / "timm" / "runs" / "peer"
    timm_wall = [(ckpt / f"checkpoint-{e}.pth.tar").stat().st_mtime - started for e in (0, 1)]
    n_train = int((rows["fold"] != 0).sum())
    timm_rate = [(n_train // 8) * 8 / ((0.25 + 0.05 * e) * (n_train // 8)) for e in (0, 1)]
    assert [p["f1"] for p in result["timm"]["points"]] == pytest.approx(timm_f1, abs=1e-9)

    # maskcls' side from its files: metrics.csv and the child's epoch ends
    m = pd.read_csv(out / "maskcls" / "run" / "fold0" / "metrics.csv")
    ends = [json.loads(line)["time"] - result["maskcls"]["started"]
            for line in (out / "maskcls" / "epochs.jsonl").read_text().splitlines()]
    assert len(m) == len(ends) == 2
    best = int(np.argmax(timm_f1))
    reached = [i for i in range(2) if m["valid_f1"][i] >= timm_f1[best]]
    denominator = ends[reached[0]] if reached else ends[-1]
    expected = timm_wall[best] / denominator
    got = re.search(r"^time-to-F1 speedup vs timm train\.py: (<?) ?([\d.]+)$", text, re.M)
    assert got and (got.group(1) == "<") == (not reached)
    assert float(got.group(2)) == pytest.approx(expected, abs=0.006)

    harmonic = lambda rates: len(rates) / sum(1 / r for r in rates)  # noqa: E731  equal images per epoch
    expected = harmonic(m["images_per_s"].tolist()) / harmonic(timm_rate)
    got = re.search(r"^throughput vs timm train\.py: ([\d.]+) ", text, re.M)
    assert got and float(got.group(1)) == pytest.approx(expected, abs=0.006)


def test_speedup_when_maskcls_never_reaches_timms_best():
    from maskcls.bench.time_to_f1 import EpochPoint, format_table, speedup
    timm = [EpochPoint(1, 0.50, 60.0, 40.0), EpochPoint(2, 0.60, 120.0, 40.0), EpochPoint(3, 0.60, 180.0, 40.0)]
    mask = [EpochPoint(1, 0.55, 50.0, 50.0), EpochPoint(2, 0.58, 100.0, 60.0)]
    r = speedup(timm, mask)
    assert not r["reached"] and r["timm_best_epoch"] == 2  # ties keep the first epoch at the best F1
    assert r["time_to_f1"] == pytest.approx(120.0 / 100.0)
    assert r["throughput"] == pytest.approx((2 / (1 / 50 + 1 / 60)) / 40.0)
    text = format_table("t", {"timm": timm, "maskcls": mask}, r)
    assert "maskcls never reaches it" in text and "time-to-F1 speedup vs timm train.py: < 1.20" in text
    r = speedup(timm, [EpochPoint(1, 0.61, 30.0, 50.0)])
    assert r["reached"] and r["time_to_f1"] == pytest.approx(4.0)


def test_bad_timm_repo_is_a_one_line_error(prepared_dir, tmp_path, capsys):
    from maskcls.cli import main
    rc = main(["bench", "time-to-f1", str(prepared_dir), "--timm-repo", str(tmp_path / "nope"), "--out",
               str(tmp_path / "o"), *[x for s in TINY_SETS for x in ("--set", s)]])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot read HEAD:train.py" in err and "pytorch-image-models" in err
    assert not (tmp_path / "o" / "maskcls").exists()  # it failed before any training started


def test_maskcls_side_validates_one_view_like_timms_checkpoints():
    """timm's checkpoints are scored on one view, so maskcls' side must not average in the mirror image (the
    default train.valid_tta=hflip would lift its F1 column by a point for nothing it trained)."""
    from maskcls.bench.time_to_f1 import Budget, budget_config
    from maskcls.config import Config
    assert Config().train.valid_tta == "hflip"
    cfg = budget_config(None, Budget())
    assert cfg.train.valid_tta == "none" and cfg.data.image_size == 128 and cfg.train.epochs == 3
    base = Config()
    base.optim.lr = 5e-4
    assert budget_config(base, Budget()).train.valid_tta == "none"
    assert budget_config(base, Budget()).optim.lr == 5e-4
