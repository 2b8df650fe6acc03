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


@pytest.mark.slow
def test_int8_export_writes_model_json_and_delta(run, capsys):
    """The default path RUN/export/model.int8.onnx (what `serve --int8` loads) is a quantized graph whose
    JSON records precision, calibration and both F1s, and the printed delta is their difference."""
    assert main(["export", str(run), "--int8", "--force", "--calib-images", "40"]) == 0
    out = capsys.readouterr().out
    delta = _delta(out)
    model = run / "export" / "model.int8.onnx"
    spec = json.loads(model.with_suffix(".json").read_text())
    assert spec["precision"] == "int8" and spec["written_by"] == "maskcls export"
    assert spec["calibration"]["images"] == 40 and spec["calibration"]["method"] == "entropy"
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_int8_flags_checked(run, capsys):
    assert main(["export", str(run), "--int8", "--format", "torchscript"]) == 2
    assert "--int8 quantizes an ONNX model" in capsys.readouterr().err
    assert main(["export", str(run), "--force"]) == 2
    assert "--force belongs to --int8" in capsys.readouterr().err


def _graph(branches: int):
    """image → [Conv → Relu → Conv → Add(residual) → Conv → GlobalAveragePool → Flatten → Gemm] per branch → Mean."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, outs = [], [], []
    rng = np.random.default_rng(0)

    def w(name, *shape):
        inits.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
        return name
    for b in range(branches):
        p = f"b{b}_"
        nodes += [helper.make_node("Conv", ["image", w(p + "w1", 4, 3, 3, 3)], [p + "c1"], name=p + "conv1"),
                  helper.make_node("Relu", [p + "c1"], [p + "r1"], name=p + "relu1"),
                  helper.make_node("Conv", [p + "r1", w(p + "w2", 4, 4, 1, 1)], [p + "c2"], name=p + "conv2"),
                  helper.make_node("Add", [p + "c2", p + "r1"], [p + "a"], name=p + "add"),
                  helper.make_node("Conv", [p + "a", w(p + "w3", 8, 4, 1, 1)], [p + "c3"], name=p + "conv3"),
                  helper.make_node("GlobalAveragePool", [p + "c3"], [p + "g"], name=p + "pool"),
                  helper.make_node("Flatten", [p + "g"], [p + "f"], name=p + "flatten"),
                  helper.make_node("Gemm", [p + "f", w(p + "fc", 2, 8)], [p + "o"], name=p + "fc", transB=1)]
        outs.append(p + "o")
    nodes.append(helper.make_node("Sum", outs, ["probs"], name="sum"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])], inits)
    return onnx.helper.make_model(g)


def test_fp32_nodes_keep_the_first_and_last_layers_of_every_branch():
    """Layers count along each fold's branch: --fp32-first 1 keeps each stem conv (and its activation) fp32,
    --fp32-last 1 the conv before each classifier, what follows and the non-conv nodes that lead only to it;
    the head (classifier onwards) always."""
    from maskcls.infer.quantize import fp32_nodes, tail_nodes
    m = _graph(branches=2)
    assert set(tail_nodes(m)) == {"b0_fc", "b1_fc", "sum"}
    assert set(fp32_nodes(m)) == set(tail_nodes(m))
    head = {"b0_fc", "b1_fc", "sum"}
    assert set(fp32_nodes(m, first=1)) == head | {"b0_conv1", "b0_relu1", "b1_conv1", "b1_relu1"}
    assert set(fp32_nodes(m, first=2)) == head | {f"b{b}_{n}" for b in (0, 1) for n in ("conv1", "relu1", "conv2",
                                                                                          "add")}
    # the residual Add feeds only the fp32 conv3, so it stays fp32 too
    assert set(fp32_nodes(m, last=1)) == head | {f"b{b}_{n}" for b in (0, 1) for n in ("add", "conv3", "pool",
                                                                                          "flatten")}


@pytest.mark.slow
def test_int8_entropy_with_a_short_last_batch_and_fp32_layers(run, tmp_path, capsys):
    """40 calibration images in batches of 16 (the last one short) used to raise ValueError in ONNX Runtime's
    histogram calibrator; now entropy calibrates on them. The JSON records the fp32 layers, and the stem conv of
    the INT8 graph reads fp32 (no DequantizeLinear before it) while later convs read quantized tensors."""
    import onnx

    from maskcls.infer.quantize import DEFAULT_FP32_FIRST
    out = tmp_path / "e.onnx"
    assert main(["export", str(run), "--int8", "--force", "--calib-images", "40", "--calib-method", "entropy",
                 "--out", str(out)]) == 0
    _delta(capsys.readouterr().out)
    spec = json.loads(out.with_suffix(".json").read_text())
    assert spec["calibration"]["method"] == "entropy"
    assert spec["quantization"]["fp32_first_layers"] == DEFAULT_FP32_FIRST >= 1
    assert spec["quantization"]["fp32_last_layers"] == 0
    graph = onnx.load(str(out)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert made_by.get(convs[0].input[0]) != "DequantizeLinear"
    assert made_by.get(convs[-1].input[0]) == "DequantizeLinear"


# ----------------------------------------------------------------------------- issue 39
@pytest.mark.slow
def test_int8_export_that_would_quantize_nothing_is_refused(run, tmp_path, capsys):
    """--fp32-first beyond the model's depth keeps every layer fp32: refused before calibrating, and no file
    labelled INT8 is written (it used to be, with nothing quantized)."""
    out = tmp_path / "none.onnx"
    assert main(["export", str(run), "--int8", "--fp32-first", "500", "--calib-images", "10", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error: --fp32-first 500 --fp32-last 0 keep all ") and len(err.splitlines()) == 1
    assert "nothing would be quantized, so no INT8 file was written" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_predict_int8_refusal_names_predicts_own_fixes(run, synth_root, tmp_path, capsys, monkeypatch):
    """predict --backend onnx-int8 makes a missing INT8 model under the default --max-drop; refused, its line gives
    predict's fix and the calibrations not tried, not export's --force (predict has none) nor the method it used."""
    import shutil

    import maskcls.infer.quantize as quantize
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("export"))
    monkeypatch.setattr(quantize, "score_models", lambda paths, loader, k: [0.9, 0.5])  # INT8 loses 0.4
    image = sorted((synth_root / "eval" / "images").iterdir())[0]
    assert main(["predict", str(copy), str(image), "--backend", "onnx-int8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error: --backend onnx-int8 made the INT8 model now, and it was refused: int8 "
                          "macro F1 delta: -0.4000") and len(err.splitlines()) == 1, err
    assert "predict with --backend onnx (fp32)" in err and "--int8 --calib-method minmax`" in err, err
    assert "--calib-method entropy" not in err and "keep it with --force" not in err, err
    assert not (copy / "export" / "model.int8.onnx").exists()
