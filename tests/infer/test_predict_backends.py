"""predict --backend torch|onnx|onnx-int8 and bench predict (issue 23): the same submission from each backend."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import tiny, train
from maskcls.cli import main
from maskcls.errors import ConfigError
from maskcls.infer.predict import predict_images, predict_submission

COLS = [f"prob_{i}" for i in range(18)]


@pytest.fixture(scope="module")
def run(prepared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("backends") / "run"
    train(prepared_dir, out, tiny(train={"epochs": 2, "mixed_precision": "no"}))
    # the INT8 model of a 2-epoch toy run may lose more than 0.005 F1 on 35 images: keep it for these tests
    assert main(["export", str(out), "--int8", "--force", "--calib-images", "40"]) == 0
    return out


def _probs(s: dict) -> np.ndarray:
    return pd.read_csv(s["probabilities"])[COLS].to_numpy()


@pytest.mark.slow
def test_backends_write_the_same_submission(run, synth_root, tmp_path, capsys):
    """Same rows, ids and columns from every backend; fp32 ONNX equals torch to 1e-4 (so the same classes), and
    INT8 gives the torch class wherever torch's top-2 margin exceeds twice INT8's largest probability error."""
    assert not (run / "export" / "model.onnx").exists()
    subs = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        assert main(["predict", str(run), "--backend", backend, "--tta", "hflip", "--tune-bias", "off",
                     "--out", str(tmp_path / f"{backend}.csv")]) == 0
        assert f"backend {backend}" in capsys.readouterr().out
        subs[backend] = pd.read_csv(tmp_path / f"{backend}.csv", dtype={"ImageID": str})
    assert (run / "export" / "model.onnx").is_file()  # exported on the fly for --backend onnx
    info = pd.read_csv(synth_root / "eval" / "info.csv", dtype=str)
    for sub in subs.values():
        assert list(sub.columns) == list(info.columns) and list(sub["ImageID"]) == list(info["ImageID"])
    probs = {b: pd.read_csv(tmp_path / f"{b}.probs.csv")[COLS].to_numpy() for b in subs}
    assert np.abs(probs["onnx"] - probs["torch"]).max() < 1e-4
    assert (subs["onnx"]["ans"] == subs["torch"]["ans"]).all()
    err = np.abs(probs["onnx-int8"] - probs["torch"]).max()
    assert 0 < err < 0.2, err  # really another (quantized) model, and still a close one
    top2 = np.sort(probs["torch"], 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * err
    assert (subs["onnx-int8"]["ans"][clear] == subs["torch"]["ans"][clear]).all()


@pytest.mark.slow
def test_backend_images_and_decision_offsets(run, synth_root):
    imgs = [str(p) for p in sorted((synth_root / "eval" / "images").iterdir())[:4]]
    ref = predict_images(run, imgs)
    got = predict_images(run, imgs, backend="onnx")
    assert [r["class_id"] for r in got] == [r["class_id"] for r in ref]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(got, ref)) < 1e-4
    s = predict_submission(run, backend="onnx", num_workers=0)
    t = predict_submission(run, backend="torch", num_workers=0)
    assert s["backend"] == "onnx" and s["model"].endswith("model.onnx") and s["submission"] != t["submission"]
    assert np.abs(_probs(s) - _probs(t)).max() < 1e-4
    assert (pd.read_csv(s["submission"])["ans"] == pd.read_csv(t["submission"])["ans"]).all()


@pytest.mark.slow
def test_backend_refuses_a_stale_or_other_fold_export(run, tmp_path):
    from maskcls.infer.export import export_run
    other = export_run(run, out=tmp_path / "x.onnx")  # a fresh export elsewhere; then a stale one in RUN/export
    assert other.is_file()
    model = run / "export" / "model.onnx"
    if not model.exists():
        export_run(run)
    spec = json.loads(model.with_suffix(".json").read_text())
    ckpt = run / "fold0" / "best.pt"
    old = model.stat().st_mtime
    os.utime(model, (old, ckpt.stat().st_mtime - 10))
    try:
        with pytest.raises(ConfigError, match="older than the run's checkpoints"):
            predict_submission(run, backend="onnx", num_workers=0)
    finally:
        os.utime(model, (old, old))
    spec_path = model.with_suffix(".json")
    spec_path.write_text(json.dumps({**spec, "folds": [1]}))
    try:
        with pytest.raises(ConfigError, match=r"holds folds \[1\], not the chosen \[0\]"):
            predict_submission(run, backend="onnx", num_workers=0)
    finally:
        spec_path.write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="--backend 'onnx8'"):
        predict_submission(run, backend="onnx8")


@pytest.mark.slow
def test_bench_predict_prints_its_table(run, capsys):
    assert main(["bench", "predict", "--run", str(run), "--images", "30"]) == 0
    out = capsys.readouterr().out
    rows = {m[0]: (float(m[1]), float(m[2]), float(m[3]))
            for m in re.findall(r"^(torch|onnx|onnx-int8)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+)%$", out, flags=re.M)}
    assert set(rows) == {"torch", "onnx", "onnx-int8"}, out
    assert rows["onnx"][1] == 1.0 and rows["torch"][2] == 100.0 and rows["onnx"][2] == 100.0
    assert all(r[0] > 0 for r in rows.values())
    speed = float(re.search(r"^int8 speedup vs fp32 onnx: ([\d.]+)", out, flags=re.M).group(1))
    assert abs(speed - rows["onnx-int8"][1]) < 0.01
    assert re.search(r"^int8 agreement with torch: [\d.]+ % of 30 rows", out, flags=re.M)
