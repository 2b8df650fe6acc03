"""predict (submission and images), export round trip, CLI behaviour, face-crop runs."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from helpers import TINY_SETS, tiny, train
from maskcls.cli import main
from maskcls.engine.decision import apply_offsets, read_offsets
from maskcls.errors import CheckpointError, ConfigError, DataError
from maskcls.infer.predict import predict_images, predict_submission


@pytest.fixture(scope="module")
def run2(prepared_dir, tmp_path_factory) -> Path:
    """A tiny two-fold run (report written by `maskcls train`)."""
    out = tmp_path_factory.mktemp("run") / "r"
    sets = [a for s in TINY_SETS + ["run.report=true", "train.epochs=1"] for a in ("--set", s)]
    assert main(["train", str(prepared_dir), "--folds", "0,1", "--run-dir", str(out), *sets]) == 0
    assert json.loads((out / "summary.json").read_text())["oof_f1"] is not None
    return out


@pytest.mark.slow
def test_train_writes_report(run2):
    """`maskcls train` writes report.html showing this run: its model, each fold's best F1 and the
    out-of-fold F1 of summary.json, one per-class row per class, the curves; no 'incomplete' banner."""
    html = (run2 / "report.html").read_text()
    s = json.loads((run2 / "summary.json").read_text())
    assert "<b>test_efficientnet</b>" in html and "Run incomplete" not in html
    for fold in ("0", "1"):
        row = re.search(rf"<tr><td>fold {fold}</td>(.*?)</tr>", html).group(1)
        assert f"{s['folds'][fold]['best_f1']:.4f}" in row and "done" in row
    assert re.search(rf"out-of-fold F1</span><b>{s['oof_f1']:.4f}</b>", html)
    assert len(re.findall(r"<tr class='[^']*' data-f1=", html)) == 18 + 1  # 18 classes and the macro row
    assert html.count("data:image/png;base64,") >= 2  # training curves and the lr schedule


@pytest.mark.slow
def test_submission_matches_info_csv(run2, synth_root, tmp_path):
    s = predict_submission(run2, out=str(tmp_path / "sub.csv"), tta="hflip")
    info = pd.read_csv(synth_root / "eval" / "info.csv", dtype=str)
    sub = pd.read_csv(s["submission"], dtype={"ImageID": str})
    assert list(sub.columns) == list(info.columns) and list(sub["ImageID"]) == list(info["ImageID"])
    assert sub["ans"].between(0, 17).all() and s["folds"] == [0, 1]
    probs = pd.read_csv(s["probabilities"])
    p = probs[[f"prob_{i}" for i in range(18)]].to_numpy()
    assert np.allclose(p.sum(1), 1, atol=1e-4)
    # the answer is the argmax after the run's decision offsets (decision.json), when tuning kept them
    assert (apply_offsets(p, read_offsets(run2, "auto")) == sub["ans"].to_numpy()).all()
    plain = predict_submission(run2, out=str(tmp_path / "plain.csv"), tta="hflip", tune_bias="off")
    assert not plain["decision_offsets"]
    assert (p.argmax(1) == pd.read_csv(plain["submission"])["ans"].to_numpy()).all()
    again = predict_submission(run2, out=str(tmp_path / "sub.csv"), folds="best")
    assert again["submission"] != s["submission"], "a second prediction must not overwrite the first"
    assert len(again["folds"]) == 1


@pytest.mark.slow
def test_ensemble_is_mean_of_folds(run2, tmp_path):
    a = pd.read_csv(predict_submission(run2, out=str(tmp_path / "a.csv"), folds="0")["probabilities"])
    b = pd.read_csv(predict_submission(run2, out=str(tmp_path / "b.csv"), folds="1")["probabilities"])
    ab = pd.read_csv(predict_submission(run2, out=str(tmp_path / "ab.csv"), folds="0,1")["probabilities"])
    cols = [f"prob_{i}" for i in range(18)]
    assert np.allclose((a[cols].to_numpy() + b[cols].to_numpy()) / 2, ab[cols].to_numpy(), atol=2e-5)


@pytest.mark.slow
def test_predict_images_and_bad_files(run2, synth_root, tmp_path, capsys):
    imgs = sorted((synth_root / "eval" / "images").iterdir())[:3]
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    res = predict_images(run2, [str(p) for p in imgs] + [str(bad)])
    assert [r["path"] for r in res] == [str(p) for p in imgs] + [str(bad)]
    assert all("label" in r and 0 <= r["class_id"] < 18 and 0 < r["confidence"] <= 1 for r in res[:3])
    assert "error" in res[3]
    code = main(["predict", str(run2), str(imgs[0]), str(bad), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(lines) == 2 and "error" in lines[1]
    assert main(["predict", str(run2), str(imgs[0])]) == 0
    out = capsys.readouterr()
    assert out.out.count("\n") == 1 and "decision offsets: not applied to single images" in out.err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no images"):
        predict_images(run2, [str(empty)])


def test_predict_without_checkpoints(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(CheckpointError, match="train first"):
        predict_submission(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trip(run2, tmp_path, fmt):
    from maskcls.infer.export import build_ensemble, export_run, run_exported
    from maskcls.rundir.models import load_folds
    out = export_run(run2, fmt=fmt, out=tmp_path / f"m.{fmt}")
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["input"]["dtype"] == "uint8" and len(spec["output"]["class_names"]) == 18
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = build_ensemble(load_folds(run2, "all"))(x).numpy()
    got = run_exported(out, x.numpy())
    assert got.shape == (3, 18) and np.abs(got - ref).max() < 1e-4


def test_export_out_paths(tmp_path, capsys):
    """--out: a folder gets model.<ext>, a bare name gets the format's suffix, the other format's suffix is
    refused before anything is loaded (the run need not exist for that)."""
    from maskcls.infer.export import export_path
    run = tmp_path / "run"
    assert export_path(run, "onnx", None) == run / "export" / "model.onnx"
    assert export_path(run, "torchscript", None) == run / "export" / "model.ts"
    (tmp_path / "models").mkdir()
    assert export_path(run, "onnx", tmp_path / "models") == tmp_path / "models" / "model.onnx"
    assert export_path(run, "onnx", tmp_path / "mask-v2") == tmp_path / "mask-v2.onnx"
    assert export_path(run, "torchscript", tmp_path / "m.pt") == tmp_path / "m.pt"
    message = r": an ONNX model file ends in \.onnx, not \.pt.*--out .*m\.onnx, or --format torchscript"
    with pytest.raises(ConfigError, match=message):
        export_path(run, "onnx", tmp_path / "m.pt")
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "a TorchScript model file ends in .ts or .pt or .torchscript, not .onnx" in err and "--format onnx" in err
    assert not run.exists()


@pytest.mark.slow
def test_export_to_a_bare_name_is_verified(run2, tmp_path):
    """An ONNX export to --out without a suffix was verified as TorchScript and failed; now it gets .onnx."""
    from maskcls.infer.export import export_run
    out = export_run(run2, fmt="onnx", folds="0", out=tmp_path / "bare")
    assert out == tmp_path / "bare.onnx" and out.is_file() and not (tmp_path / "bare").exists()
    assert json.loads(out.with_suffix(".json").read_text())["check"]["max_abs_diff_vs_pytorch"] < 1e-4


@pytest.mark.slow
def test_cli_help_and_one_line_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "maskcls", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "examples:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "maskcls", "train", "--help"], capture_output=True, text=True)
    assert "examples:" in r.stdout and "--resume" in r.stdout
    r = subprocess.run([sys.executable, "-m", "maskcls", "prepare", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "p")], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("maskcls: error:") and "nope" in r.stderr
    r = subprocess.run([sys.executable, "-m", "maskcls", "config", "--set", "train.epoch=3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "did you mean 'train.epochs'" in r.stderr


@pytest.mark.slow
def test_report_on_run_in_progress(run2, tmp_path):
    from maskcls.report.page import write_report
    partial = tmp_path / "partial"
    shutil.copytree(run2, partial)
    (partial / "summary.json").unlink()
    (partial / "fold1" / "oof.csv").unlink()
    out = write_report(partial).read_text()
    assert "<b>Run incomplete</b>" in out
    assert "<li>summary.json not written yet: training is running or was interrupted</li>" in out
    assert "<li>fold 1: no oof.csv yet</li>" in out and "<li>fold 0: no oof.csv yet</li>" not in out
    oof0 = pd.read_csv(partial / "fold0" / "oof.csv")  # the out-of-fold F1 shown is fold 0's alone
    f1 = f1_score(oof0["label"], oof0["pred"], average="macro", labels=range(18), zero_division=0)
    assert re.search(rf"out-of-fold F1 \(1/2 folds\)</span><b>{f1:.4f}</b>", out)


def test_models_listing(capsys):
    assert main(["models", "tf_efficientnet_lite*"]) == 0
    out = capsys.readouterr().out
    assert "* tf_efficientnet_lite0" in out


@pytest.mark.slow
def test_face_crop_training_end_to_end(prepared_dir, synth_root, tmp_path):
    from maskcls.prep.faces import build_face_crops
    prep = tmp_path / "prep"
    shutil.copytree(prepared_dir, prep)
    summary = build_face_crops(prep, size=96, progress=False)
    assert summary["counts"]["images"] == len(pd.read_csv(prep / "manifest.csv"))
    s = train(prep, tmp_path / "r", tiny(data={"faces": True}, train={"epochs": 1}))
    ck = torch.load(tmp_path / "r" / "fold0" / "best.pt", weights_only=True)
    assert ck["meta"]["preprocessing"]["faces"] is True and ck["meta"]["face_settings"]["size"] == 96
    sub = predict_submission(s["run_dir"], out=str(tmp_path / "sub.csv"))
    assert sub["rows"] == len(pd.read_csv(synth_root / "eval" / "info.csv"))
    res = predict_images(s["run_dir"], [str(next((synth_root / "eval" / "images").iterdir()))])
    assert "label" in res[0]
