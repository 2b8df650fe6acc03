"""maskcls export writes only its own files, and only a model that agrees with PyTorch (issues 21 and 26).

``--out RUN/run.onnx`` once replaced the run's ``run.json`` (``X.json`` beside ``X.onnx`` was written
without a look); ``--out /dev/null`` wrote ``/dev/null.onnx``; and an export that disagreed with
PyTorch was written anyway, its difference only recorded. Each case here runs the command and
checks the answer and that no file but the export's own changed.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import file_snapshot, snapshot
from helpers import tiny, train
from maskcls.cli import main


@pytest.fixture(scope="module")
def run(prepared_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run"
    train(prepared_dir, out, tiny(train={"epochs": 1, "mixed_precision": "no"}))
    return out


def _refused(capsys, argv: list[str], reason: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error:") and reason in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("target,fmt", [("run.onnx", "onnx"), ("summary", "onnx"), ("fold0/best.pt", "torchscript"),
                                        ("fold0/oof.onnx", "onnx")])
@pytest.mark.slow
def test_export_never_writes_into_the_runs_own_files(run, capsys, target, fmt):
    before = snapshot(run)
    _refused(capsys, ["export", str(run), "--format", fmt, "--out", str(run / target)],
             f"lies in the run directory {run}")
    assert snapshot(run) == before  # run.json, summary.json, the checkpoints: untouched, nothing added


@pytest.mark.slow
def test_export_never_overwrites_files_it_did_not_write(run, tmp_path, capsys):
    notes = tmp_path / "model.json"
    notes.write_text('{"mine": true}')
    _refused(capsys, ["export", str(run), "--out", str(tmp_path / "model.onnx")],
             f"{notes} exists and was not written by maskcls export")
    assert notes.read_text() == '{"mine": true}' and not (tmp_path / "model.onnx").exists()
    theirs = tmp_path / "theirs.onnx"
    theirs.write_bytes(b"someone else's model")
    _refused(capsys, ["export", str(run), "--out", str(theirs)], "no export JSON theirs.json beside it")
    assert theirs.read_bytes() == b"someone else's model" and not (tmp_path / "theirs.json").exists()
    # an earlier export at the same place is the export's own: replaced
    out = tmp_path / "mine.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 0
    first = out.read_bytes()
    assert main(["export", str(run), "--out", str(out)]) == 0
    spec = json.loads(out.with_suffix(".json").read_text())
    assert out.read_bytes() == first and spec["written_by"] == "maskcls export"
    assert spec["check"]["max_abs_diff_vs_pytorch"] <= spec["check"]["tolerance"] == 1e-4
    capsys.readouterr()


@pytest.mark.slow
def test_export_refuses_devices_pipes_and_links(run, tmp_path, capsys):
    _refused(capsys, ["export", str(run), "--out", "/dev/null"], "is not a regular file")
    assert not Path("/dev/null.onnx").exists() and not Path("/dev/null.json").exists()
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    _refused(capsys, ["export", str(run), "--out", str(fifo)], "is not a regular file")
    real = tmp_path / "elsewhere.onnx"
    real.write_bytes(b"x")
    (tmp_path / "link.onnx").symlink_to(real)
    _refused(capsys, ["export", str(run), "--out", str(tmp_path / "link.onnx")], "is a link")
    assert real.read_bytes() == b"x"
    plain = tmp_path / "plainfile"
    plain.write_text("mine")
    _refused(capsys, ["export", str(run), "--out", str(plain)], "exists and is not a folder")
    assert not (tmp_path / "plainfile.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_that_disagrees_with_pytorch_fails_and_leaves_no_file(run, tmp_path, capsys, monkeypatch, fmt):
    import maskcls.infer.export as export
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.ts")
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    earlier = file_snapshot(tmp_path)
    real = export.run_exported
    monkeypatch.setattr(export, "run_exported", lambda path, x, fmt=None: real(path, x, fmt=fmt) + 3e-4)
    _refused(capsys, ["export", str(run), "--format", fmt, "--out", str(out)],
             "differs from the PyTorch model by 3.00e-04 on a check batch (more than 1e-04)")
    assert file_snapshot(tmp_path) == earlier  # the earlier export stays, no temporary file is left
    fresh = tmp_path / f"fresh.{out.suffix[1:]}"
    _refused(capsys, ["export", str(run), "--format", fmt, "--out", str(fresh)], "nothing was written")
    assert not fresh.exists() and not fresh.with_suffix(".json").exists()
    monkeypatch.setattr(export, "run_exported", lambda path, x, fmt=None: real(path, x, fmt=fmt) + 5e-5)
    assert main(["export", str(run), "--format", fmt, "--out", str(fresh)]) == 0  # within the tolerance
    assert np.isclose(json.loads(fresh.with_suffix(".json").read_text())["check"]["max_abs_diff_vs_pytorch"], 5e-5,
                      rtol=0.01)


# ----------------------------------------------------------------------------- model files (issue 39)
def _model_cases():
    from bad_inputs import cases, no_file
    return [c for c in cases(roles=("model",)) if c.make is not no_file]


@pytest.mark.slow
@pytest.mark.parametrize("case", _model_cases(), ids=lambda c: c.name)
def test_exported_file_not_of_the_run_is_refused_before_it_answers(case, run, synth_root, tmp_path, capsys):
    """An exported file that is not what it claims (another run's, another input size, logits, garbage, no JSON) is
    refused by predict and by serve before it answers: one line naming it and the export that makes it again."""
    pytest.importorskip("fastapi")
    import shutil

    from maskcls.infer.export import export_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # each case damages its own copy of the run
    export_run(copy)  # RUN/export/model.onnx and model.json, as a user had them
    damaged = case.make(copy)
    int8 = "int8" in damaged
    model = copy / "export" / ("model.int8.onnx" if int8 else "model.onnx")
    before = snapshot(copy)
    image = sorted((synth_root / "eval" / "images").iterdir())[0]
    assert main(["predict", str(copy), str(image), "--backend", "onnx-int8" if int8 else "onnx"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("maskcls: error:") and len(err.strip().splitlines()) == 1 and not captured.out, err
    assert str(model) in err and re.search(case.reason, err) and f"maskcls export {copy}" in err, err
    assert snapshot(copy) == before  # nothing written, nothing exported over the user's file
    assert main(["serve", str(copy), "--int8"] if int8 else ["serve", "--model", str(model)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error:") and len(err.strip().splitlines()) == 1, err
    assert model.name in err or model.with_suffix(".json").name in err, err
    assert snapshot(copy) == before


def test_damaged_torchscript_file_is_one_line_naming_it(tmp_path):
    from maskcls.errors import CheckpointError
    from maskcls.infer.export import run_exported
    bad = tmp_path / "model.ts"
    bad.write_bytes(b"not a zip archive" * 50)
    message = rf"{re.escape(str(bad))} is not a readable TorchScript model"
    with pytest.warns(FutureWarning), pytest.raises(CheckpointError, match=message):
        run_exported(bad, np.zeros((1, 3, 8, 8), np.uint8))
