"""maskcls serve: the API, every refused input, limits, micro-batching, loading, shutdown, real runs.

Most tests serve a stand-in model (a fixed function of each image's pixels, cheap and
deterministic) so they exercise the serving layer in seconds; the tests marked slow serve
real trained runs and compare with ``maskcls predict``.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from maskcls.cli import main  # noqa: E402
from maskcls.data.imageio import read_pil  # noqa: E402
from maskcls.data.preprocessing import Preprocessing  # noqa: E402
from maskcls.data.transforms import create_transform  # noqa: E402
from maskcls.serve.app import ServeOptions, create_app  # noqa: E402
from maskcls.serve.batcher import MicroBatcher  # noqa: E402
from maskcls.serve.limits import Limits  # noqa: E402
from maskcls.serve.model import ServedModel  # noqa: E402
from maskcls.task import Task  # noqa: E402
from serving import SIZE, W, files, photo, served, stand_in, wait_ready  # noqa: E402, F401


class Recorder:
    """The stand-in model, recording batch sizes; optionally slow or failing once armed.

    With ``gate``, the first armed batch waits until the test opens the gate: requests then queue
    up behind it however slow the machine is, instead of having to arrive within a time window.
    """

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.batches: list[int] = []
        self.delay, self.armed, self.fail, self.gate = delay, False, False, gate
        self.entered = threading.Event()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.armed:
            self.batches.append(len(x))
            self.entered.set()
            if self.gate is not None and len(self.batches) == 1:
                assert self.gate.wait(60), "the test never opened the gate"
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("model exploded")
        return stand_in(x)


def model_of(predict, tmp_path: Path, task: Task | None = None) -> ServedModel:
    task = task or Task.competition()
    pp = Preprocessing(SIZE, [0.5] * 3, [0.5] * 3, False, "fast")
    return ServedModel(tmp_path, [0], task, pp, predict, "stand-in", info={"run": "stand-in", "folds": [0]})


def app_of(tmp_path, predict=stand_in, task=None, **options):
    limits = options.pop("limits", Limits())
    options = ServeOptions(limits=limits, **options)
    return create_app(tmp_path, options, loader=lambda: model_of(predict, tmp_path, task))








def expected(data: bytes) -> np.ndarray:
    """What the server must answer: maskcls' decoder, the evaluation transform, the model."""
    x = create_transform(is_training=False, image_size=SIZE)(read_pil(io.BytesIO(data))).numpy()
    return stand_in(x[None])[0]




# ----------------------------------------------------------------------------------- the API

def test_page_health_and_model(tmp_path):
    with served(app_of(tmp_path)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["queued_images"] == 0
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        # self-contained: nothing fetched from elsewhere, and the CSP forbids it anyway
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        for needle in ('src="http', "href=\"http", "//cdn", "@import", "url(http"):
            assert needle not in page.text
        info = c.get("/v1/model").json()
        assert info["serving"]["max_batch"] == 16 and info["serving"]["limits"]["max_images"] == 16
        assert c.get("/docs").status_code == 404  # swagger UI would load from a CDN


def test_predict_answers_equal_the_pipeline(tmp_path):
    imgs = {"a.jpg": photo(seed=1), "b.png": photo(seed=2, fmt="PNG", mode="RGBA"),
            "c.jpg": photo(seed=3, w=60, h=200)}
    task = Task.competition()
    with served(app_of(tmp_path)) as c:
        r = c.post("/v1/predict", files=files(*imgs.items()))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["file"] for x in results] == list(imgs)
        for res, data in zip(results, imgs.values()):
            p = expected(data)
            assert res["class_id"] == int(p.argmax()) and res["class_name"] == task.class_names[res["class_id"]]
            assert abs(res["confidence"] - p.max()) < 1e-5
            assert np.allclose(list(res["probabilities"].values()), p, atol=1e-5)
            # attributes spell the class; their probabilities are the marginals
            assert res["label"] == " / ".join(a["value"] for a in res["attributes"].values())
            marg = p.reshape(3, 2, 3)
            assert np.allclose(list(res["attributes"]["mask"]["probabilities"].values()), marg.sum((1, 2)),
                               atol=1e-5)
            assert np.allclose(list(res["attributes"]["age"]["probabilities"].values()), marg.sum((0, 1)), atol=1e-5)
            assert res["face"] is None
        assert results[2]["image"] == {"width": 60, "height": 200}
        # the same photo as the raw body (curl --data-binary) gets the same answer
        raw = c.post("/v1/predict?name=raw.jpg", content=imgs["a.jpg"], headers={"content-type": "image/jpeg"})
        assert raw.json()["results"][0]["file"] == "raw.jpg"
        assert raw.json()["results"][0]["probabilities"] == results[0]["probabilities"]


