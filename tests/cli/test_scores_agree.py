"""One model, one figure (issue 38): train's end-of-run lines, ``export --int8`` (its fp32 side), ``soup`` (each run
alone) and the report score the same fold-0 model in the same view and precision, and each line names them, so
the figures agree; where they cannot (an ensemble of folds) the line says why."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from helpers import TINY_SETS
from maskcls.cli import main


def _train(prepared: Path, run: Path, seed: int) -> str:
    sets = [a for s in TINY_SETS + ["train.epochs=1", f"train.seed={seed}", "train.mixed_precision=no",
                                    "run.report=true"] for a in ("--set", s)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", str(prepared), "--folds", "0", "--run-dir", str(run), *sets]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def runs(prepared_dir, tmp_path_factory) -> list[tuple[Path, str]]:
    """Two tiny one-fold runs of one config, seeds 1 and 2, trained by the CLI: (run, what train printed)."""
    root = tmp_path_factory.mktemp("agree")
    return [(root / f"s{seed}", _train(prepared_dir, root / f"s{seed}", seed)) for seed in (1, 2)]


def _fold0_f1(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["folds"]["0"]["best_f1"]


@pytest.mark.slow
def test_train_names_view_and_precision_and_says_what_is_next(runs):
    run, out = runs[0]
    lines = out.splitlines()
    assert lines[0] == f"run: {run}"
    assert re.fullmatch(rf"fold 0: validation macro F1, flip TTA, fp32: {_fold0_f1(run):.4f} \(best epoch 1, "
                        r"accuracy \d\.\d{4}, done\)", lines[1]), lines[1]
    assert not any(x.startswith("mean validation macro F1") for x in lines)  # one fold: the fold's line says it
    assert f"report: {run / 'report.html'}" in lines and (run / "report.html").is_file()
    assert f"next: maskcls predict {run}  (a submission: {run / 'submission.csv'})" in lines
    assert "maskcls audit" not in out  # one fold of three: no out-of-fold predictions to audit


@pytest.mark.slow
def test_export_int8_scores_the_runs_view(runs, capsys):
    """With one fold on a CPU, export --int8's fp32 figure is train's figure for that fold (same images, flip TTA,
    fp32; ONNX Runtime's probabilities within 1e-4 of PyTorch's)."""
    run, _ = runs[0]
    assert main(["export", str(run), "--int8", "--force", "--folds", "0", "--calib-images", "20"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"^validation macro F1, fold 0 \((\d+) images\), flip TTA: fp32 (\d\.\d{4}), int8 \d\.\d{4} "
                  r"\(calibrated on 20 training images\)$", out, re.M)
    assert m, out
    assert m.group(2) == f"{_fold0_f1(run):.4f}"
    assert json.loads((run / "export" / "model.int8.onnx").with_suffix(".json").read_text())["validation"]["tta"] == \
        "hflip"


@pytest.mark.slow
def test_soup_scores_each_run_as_its_training_did(runs, tmp_path, capsys):
    (a, _), (b, _) = runs
    assert main(["soup", str(a), str(b), "--out", str(tmp_path / "soup")]) == 0
    out = capsys.readouterr().out
    alone = json.loads((tmp_path / "soup" / "run.json").read_text())["soup"]["folds"]["0"]["f1_alone"]
    assert alone == pytest.approx([_fold0_f1(a), _fold0_f1(b)], abs=1e-9)
    best = max(_fold0_f1(a), _fold0_f1(b))
    soup_f1 = _fold0_f1(tmp_path / "soup")
    assert re.search(rf"^fold 0: [12] of 2 runs in the soup; validation macro F1, flip TTA, fp32: {soup_f1:.4f} "
                     rf"\(best run alone {best:.4f}, as its training validated it\)$", out, re.M), out
    assert f"next: maskcls predict {tmp_path / 'soup'}" in out
    page = (a / "report.html").read_text()
    assert "scores: validation macro F1, flip TTA, fp32" in page and f"<b>{_fold0_f1(a):.4f}</b>" in page
