"""The report's headline numbers: each names how it was scored (the run's view and precision), and the out-of-fold
tile shows no number for a single-fold run, whose summary.json has oof_f1 null (issue 38)."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskcls.config import Config
from maskcls.config_io import dump_yaml
from maskcls.report.page import write_report
from maskcls.report.run_data import validation_precision, validation_view, view_words


def _run(root: Path, folds: tuple[int, ...], *, valid_tta: str = "hflip", device: str = "cpu",
         mixed: str = "no") -> Path:
    """A finished run of a 4-class task with ``folds`` trained: config, run.json, metrics, oof rows, summary."""
    rng = np.random.default_rng(0)
    run = root / "run"
    run.mkdir()
    cfg = Config()
    cfg = replace(cfg, train=replace(cfg.train, valid_tta=valid_tta, mixed_precision=mixed))
    (run / "config.yaml").write_text(dump_yaml(cfg))
    (run / "run.json").write_text(json.dumps({"folds": list(folds), "device": device, "mixed_precision": mixed}))
    names = ["a", "b", "c", "d"]
    for f in folds:
        d = run / f"fold{f}"
        d.mkdir()
        pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.8], "train_f1": [0.5, 0.6], "valid_loss": [1.1, 0.9],
                      "valid_f1": [0.55, 0.61], "valid_acc": [0.6, 0.65]}).to_csv(d / "metrics.csv", index=False)
        labels = rng.integers(0, 4, 20)
        probs = rng.dirichlet(np.ones(4), 20)
        oof = pd.DataFrame({"path": [f"x{f}_{i}.jpg" for i in range(20)], "label": labels, "pred": probs.argmax(1)})
        pd.concat([oof, pd.DataFrame(probs, columns=[f"prob_{j}" for j in range(4)])], axis=1).to_csv(
            d / "oof.csv", index=False)
    (run / "summary.json").write_text(json.dumps({
        "run": "run", "task": "generic", "num_classes": 4, "class_names": names, "heads": "single",
        "folds": {str(f): {"best_f1": 0.61, "best_acc": 0.65, "best_epoch": 2, "status": "done"} for f in folds},
        "mean_f1": 0.61, "oof_f1": 0.6 if len(folds) > 1 else None, "head_f1": None, "finished": True}))
    return run


def _tiles(page: str) -> dict[str, str]:
    return dict(re.findall(r"<div class=kpi[^>]*><span>([^<]*)</span><b>([^<]*)</b></div>", page))


def test_a_single_fold_run_has_no_out_of_fold_number(tmp_path):
    page = write_report(_run(tmp_path, (0,))).read_text()
    tiles = _tiles(page)
    assert tiles["out-of-fold F1"] == "—" and tiles["mean best valid F1"] == "0.6100"
    assert "oof images" not in tiles
    assert 'title="needs two folds or more: with one fold, its validation F1 is the mean best valid F1"' in page


def test_several_folds_keep_their_out_of_fold_number(tmp_path):
    tiles = _tiles(write_report(_run(tmp_path, (0, 1))).read_text())
    assert tiles["out-of-fold F1"] not in ("—", "") and tiles["oof images"] == "40"


def test_the_report_names_the_view_and_precision_of_its_scores(tmp_path):
    page = write_report(_run(tmp_path, (0,))).read_text()
    assert "scores: validation macro F1, flip TTA, fp32" in page
    other = tmp_path / "other"
    other.mkdir()
    page = write_report(_run(other, (0,), valid_tta="none")).read_text()
    assert "scores: validation macro F1, one view, fp32" in page


@pytest.mark.parametrize("device,mixed,want", [("cpu", "no", "fp32"), ("cpu", "bf16", "fp32"),
                                               ("cuda:0", "no", "fp32")])
def test_validation_precision_follows_the_inference_rule(device, mixed, want):
    assert validation_precision({"device": device, "mixed_precision": mixed}) == want


def test_a_gpu_run_read_off_the_gpu(monkeypatch):
    """Reporting a GPU run on a CPU machine: bf16 training validated in bf16, fp16 (auto where bf16 is missing)
    in fp32."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert validation_precision({"device": "cuda:0", "mixed_precision": "bf16"}) == "bf16"
    assert validation_precision({"device": "cuda:0", "mixed_precision": "fp16"}) == "fp32"
    assert validation_precision({}) is None


def test_view_words(tmp_path):
    assert view_words("hflip", "fp32") == "flip TTA, fp32" and view_words("none", "bf16") == "one view, bf16"
    assert view_words("hflip", None) == "flip TTA"
    assert validation_view(_run(tmp_path, (0,), valid_tta="none")) == ("none", "fp32")
