"""maskcls export --int8 (issue 23): the INT8 model, its JSON, the printed delta, and the refusal."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import file_snapshot
from helpers import tiny, train
from maskcls.cli import main


@pytest.fixture(scope="module")
def run(prepared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "run"
    train(prepared_dir, out, tiny(train={"epochs": 1, "mixed_precision": "no"}))
    return out


def _delta(text: str) -> float:
    found = re.findall(r"^int8 macro F1 delta: ([+-]\d\.\d{4})$", text, flags=re.M)
    assert len(found) == 1, text
    return float(found[0])


def test_int8_export_writes_model_json_and_delta(run, capsys):
    """The default path RUN/export/model.int8.onnx (what `serve --int8` loads) is a quantized graph whose
    JSON records precision, calibration and both F1s, and the printed delta is their difference."""
    assert main(["export", str(run), "--int8", "--force", "--calib-images", "40"]) == 0
    out = capsys.readouterr().out
    delta = _delta(out)
    model = run / "export" / "model.int8.onnx"
    spec = json.loads(model.with_suffix(".json").read_text())
    assert spec["precision"] == "int8" and spec["written_by"] == "maskcls export"
    assert spec["calibration"]["images"] == 40 and spec["calibration"]["method"] == "minmax"
    assert spec["calibration"]["fold"] == spec["validation"]["fold"] == 0
    v = spec["validation"]
    assert round(v["macro_f1_int8"] - v["macro_f1_fp32"], 4) == delta
    assert f"fp32 {v['macro_f1_fp32']:.4f}, int8 {v['macro_f1_int8']:.4f}" in out
    import onnx
    ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # really quantized (QDQ)
    from maskcls.infer.export import run_exported
    x = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    p = run_exported(model, x)
    assert p.shape == (3, 18) and np.allclose(p.sum(1), 1, atol=1e-4)
    # the head stays fp32: probabilities are not on a 1/255 grid
    assert not np.allclose(p * 255, np.round(p * 255), atol=1e-3)


def test_int8_refused_exactly_when_the_drop_exceeds_the_margin(run, tmp_path, capsys):
    """With --max-drop just below the measured loss the export refuses and leaves nothing; just above, it keeps
    the file. The margins bracket the real delta of this deterministic quantization (negative when INT8 gains)."""
    first = tmp_path / "a.onnx"
    assert main(["export", str(run), "--int8", "--force", "--max-drop=-1", "--calib-images", "40",
                 "--out", str(first)]) == 0
    spec = json.loads(first.with_suffix(".json").read_text())["validation"]
    drop = spec["macro_f1_fp32"] - spec["macro_f1_int8"]
    capsys.readouterr()
    before = file_snapshot(tmp_path)
    refused = tmp_path / "b.onnx"
    assert main(["export", str(run), "--int8", f"--max-drop={drop - 1e-9!r}", "--calib-images", "40",
                 "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error: int8 macro F1 delta:") and "nothing was written" in err, err
    assert file_snapshot(tmp_path) == before and not refused.exists() and not refused.with_suffix(".json").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert main(["export", str(run), "--int8", f"--max-drop={drop + 1e-9!r}", "--calib-images", "40",
                 "--out", str(refused)]) == 0
    assert refused.is_file() and not json.loads(refused.with_suffix(".json").read_text())["validation"]["forced"]


def test_int8_flags_checked(run, capsys):
    assert main(["export", str(run), "--int8", "--format", "torchscript"]) == 2
    assert "--int8 quantizes an ONNX model" in capsys.readouterr().err
    assert main(["export", str(run), "--force"]) == 2
    assert "--force belongs to --int8" in capsys.readouterr().err
