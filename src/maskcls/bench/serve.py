"""``maskcls bench serve``: micro-batched serving versus one request at a time, over real HTTP.

For each serving mode a ``maskcls serve`` process starts on 127.0.0.1 (micro-batched:
``--max-batch 16 --max-wait-ms 10``; one at a time: ``--max-batch 1 --max-wait-ms 0``), and
a client in another process sends ``requests`` POST /v1/predict requests (one 384×512 JPEG,
the competition's photo size) over keep-alive connections at each concurrency. Printed per
mode and concurrency: throughput, p50/p95/p99 latency, failed requests (any non-200, or an
answer that differs from the first one), and the server's resident memory after loading and
a warm-up, and at the end. The last line is the throughput ratio at concurrency 8.

The client is a minimal asyncio HTTP/1.1 client (pre-built request bytes) so that it takes
as little of the CPU the server needs as possible; both run on the same machine.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .common import make_jpegs

MODES = {"micro-batched": (16, 10.0), "one-at-a-time": (1, 0.0)}
BOUNDARY = "maskclsbenchboundary"


def build_request(jpeg: bytes, host: str, port: int) -> bytes:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode() + jpeg + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _connection(host: str, port: int, request: bytes, left: list[int], out: dict) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while left[0] > 0:
            left[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            length, close = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                key, _, value = line.decode("latin-1").partition(":")
                if key.lower() == "content-length":
                    length = int(value)
                close = close or (key.lower() == "connection" and "close" in value.lower())
            body = await reader.readexactly(length)
            out["latency"].append(time.perf_counter() - t0)
            answer = json.loads(body)["results"][0]["class_id"] if status == 200 else None
            out["first"] = answer if out["first"] is None else out["first"]
            if status != 200 or answer != out["first"]:
                out["failed"] += 1
                out["statuses"][status] = out["statuses"].get(status, 0) + 1
            if close:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def client(host: str, port: int, request: bytes, n: int, concurrency: int, result_queue) -> None:
    """Send ``n`` requests over ``concurrency`` connections; put the measurements on ``result_queue``."""
    out = {"latency": [], "failed": 0, "first": None, "statuses": {}}

    async def main():
        left = [n]
        t0 = time.perf_counter()
        await asyncio.gather(*(_connection(host, port, request, left, out) for _ in range(concurrency)))
        return time.perf_counter() - t0
    seconds = asyncio.run(main())
    result_queue.put({"seconds": seconds, "latency": out["latency"], "failed": out["failed"],
                      "statuses": out["statuses"]})


def run_client(host: str, port: int, request: bytes, n: int, concurrency: int) -> dict:
    ctx = mp.get_context("spawn")  # another process: the server's CPU time is not the client's
    q = ctx.Queue()
    p = ctx.Process(target=client, args=(host, port, request, n, concurrency, q))
    p.start()
    res = q.get()
    p.join()
    lat = np.asarray(res["latency"]) * 1000
    return {"concurrency": concurrency, "requests": len(lat), "failed": res["failed"], "statuses": res["statuses"],
            "req_s": len(lat) / res["seconds"], "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99))}


def _get(port: int, path: str) -> tuple[int, dict]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    except (OSError, ValueError):
        return 0, {}
    finally:
        conn.close()


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: Path, port: int, max_batch: int, max_wait_ms: float, log_path: Path, backend: str = "onnx",
                 timeout: float = 600) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "maskcls", "serve", str(run), "--port", str(port), "--max-batch", str(max_batch),
           "--max-wait-ms", str(max_wait_ms), "--backend", backend, "--no-access-log"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log_path}:\n{log_path.read_text()}")
        if _get(port, "/readyz")[0] == 200:
            return proc
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server was not ready after {timeout} s; see {log_path}")


def rss_mb(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def quick_run(workdir: Path, *, model: str | None = None, image_size: int = 128) -> Path:
    """A small real run to serve: synthetic photos, fold 0, one short epoch (the weights do not matter here);
    ``model`` defaults to the default backbone."""
    from ..config import Config
    from ..engine.run import run_training
    from ..prep.prepare import prepare
    from ..prep.prepared import load_prepared
    from ..synth.dataset import synthesize
    synthesize(workdir / "data", people=12, eval_people=3, seed=0, workers=1)
    prepare(workdir / "data", workdir / "prepared", folds=3, seed=0)
    cfg = Config()
    cfg = replace(cfg, model=replace(cfg.model, name=model or cfg.model.name, pretrained="package"),
                  data=replace(cfg.data, image_size=image_size, num_workers=0),
                  train=replace(cfg.train, epochs=1, max_train_batches=2, batch_size=8),
                  run=replace(cfg.run, report=False, tensorboard=False))
    return Path(run_training(cfg, load_prepared(workdir / "prepared"), folds=[0], run_dir=workdir / "run")["run_dir"])


def _table(mode: str, rows: list[dict], rss: tuple[float, float], batch: float) -> list[str]:
    lines = [f"{mode} (RSS after warm-up {rss[0]:.0f} MiB, at the end {rss[1]:.0f} MiB, "
             f"{100 * (rss[1] / rss[0] - 1):+.1f} %; mean model batch {batch:.1f})",
             f"  {'conc':>4} {'requests':>8} {'failed':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"]
    lines += [f"  {r['concurrency']:>4} {r['requests']:>8} {r['failed']:>6} {r['req_s']:>8.1f} {r['p50']:>8.1f} "
              f"{r['p95']:>8.1f} {r['p99']:>8.1f}" for r in rows]
    return lines


def model_scaling(run: Path, backend: str, batch: int, seconds: float = 2.0) -> dict[int, float]:
    """Milliseconds per image of the served model alone (the server's own predictor and settings, no HTTP,
    no decoding) at batch 1 and ``batch``: what micro-batching can save at most."""
    from ..serve.model import check_batch, load_model
    served = load_model(run, folds="best", backend=backend)
    out = {}
    for b in (1, batch):
        x = check_batch(served.preprocessing.image_size, n=b)
        for _ in range(3):
            served.predict(x)
        n, t0 = 0, time.perf_counter()
        while n < 5 or time.perf_counter() - t0 < seconds:
            served.predict(x)
            n += 1
        out[b] = 1000 * (time.perf_counter() - t0) / (n * b)
    return out


def bench_serve(*, run: str | Path | None = None, requests: int = 2000, concurrency: tuple[int, ...] = (1, 8, 32),
                backend: str = "onnx", warmup: int = 200, workdir: Path | None = None) -> dict:
    """Serve ``run`` (default: a quick run of the default backbone at 128 px) in both modes and measure.

    Args:
        run: a run directory; None trains a small one in a temporary folder first.
        requests: requests per mode and concurrency.
        concurrency: client connections sending at once.
        backend: the server's ``--backend`` (onnx or torch).
        warmup: requests at concurrency 8 before the start memory is read.
        workdir: parent of the temporary folder.

    Returns ``{"modes": {mode: {"rows", "rss_mb", "mean_batch"}}, "speedup", "model_ms_per_image", "text"}``
    (``model_ms_per_image``: the model alone at batch 1 and at the micro-batch size); ``text`` ends with
    ``serve speedup vs one-at-a-time: X.XX`` (throughput ratio at concurrency 8).
    """
    if run is not None:
        from ..infer.loading import select_folds
        select_folds(run, "best")  # a wrong run fails here, in one line, before any server starts
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        run = Path(run) if run else quick_run(tmp)
        jpeg = Path(make_jpegs(tmp / "photos", 1)[0]).read_bytes()
        meta = {}
        results, lines = {}, []
        for mode, (max_batch, wait) in MODES.items():
            port = _free_port()
            proc = start_server(run, port, max_batch, wait, tmp / f"server-{max_batch}.log", backend)
            try:
                meta = meta or _get(port, "/v1/model")[1]
                request = build_request(jpeg, "127.0.0.1", port)
                run_client("127.0.0.1", port, request, warmup, 8)
                start = rss_mb(proc.pid)
                rows = [run_client("127.0.0.1", port, request, requests, c) for c in concurrency]
                end = rss_mb(proc.pid)
                stats = _get(port, "/readyz")[1]
            finally:
                proc.send_signal(signal.SIGINT)  # graceful shutdown
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            batch = stats.get("images", 0) / max(1, stats.get("batches", 1))
            results[mode] = {"rows": rows, "rss_mb": (start, end), "mean_batch": batch}
            lines += _table(mode, rows, (start, end), batch)
        # after the servers, so nothing runs beside it
        max_batch = MODES["micro-batched"][0]
        scaling = model_scaling(run, backend, max_batch)
        lines.append(f"model alone ({meta.get('backend', {}).get('name')}, the server's settings): "
                     f"{scaling[1]:.2f} ms per image at batch 1, {scaling[max_batch]:.2f} at batch {max_batch}; "
                     f"batching the model alone gains at most {scaling[1] / scaling[max_batch]:.2f}x")
    by_c = {m: {r["concurrency"]: r for r in v["rows"]} for m, v in results.items()}
    c8 = 8 if 8 in concurrency else concurrency[len(concurrency) // 2]
    speedup = by_c["micro-batched"][c8]["req_s"] / by_c["one-at-a-time"][c8]["req_s"]
    pp = meta.get("preprocessing", {})
    head = (f"bench serve: {meta.get('model')} at {pp.get('image_size')} px, folds {meta.get('folds')}, "
            f"{meta.get('backend', {}).get('name')} backend; {requests} requests per concurrency, one 384x512 JPEG "
            f"each; {os.cpu_count()} CPUs")
    text = "\n".join([head, *lines, f"serve speedup vs one-at-a-time: {speedup:.2f}"])
    return {"modes": results, "speedup": speedup, "model_ms_per_image": scaling, "text": text}
