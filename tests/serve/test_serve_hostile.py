"""maskcls serve against hostile clients (issue 26): real HTTP against a real server on 127.0.0.1.

Slow and stalled connections, many connections from one address, decompression-cheap pixel
floods, foreign Host and Origin headers, and the smaller answers (too many files, 405, HEAD,
a client that leaves mid-body). Every test binds an ephemeral port on loopback, opens a bounded
number of connections and waits a bounded time. The model is a stand-in (a fixed function of the
pixels), so these tests exercise the serving layer only.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import io
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")

from maskcls.cli import main  # noqa: E402
from maskcls.data.preprocessing import Preprocessing  # noqa: E402
from maskcls.serve.app import ServeOptions, create_app  # noqa: E402
from maskcls.serve.connections import ConnectionLimits, client_key  # noqa: E402
from maskcls.serve.limits import Limits, PixelBudget  # noqa: E402
from maskcls.serve.model import ServedModel  # noqa: E402
from maskcls.serve.server import bind, uvicorn_server  # noqa: E402
from maskcls.task import Task  # noqa: E402

SIZE = 32
ATTACKER = "127.0.0.2"  # loopback too (127/8); the per-client limit counts it apart from 127.0.0.1


W = np.random.default_rng(0).normal(size=(3, 18)) * 3


def stand_in(x: np.ndarray) -> np.ndarray:
    """Probabilities from each image's channel means."""
    z = (x.reshape(len(x), 3, -1).mean(2) / 255) @ W
    e = np.exp(z - z.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def photo(w=120, h=90, fmt="JPEG") -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((w, h))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def flat_png(w: int, h: int) -> bytes:
    """A one-colour PNG: a few KB on the wire, w*h pixels once decoded."""
    buf = io.BytesIO()
    Image.new("L", (w, h), 7).save(buf, format="PNG")
    return buf.getvalue()


class Server:
    """A real uvicorn server (the one ``maskcls serve`` runs) on 127.0.0.1, in a thread."""

    def __init__(self, tmp_path: Path, options: ServeOptions, limit_concurrency: int | None = None,
                 predict=stand_in):
        pp = Preprocessing(SIZE, [0.5] * 3, [0.5] * 3, False, "fast")
        model = ServedModel(tmp_path, [0], Task.competition(), pp, predict, "stand-in", info={"folds": [0]})
        self.app = create_app(tmp_path, options, loader=lambda: model)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn_server(self.app, options, access_log=False, graceful_s=5, log_level="warning",
                                     limit_concurrency=limit_concurrency)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError("the server never became ready")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        assert not self.thread.is_alive()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def get(self, path: str, **kw) -> tuple[int, bytes]:
        status, _, body = self.request("GET", path, **kw)
        return status, body

    def predict(self, *images: bytes, headers: dict | None = None) -> tuple[int, dict]:
        body, ctype = multipart([(f"p{i}.png", d) for i, d in enumerate(images)])
        status, _, data = self.request("POST", "/v1/predict", body, {"Content-Type": ctype, **(headers or {})})
        return status, json.loads(data)

    def raw(self, source: str = ATTACKER) -> socket.socket:
        s = socket.socket()
        s.bind((source, 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", self.port))
        return s


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "maskclsboundary7"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
             f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n" for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def options(**kw) -> ServeOptions:
    return ServeOptions(max_wait_ms=0, **kw)


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (fails past ``seconds``)."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open over {seconds} s (got {got!r})") from None
    return got


# ----------------------------------------------------------------------------------- slow clients

def test_stalled_connections_are_closed_and_everyone_else_is_served(tmp_path):
    """Idle, half-header and trickling-body connections: closed after their time limits (408 for headers);
    meanwhile requests from another address, /healthz included, are answered."""
    limits = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=1.5, per_client=16)
    with Server(tmp_path, options(connections=limits)) as srv:
        idle = [srv.raw() for _ in range(4)]
        half = [srv.raw() for _ in range(4)]
        for s in half:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n")
        trickle = [srv.raw() for _ in range(4)]
        for s in trickle:
            s.sendall(b"POST /v1/predict?name=a.png HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                      b"Content-Length: 100000\r\n\r\n" + photo(fmt="PNG")[:10])
        t0 = time.monotonic()
        assert srv.get("/healthz")[0] == 200
        assert srv.predict(photo())[0] == 200
        for s in trickle:  # one more byte: the body is still arriving, but too slowly
            s.sendall(b"x")
        for s in idle + half:
            assert closed_within(s, 5).startswith(b"HTTP/1.1 408 "), "a stalled request gets 408 Request Timeout"
        assert time.monotonic() - t0 < 4
        for s in trickle:
            closed_within(s, 5)
        assert time.monotonic() - t0 < 6
        for s in idle + half + trickle:
            s.close()
        assert srv.get("/healthz")[0] == 200


def test_many_connections_from_one_address_cannot_fill_the_server(tmp_path):
    """200 stalled connections from one address (the cap below them is 64): that address holds 8, the rest
    are answered 429 at once, and other clients keep getting answers."""
    limits = ConnectionLimits(header_timeout_s=30, body_timeout_s=30, per_client=8)
    with Server(tmp_path, options(connections=limits), limit_concurrency=64) as srv:
        conns = [srv.raw() for _ in range(200)]
        try:
            for s in conns:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            refused = 0
            for s in conns[8:]:
                got = closed_within(s, 5)
                refused += got.startswith(b"HTTP/1.1 429 ") and b"too_many_connections" in got
            assert refused == 192
            for _ in range(5):
                assert srv.get("/healthz")[0] == 200
            assert srv.predict(photo())[0] == 200
            status, body = srv.get("/readyz")
            assert status == 200 and json.loads(body)["status"] == "ready"
        finally:
            for s in conns:
                s.close()
        time.sleep(0.3)  # once its connections are closed the address may connect again
        s = srv.raw()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert closed_within(s, 5).startswith(b"HTTP/1.1 200 ")
        s.close()


def test_client_key_groups_ipv6_by_64():
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1" and client_key("10.0.0.1") == "10.0.0.1"


# ----------------------------------------------------------------------------------- decode memory

def test_a_request_of_pixel_bombs_under_the_size_limits_is_413_before_decoding(tmp_path):
    """Eight 7000x7000 PNGs of a few KB (each under the pixel limit, 392 MP together: ~4 GB decoded)."""
    bomb = flat_png(7000, 7000)
    assert len(bomb) < 100_000
    with Server(tmp_path, options()) as srv:
        t0 = time.monotonic()
        status, body = srv.predict(*[bomb] * 8)
        assert status == 413 and body["error"]["code"] == "too_many_pixels", body
        assert "392.0 MP" in body["error"]["message"] and "64 MP" in body["error"]["message"]
        assert time.monotonic() - t0 < 5  # headers only: nothing was decoded
        assert srv.predict(photo())[0] == 200


def test_decoding_in_flight_stays_within_the_pixel_budget(tmp_path):
    """Concurrent requests of 1 MP photos with a 2.5 MP budget: at most two decode at once, all answered."""
    limits = Limits(max_pixels=1_000_000, decode_budget_pixels=2_500_000)
    with Server(tmp_path, options(limits=limits, decode_workers=8)) as srv:
        st = srv.app.state.serving
        real, seen, lock = st.preprocess, [], threading.Lock()

        def watched(data, name, header=None):
            with lock:
                seen.append(st.pixels.used)
            time.sleep(0.05)
            return real(data, name, header)
        st.preprocess = _Callable(real.header, watched)
        img = photo(1000, 1000)
        results = []
        threads = [threading.Thread(target=lambda: results.append(srv.predict(img)[0])) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [200] * 6
        assert len(seen) == 6 and max(seen) <= 2_000_000 and st.pixels.used == 0
        status, body = srv.predict(img, img, img)  # 3 MP together: over the budget
        assert status == 413 and body["error"]["code"] == "too_many_pixels"


class _Callable:
    def __init__(self, header, call):
        self.header, self._call = header, call

    def __call__(self, *a):
        return self._call(*a)


def test_pixel_budget_is_first_come_first_served_and_survives_cancellation():
    async def go():
        budget, order = PixelBudget(10), []

        async def job(name, n, hold_s):
            async with budget.hold(n):
                order.append(name)
                await asyncio.sleep(hold_s)

        first = asyncio.create_task(job("a", 6, 0.05))
        await asyncio.sleep(0)
        big = asyncio.create_task(job("big", 8, 0))
        small = asyncio.create_task(job("small", 2, 0))  # fits now, but waits behind "big"
        gone = asyncio.create_task(job("gone", 5, 0))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.gather(first, big, small, return_exceptions=True)
        assert order == ["a", "big", "small"] and budget.used == 0 and not budget._waiting
    asyncio.run(go())


# ----------------------------------------------------------------------------------- Host and Origin

def test_foreign_host_is_421_unless_allowed(tmp_path):
    with Server(tmp_path, options(allow_hosts=["photos.example.org"])) as srv:
        assert srv.get("/healthz")[0] == 200  # Host: 127.0.0.1:PORT
        for host in (f"localhost:{srv.port}", "localhost", "photos.example.org", f"PHOTOS.example.org.:{srv.port}"):
            assert srv.get("/healthz", headers={"Host": host})[0] == 200, host
        for host in ("evil.example", f"evil.example:{srv.port}", "127.0.0.1.evil.example", "photos.example.org.evil"):
            status, body = srv.get("/v1/model", headers={"Host": host})
            assert status == 421 and json.loads(body)["error"]["code"] == "wrong_host", host
        status, body = srv.predict(photo(), headers={"Host": "rebound.example:80"})
        assert status == 421 and "--allow-host" in body["error"]["message"]


def test_cross_origin_posts_are_refused_before_any_work(tmp_path):
    calls = []

    def counting(x):
        calls.append(len(x))
        return stand_in(x)
    with Server(tmp_path, options(allow_origins=["https://app.example.org"]), predict=counting) as srv:
        n0 = len(calls)  # the warm-up batch
        status, body = srv.predict(photo(), headers={"Origin": "https://evil.example"})
        assert status == 403 and body["error"]["code"] == "cross_origin"
        assert "--allow-origin" in body["error"]["message"]
        assert srv.predict(photo(), headers={"Origin": "null"})[0] == 403
        assert len(calls) == n0
        # the server's own page, and an allowed origin (which may also read the answer: CORS)
        assert srv.predict(photo(), headers={"Origin": f"http://127.0.0.1:{srv.port}"})[0] == 200
        body, ctype = multipart([("a.jpg", photo())])
        status, headers, _ = srv.request("POST", "/v1/predict", body, {"Content-Type": ctype,
                                                                       "Origin": "https://app.example.org"})
        assert status == 200 and headers.get("access-control-allow-origin") == "https://app.example.org"
        status, headers, _ = srv.request("OPTIONS", "/v1/predict", headers={
            "Origin": "https://app.example.org", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert status == 200 and "POST" in headers.get("access-control-allow-methods", "")


# ----------------------------------------------------------------------------------- smaller answers

def test_too_many_files_is_413_naming_the_limit(tmp_path):
    with Server(tmp_path, options(limits=Limits(max_images=4))) as srv:
        status, body = srv.predict(*[photo()] * 20)
        assert status == 413 and body["error"]["code"] == "too_many_images"
        assert "at most 4 per request" in body["error"]["message"] and "64" not in body["error"]["message"]
        assert srv.predict(*[photo()] * 4)[0] == 200


def test_405_says_allow_and_head_is_answered(tmp_path):
    with Server(tmp_path, options()) as srv:
        status, headers, _ = srv.request("DELETE", "/v1/predict")
        assert status == 405 and headers.get("allow") == "POST"
        status, headers, _ = srv.request("PUT", "/healthz")
        assert status == 405 and set(headers["allow"].split(", ")) == {"GET", "HEAD"}
        for path in ("/", "/healthz", "/readyz"):
            status, _, body = srv.request("HEAD", path)
            assert status == 200 and body == b"", path


def test_client_leaving_mid_body_is_one_log_line(tmp_path, caplog):
    with Server(tmp_path, options()) as srv, caplog.at_level(logging.INFO):
        s = srv.raw("127.0.0.1")
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  b"boundary=zz\r\nContent-Length: 50000\r\n\r\n--zz\r\nContent-Disposition: form-data; "
                  b'name="file"; filename="a.jpg"\r\n\r\n' + photo()[:100])
        time.sleep(0.3)
        s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any("went away" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        assert srv.get("/healthz")[0] == 200
    messages = [r.getMessage() for r in caplog.records]
    assert sum("went away" in m for m in messages) == 1, messages
    assert not any(r.exc_info for r in caplog.records) and not any("Traceback" in m for m in messages)


@pytest.mark.parametrize("token", ["pässwörd-1234", "tab\there-12345", "with space 1234"])
def test_token_a_client_could_never_send_is_refused_at_start(tmp_path, capsys, monkeypatch, token):
    monkeypatch.delenv("MASKCLS_SERVE_TOKEN", raising=False)
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "best.pt").write_bytes(b"")
    assert main(["serve", str(run), "--token", token]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error:") and "printable ASCII" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--allow-origin", "evil.example"], "--allow-origin 'evil.example'"),
    (["--allow-host", "a b"], "--allow-host"),
    (["--decode-budget-mp", "1"], "--decode-budget-mp"),  # below --max-pixels (50 MP)
])
def test_cli_refuses_bad_exposure_options(tmp_path, capsys, args, message):
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "best.pt").write_bytes(b"")
    assert main(["serve", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------- stopping while loading

SLOW_LOAD = """
import sys, time
from maskcls.serve.app import ServeOptions
from maskcls.serve.server import bind, serve
sock = bind("127.0.0.1", 0)
print("listening", flush=True)
print("returned", serve(sys.argv[1], sock, ServeOptions(), access_log=False, loader=lambda: time.sleep(120)),
      flush=True)
"""

SLOW_CLI = """
import sys, time
import maskcls.serve.app as app
app.load_model = lambda *a, **k: time.sleep(120)
from maskcls.cli import main
sys.exit(main(["serve", sys.argv[1], "--port", "0", "--no-access-log"]))
"""


def _interrupt_while_loading(script: str, run: Path) -> tuple[int, str]:
    import signal
    proc = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:  # uvicorn's signal handlers are installed once startup is complete
            if "startup complete" in line:
                break
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert time.monotonic() - t0 < 15, "the stop waited for the load"
    finally:
        proc.kill()
    return proc.returncode, out


def test_stop_while_loading_returns_from_the_library_and_ends_the_command(tmp_path):
    """serve() returns (True: the load was abandoned), leaving the process to its program; the command ends
    its process at once with status 0 (no os._exit in the library)."""
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "best.pt").write_bytes(b"")
    (run / "summary.json").write_text('{"folds": {"0": {"best_f1": 0.5}}}')  # serve's --folds best reads it
    code, out = _interrupt_while_loading(SLOW_LOAD, run)
    assert code == 0 and "returned True" in out, out
    code, out = _interrupt_while_loading(SLOW_CLI, run)
    assert code == 0 and "stopped while the model was loading" in out, out