def test_fast_jpeg_decode_gives_maskcls_pixels():
    from maskcls.serve.images import decode, read_header
    plain, rotated, grey = photo(seed=7), photo(seed=8, exif_orientation=6), photo(seed=9, mode="L")
    assert read_header(plain, "p", 10**6)[3] and read_header(grey, "g", 10**6)[3]
    assert not read_header(rotated, "r", 10**6)[3] and not read_header(photo(fmt="PNG"), "n", 10**6)[3]
    for data in (plain, grey):
        assert np.array_equal(decode(data, fast=True), read_pil(io.BytesIO(data)))
    with pytest.raises(Exception, match="truncated|broken|cannot decode"):
        decode(_truncated(), fast=True)  # a damaged JPEG is not silently grey-filled


def test_exif_rotation_applied_before_the_model(tmp_path):
    rotated = photo(w=120, h=90, seed=4, exif_orientation=6)  # stored 120×90, shown 90×120
    with served(app_of(tmp_path)) as c:
        res = c.post("/v1/predict", files=files(("r.jpg", rotated))).json()["results"][0]
    assert res["image"] == {"width": 90, "height": 120}
    assert np.allclose(list(res["probabilities"].values()), expected(rotated), atol=1e-5)


def test_plain_csv_task_reports_the_label(tmp_path):
    task = Task.flat(["cat", "dog", "owl"])
    with served(app_of(tmp_path, predict=lambda x: stand_in(x)[:, :3] / stand_in(x)[:, :3].sum(1, keepdims=True),
                       task=task)) as c:
        res = c.post("/v1/predict", files=files(("a.jpg", photo()))).json()["results"][0]
    assert list(res["attributes"]) == ["label"]
    assert res["attributes"]["label"]["value"] == res["class_name"] == res["label"]
    assert set(res["attributes"]["label"]["probabilities"]) == {"cat", "dog", "owl"}


# ----------------------------------------------------------------------------------- refused inputs

def _truncated() -> bytes:
    data = photo(w=300, h=300, seed=5)
    return data[: len(data) // 2]


def _bomb(w=8000, h=8000) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (w, h)).save(buf, format="PNG")  # 64 Mpx in a few kB
    return buf.getvalue()


# (case, request kwargs builder, limits, status, error code, file named in the error)
BAD = [
    ("not an image", lambda: {"files": files(("notes.txt", b"hello, world"))}, {}, 415, "not_an_image", "notes.txt"),
    ("truncated jpeg", lambda: {"files": files(("half.jpg", _truncated()))}, {}, 422, "corrupt_image", "half.jpg"),
    ("empty file", lambda: {"files": files(("empty.jpg", b""))}, {}, 400, "empty_file", "empty.jpg"),
    ("decompression bomb", lambda: {"files": files(("bomb.png", _bomb()))}, {}, 413, "too_many_pixels", "bomb.png"),
    ("over max_pixels", lambda: {"files": files(("big.jpg", photo(w=400, h=300)))}, {"max_pixels": 100_000},
     413, "too_many_pixels", "big.jpg"),
    ("too many images", lambda: {"files": files(*[(f"{i}.jpg", photo(seed=i)) for i in range(3)])},
     {"max_images": 2}, 413, "too_many_images", None),
    ("body too large", lambda: {"files": files(("large.jpg", photo(w=600, h=600, seed=6)))},
     {"max_upload_bytes": 4096}, 413, "upload_too_large", None),
    ("chunked body too large", lambda: {"content": iter([b"x" * 3000] * 3),
                                        "headers": {"content-type": "image/jpeg"}},
     {"max_upload_bytes": 4096}, 413, "upload_too_large", None),
    ("no file", lambda: {"data": {"note": "hi"}, "files": [("other", ("", b"", "text/plain"))]}, {}, 400, "no_image",
     None),
    ("json body", lambda: {"json": {"image": "x"}}, {}, 415, "unsupported_content_type", None),
    ("multipart without boundary", lambda: {"content": b"whatever", "headers": {
        "content-type": "multipart/form-data"}}, {}, 400, "bad_multipart", None),
    ("malformed multipart", lambda: {"content": b"--x\r\nBadHeader\r\n\r\nabc\r\n--x--\r\n", "headers": {
        "content-type": "multipart/form-data; boundary=x"}}, {}, 400, "bad_multipart", None),
]


