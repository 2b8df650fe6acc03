"""maskcls serve on CPU streams and exported files: --streams, --threads, --model, --int8.

The batcher runs up to ``streams`` model calls at once; a real tiny run served on two ONNX
Runtime sessions answers exactly what one session answers; an exported file (copied out of its
run, or at RUN/export/model.int8.onnx) is served as it is, and a missing one is one clear line.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

from maskcls.cli import main  # noqa: E402
from maskcls.serve.app import ServeOptions, create_app  # noqa: E402
from maskcls.serve.batcher import MicroBatcher  # noqa: E402
from serving import files, photo, served, stand_in  # noqa: E402


class Overlap:
    """The stand-in model, slow enough that concurrent calls overlap; records the most at once."""

    def __init__(self, delay: float = 0.2):
        self.delay, self.now, self.most, self.calls = delay, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.now, self.calls = self.now + 1, self.calls + 1
            self.most = max(self.most, self.now)
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1
        return stand_in(x)


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_batcher_runs_as_many_batches_at_once_as_streams(streams):
    model = Overlap()
    images = [np.random.default_rng(i).integers(0, 256, (3, 8, 8), dtype=np.uint8) for i in range(12)]

    async def go():
        b = MicroBatcher(model, max_batch=2, max_wait_ms=0, streams=streams)
        b.start()
        out = await asyncio.gather(*(b.run([x]) for x in images))
        await b.close()
        return out, b
    out, b = asyncio.run(go())
    assert model.most == streams  # never more calls than streams, and all of them used
    assert b.images == 12 and b.in_flight == 0
    for x, p in zip(images, out):  # every request got its own image's answer
        np.testing.assert_allclose(p[0], stand_in(x[None])[0], rtol=1e-6)


def test_batcher_reports_a_failing_stream_and_keeps_serving():
    calls = []

    def flaky(x):
        calls.append(len(x))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return stand_in(x)

    async def go():
        b = MicroBatcher(flaky, max_batch=1, max_wait_ms=0, streams=2)
        b.start()
        x = np.zeros((3, 4, 4), np.uint8)
        first = await asyncio.gather(b.run([x]), return_exceptions=True)
        second = await b.run([x])
        await b.close()
        return first[0], second
    first, second = asyncio.run(go())
    assert isinstance(first, RuntimeError) and second.shape == (1, 18)


@pytest.fixture(scope="module")
def tiny_run(prepared_dir, tmp_path_factory) -> Path:
    from helpers import tiny, train
    out = tmp_path_factory.mktemp("streams") / "run"
    train(prepared_dir, out, tiny(train={"epochs": 1, "mixed_precision": "no"}), folds=(0,))
    return out


def _answers(app, photos):
    with served(app) as c:
        info = c.get("/v1/model").json()
        r = c.post("/v1/predict", files=files(*[(f"p{i}.jpg", p) for i, p in enumerate(photos)]))
    assert r.status_code == 200, r.text
    return info, r.json()["results"]


def _probs(results) -> np.ndarray:
    return np.array([list(r["probabilities"].values()) for r in results])


PHOTOS = [photo(120 + 7 * i, 90 + 5 * i, seed=i) for i in range(6)]


@pytest.mark.slow
def test_two_streams_answer_exactly_what_one_stream_answers(tiny_run):
    info1, one = _answers(create_app(tiny_run, ServeOptions(folds="0", streams=1)), PHOTOS)
    info2, two = _answers(create_app(tiny_run, ServeOptions(folds="0", streams=2, threads=1)), PHOTOS)
    assert (info1["backend"]["streams"], info2["backend"]["streams"], info2["backend"]["threads"]) == (1, 2, 1)
    assert info2["serving"]["streams"] == 2 and info2["backend"]["name"] == "onnx"
    assert [r["class_id"] for r in one] == [r["class_id"] for r in two]
    np.testing.assert_allclose(_probs(two), _probs(one), atol=1e-6)


@pytest.mark.slow
def test_an_exported_file_is_served_as_the_run_is(tiny_run, tmp_path):
    """--model: a copy outside the run (described by its JSON alone) answers what the run answers; --int8's
    path is RUN/export/model.int8.onnx and its recorded precision is shown."""
    from maskcls.infer.export import export_run
    _, want = _answers(create_app(tiny_run, ServeOptions(folds="0")), PHOTOS)
    path = export_run(tiny_run, fmt="onnx", folds="0", out=tmp_path / "copy" / "model.onnx")
    info, got = _answers(create_app(None, ServeOptions(model_file=path, streams=2)), PHOTOS)
    assert info["backend"]["file"] == str(path) and info["backend"]["precision"] == "fp32"
    assert info["task"]["kind"] == "mask_gender_age" and info["preprocessing"]["image_size"] == 64
    assert [r["class_id"] for r in got] == [r["class_id"] for r in want]
    np.testing.assert_allclose(_probs(got), _probs(want), atol=1e-5)
    # a stand-in for the INT8 export: the same graph at the --int8 path, its JSON saying int8
    int8 = tiny_run / "export" / "model.int8.onnx"
    shutil.copy(path, int8)
    spec = json.loads(path.with_suffix(".json").read_text())
    int8.with_suffix(".json").write_text(json.dumps({**spec, "precision": "int8"}))
    try:
        from maskcls.serve.exported import int8_path
        info, got = _answers(create_app(tiny_run, ServeOptions(model_file=int8_path(tiny_run))), PHOTOS[:2])
    finally:
        int8.unlink()
        int8.with_suffix(".json").unlink()
    assert info["backend"]["precision"] == "int8" and info["backend"]["name"] == "onnx-int8"
    assert info["backend"]["file"].endswith("model.int8.onnx") and len(got) == 2
    assert info["validation"]["macro_f1_per_fold"]["0"] is not None  # the run's own scores: it lies in the run


def _cli_error(capsys, *args) -> str:
    try:
        code = main(["serve", *args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_missing_int8_or_model_file_is_one_clear_line(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    err = _cli_error(capsys, str(run), "--int8")
    assert "model.int8.onnx not found" in err and f"maskcls export {run} --format onnx --int8" in err
    err = _cli_error(capsys, "--model", str(tmp_path / "nope.onnx"))
    assert "nope.onnx not found" in err and "maskcls export" in err
    (tmp_path / "bare.onnx").write_bytes(b"onnx")  # no JSON beside it: not a maskcls export
    assert "bare.json" in _cli_error(capsys, "--model", str(tmp_path / "bare.onnx"))
    assert "not both" in _cli_error(capsys, str(run), "--int8", "--model", str(tmp_path / "bare.onnx"))
    assert "give the run directory" in _cli_error(capsys)
    assert "--streams" in _cli_error(capsys, str(run), "--streams", "0")