@pytest.mark.parametrize("case,build,limits,status,code,file", BAD, ids=[b[0] for b in BAD])
def test_bad_upload_gets_json_error_and_server_keeps_serving(tmp_path, case, build, limits, status, code, file):
    with served(app_of(tmp_path, limits=Limits(**{"max_upload_bytes": 20 << 20, **limits}))) as c:
        r = c.post("/v1/predict", **build())
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"]
        if file:
            assert err["file"] == file and err["message"].startswith(file)
        ok = c.post("/v1/predict", files=files(("fine.jpg", photo(w=40, h=40))))
        assert ok.status_code == 200 and ok.json()["results"][0]["file"] == "fine.jpg"
        assert c.get("/readyz").json()["queued_images"] == 0


def test_one_bad_file_among_good_ones_names_only_it(tmp_path):
    with served(app_of(tmp_path)) as c:
        r = c.post("/v1/predict", files=files(("ok.jpg", photo()), ("../../etc/bad.png", b"\x89PNG\r\n\x1a\nxx"),
                                              ("ok2.jpg", photo(seed=2))))
    assert r.status_code in (415, 422)
    assert r.json()["error"]["file"] == "bad.png"  # folder parts of a client's file name are dropped


def test_token_required_on_api_not_on_probes(tmp_path):
    with served(app_of(tmp_path, token="s3cret-token")) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "s3cret-token"}):
            r = c.post("/v1/predict", files=files(("a.jpg", photo())), headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "unauthorized"
            assert c.get("/v1/model", headers=headers).status_code == 401
        good = {"Authorization": "Bearer s3cret-token"}
        assert c.post("/v1/predict", files=files(("a.jpg", photo())), headers=good).status_code == 200
        assert c.get("/v1/model", headers=good).status_code == 200


# ----------------------------------------------------------------------------------- load

async def _concurrent_posts(app, n: int, images_per_request: int = 1, gate: threading.Event | None = None):
    """``n`` concurrent POSTs through the ASGI app (its lifespan running); returns the responses.

    With ``gate`` (the Recorder's), the gate opens once all ``n`` requests' images are admitted."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for _ in range(200):
                if (await c.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            app.state.serving.model.predict.armed = True
            reqs = [asyncio.ensure_future(c.post("/v1/predict", files=files(*[
                (f"{i}-{j}.jpg", photo(seed=i * 10 + j)) for j in range(images_per_request)]))) for i in range(n)]
            if gate is not None:
                for _ in range(1200):
                    if (await c.get("/readyz")).json()["queued_images"] >= n * images_per_request:
                        break
                    await asyncio.sleep(0.05)
                gate.set()
            responses = await asyncio.gather(*reqs)
            after = await c.post("/v1/predict", files=files(("after.jpg", photo())))
            state = (await c.get("/readyz")).json()
    return responses, after, state


def test_micro_batching_gathers_concurrent_requests(tmp_path):
    gate = threading.Event()  # the first batch holds the model until all 12 are queued: no timing luck needed
    rec = Recorder(gate=gate)
    app = app_of(tmp_path, predict=rec, max_batch=8, max_wait_ms=300)
    responses, after, state = asyncio.run(_concurrent_posts(app, 12, gate=gate))
    assert all(r.status_code == 200 for r in responses)
    # 12 + the one after; those queued behind the first batch go in batches of up to 8: at most 4 batches
    assert 1 < max(rec.batches) <= 8 and sum(rec.batches) == 13 and len(rec.batches) <= 4
    for i, r in enumerate(responses):  # an image's answer does not depend on the batch it ran in
        res = r.json()["results"][0]
        assert np.allclose(list(res["probabilities"].values()), expected(photo(seed=i * 10)), atol=1e-5)
    assert state["queued_images"] == 0


@pytest.mark.timeout(180)
def test_lone_request_does_not_wait_for_a_batch(tmp_path):
    # A batch window of 10 minutes: a lone request that waited for partners would outlast the test's
    # 3-minute limit, on however slow a machine; one that goes at once is answered.
    with served(app_of(tmp_path, max_batch=16, max_wait_ms=600_000)) as c:
        assert c.post("/v1/predict", files=files(("a.jpg", photo()))).status_code == 200


def test_max_batch_one_serves_one_at_a_time(tmp_path):
    rec = Recorder()
    responses, _, _ = asyncio.run(_concurrent_posts(app_of(tmp_path, predict=rec, max_batch=1, max_wait_ms=0), 6))
    assert all(r.status_code == 200 for r in responses) and rec.batches == [1] * 7


def test_overload_answers_503_with_retry_after_not_a_longer_queue(tmp_path):
    rec = Recorder(delay=0.3)
    app = app_of(tmp_path, predict=rec, max_batch=2, max_wait_ms=0, limits=Limits(max_images=2, max_queue=4))
    responses, after, state = asyncio.run(_concurrent_posts(app, 8, images_per_request=2))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
    assert max(rec.batches) <= 2
    assert after.status_code == 200 and state["queued_images"] == 0 and state["refused_requests"] >= 1


def test_model_failure_is_a_500_and_the_next_request_works(tmp_path):
    rec = Recorder()
    with served(app_of(tmp_path, predict=rec), raise_server_exceptions=False) as c:
        rec.armed, rec.fail = True, True
        r = c.post("/v1/predict", files=files(("a.jpg", photo())))
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
        rec.fail = False
        assert c.post("/v1/predict", files=files(("a.jpg", photo()))).status_code == 200


def test_batcher_deadline_and_order():
    async def go():
        seen = []

        def predict(x):
            seen.append(len(x))
            return x.reshape(len(x), -1)[:, :1].astype(np.float32)
        b = MicroBatcher(predict, max_batch=2, max_wait_ms=5)
        b.start()
        lone = await b.run([np.full((3, 2, 2), 7, np.uint8)])  # leaves on its deadline, batch not full
        many = await asyncio.gather(*(b.run([np.full((3, 2, 2), i, np.uint8)]) for i in range(5)))
        await b.close()
        return seen, lone, many
    seen, lone, many = asyncio.run(go())
    assert lone[0, 0] == 7 and [m[0, 0] for m in many] == [0, 1, 2, 3, 4]
    assert seen[0] == 1 and max(seen) == 2 and sum(seen) == 6


# ----------------------------------------------------------------------------------- loading

def test_readiness_waits_for_the_model_and_reports_a_failure(tmp_path):
    release = threading.Event()

    def slow_loader():
        release.wait(10)
        return model_of(stand_in, tmp_path)
    app = create_app(tmp_path, ServeOptions(), loader=slow_loader)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        p = c.post("/v1/predict", files=files(("a.jpg", photo())))
        assert p.status_code == 503 and p.headers["retry-after"] == "2" and p.json()["error"]["code"] == "loading"
        release.set()
        wait_ready(c)

    failures = []

    def broken_loader():
        raise FileNotFoundError("run directory /nowhere not found")
    app = create_app(tmp_path, ServeOptions(), loader=broken_loader, on_load_error=failures.append)
    with TestClient(app) as c:
        for _ in range(100):
            if c.get("/readyz").json()["status"] == "failed":
                break
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503 and "/nowhere" in r.json()["error"]
        assert c.post("/v1/predict", files=files(("a.jpg", photo()))).json()["error"]["code"] == "model_failed"
    assert len(failures) == 1 and isinstance(failures[0], FileNotFoundError)

    def wrong_shape(x):  # a model that cannot even run its warm-up batch
        raise ValueError("expected 64x64 input")
    app = create_app(tmp_path, ServeOptions(), loader=lambda: model_of(wrong_shape, tmp_path),
                     on_load_error=failures.append)
    with TestClient(app) as c:
        for _ in range(100):
            if c.get("/readyz").json()["status"] == "failed":
                break
            time.sleep(0.05)
        assert "64x64" in c.get("/readyz").json()["error"]
    assert len(failures) == 2


def _post_raw(port: int, data: bytes, out: dict) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/predict?name=slow.jpg", body=data, headers={"Content-Type": "image/jpeg"})
    r = conn.getresponse()
    out["status"], out["body"] = r.status, json.loads(r.read())
    conn.close()


def test_graceful_shutdown_finishes_in_flight_requests(tmp_path):
    import uvicorn

    from maskcls.serve.server import bind
    rec = Recorder(delay=1.0)
    app = app_of(tmp_path, predict=rec, max_batch=1, max_wait_ms=0)
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=20))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                break
        time.sleep(0.05)
    rec.armed = True
    out = {}
    client = threading.Thread(target=_post_raw, args=(port, photo(), out))
    client.start()
    assert rec.entered.wait(10), "the request never reached the model"
    server.should_exit = True  # what SIGINT / SIGTERM do
    client.join(30)
    thread.join(30)
    assert out["status"] == 200 and out["body"]["results"][0]["file"] == "slow.jpg"
    assert not thread.is_alive()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/healthz")


def test_bound_socket_serves_connections_without_nagle_delay():
    """Accepted connections get TCP_NODELAY: asyncio sets it only on sockets created as IPPROTO_TCP, and
    without it a response's header and body writes waited ~40 ms for the client's delayed ACK."""
    from maskcls.serve.server import bind
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen = []

    async def main():
        async def on_conn(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
        server = await asyncio.start_server(on_conn, sock=sock)
        async with server:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            w.close()
    asyncio.run(main())
    assert seen and seen[0] != 0


SLOW_LOAD = """
import os, sys, time
from maskcls.serve.app import ServeOptions
from maskcls.serve.server import bind, serve
sock = bind("127.0.0.1", 0)
print("listening", flush=True)
stopped = serve(sys.argv[1], sock, ServeOptions(), access_log=False, loader=lambda: time.sleep(120))
print(f"serve returned {stopped}", flush=True)
if stopped:
    os._exit(0)  # as `maskcls serve` does: the load thread still runs
"""


def test_stop_while_the_model_loads_ends_the_process_at_once(tmp_path):
    """Ctrl+C during loading: serve() returns at once saying so (no wait for the load), and the program
    ends with os._exit as the command does (no abort from native threads under finalisation)."""
    import signal
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", SLOW_LOAD, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "listening"
        for line in proc.stdout:  # uvicorn's handlers are installed once startup is complete
            if "startup complete" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert "serve returned True" in out  # at once, not after the 120 s load


# ----------------------------------------------------------------------------------- the command

def _fake_run(tmp_path: Path) -> Path:
    """A run's files as the pre-listen checks read them (serve's default --folds best reads summary.json)."""
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "best.pt").write_bytes(b"")
    (run / "summary.json").write_text('{"folds": {"0": {"best_f1": 0.5}}}')
    return run


@pytest.mark.parametrize("args,message", [
    (["--host", "0.0.0.0"], "token"),
    (["--host", "0.0.0.0", "--token", "short"], "at least 8"),
    (["--max-queue", "4", "--max-images", "8"], "--max-queue"),
    (["--max-pixels", str(10**9)], "--max-pixels"),
    (["--folds", "3"], "fold(s) [3]"),
])
def test_cli_refuses_before_listening(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.delenv("MASKCLS_SERVE_TOKEN", raising=False)
    try:
        code = main(["serve", str(_fake_run(tmp_path)), *args])
    except SystemExit as e:  # a flag's range is argparse's usage error
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    # one line: the library's check ("maskcls: error:") or the flag's range ("maskcls serve: error:")
    assert err.startswith(("maskcls: error:", "maskcls serve: error:")) and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_port_in_use_and_missing_run(tmp_path, capsys):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert main(["serve", str(_fake_run(tmp_path)), "--port", str(port)]) == 2
        assert "choose another --port" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def real_run(prepared_dir, tmp_path_factory) -> Path:
    from helpers import tiny, train
    out = tmp_path_factory.mktemp("serve") / "run"
    train(prepared_dir, out, tiny(train={"epochs": 1}), folds=(0, 1))
    return out


@pytest.mark.slow
@pytest.mark.precision
def test_real_run_onnx_equals_predict_and_torch(real_run, synth_root):
    from maskcls.infer.predict import predict_images
    paths = sorted((synth_root / "eval" / "images").iterdir())[:4]
    # serve answers from one view of each photo (latency); predict's default follows the run's train.valid_tta
    want = predict_images(real_run, [str(p) for p in paths], folds="all", tta="none")
    answers = {}
    for backend in ("onnx", "torch"):
        app = create_app(real_run, ServeOptions(folds="all", backend=backend))
        with served(app) as c:
            info = c.get("/v1/model").json()
            r = c.post("/v1/predict", files=files(*[(p.name, p.read_bytes()) for p in paths]))
        assert r.status_code == 200 and info["backend"]["name"] == backend and info["folds"] == [0, 1]
        assert info["task"]["kind"] == "mask_gender_age" and info["preprocessing"]["image_size"] == 64
        assert set(info["validation"]["macro_f1_per_fold"]) == {"0", "1"}
        answers[backend] = r.json()["results"]
        for res, w in zip(answers[backend], want):
            assert res["class_id"] == w["class_id"] and abs(res["confidence"] - w["confidence"]) < 1e-4
    for a, b in zip(answers["onnx"], answers["torch"]):
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
    assert info["backend"]["requested"] == "torch"


@pytest.mark.slow
@pytest.mark.precision
def test_onnx_cached_in_run_and_rebuilt_when_damaged(real_run):
    onnx = real_run / "export" / "serve-folds0.onnx"
    onnx.unlink(missing_ok=True)
    sources = []
    for damage in (False, False, True):
        if damage:
            onnx.write_bytes(b"not an onnx graph")
        with served(create_app(real_run, ServeOptions(folds="0"))) as c:
            b = c.get("/v1/model").json()["backend"]
        assert b["name"] == "onnx" and b["max_abs_diff_vs_torch"] <= 1e-4
        sources.append(b["source"])
    assert sources == ["exported", "cached", "exported"] and onnx.is_file()


@pytest.mark.slow
@pytest.mark.precision
def test_face_crop_run_returns_the_face_box(prepared_dir, tmp_path):
    pytest.importorskip("facenet_pytorch")
    pytest.importorskip("skimage")
    import shutil

    from helpers import tiny, train
    from maskcls.bench.faces import astronaut_photo, iou
    from maskcls.infer.predict import predict_images
    from maskcls.prep.faces import build_face_crops
    prep = tmp_path / "prep"
    shutil.copytree(prepared_dir, prep)
    build_face_crops(prep, size=96, progress=False)
    run = Path(train(prep, tmp_path / "r", tiny(data={"faces": True}, train={"epochs": 1}))["run_dir"])
    img, truth = astronaut_photo(np.random.default_rng(2))
    path = tmp_path / "astronaut.jpg"
    Image.fromarray(img).save(path, quality=92)
    with served(create_app(run, ServeOptions(folds="0"))) as c:
        assert c.get("/v1/model").json()["preprocessing"]["face_settings"]["size"] == 96
        res = c.post("/v1/predict", files=files(("astronaut.jpg", path.read_bytes()))).json()["results"][0]
    assert res["face"]["detected"] and iou(res["face"]["box"], truth) > 0.3
    want = predict_images(run, [str(path)], folds="0")[0]
    assert res["class_id"] == want["class_id"] and abs(res["confidence"] - want["confidence"]) < 1e-4


# `maskcls bench serve` (maskcls against the peer server, side by side): tests/test_bench_serve_peer.py
