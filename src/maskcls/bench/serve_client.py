"""The client side of ``maskcls bench serve``: requests over real HTTP, and the servers' processes.

The client is a minimal asyncio HTTP/1.1 client (pre-built request bytes, keep-alive
connections) in its own process, so that it takes as little of the CPU the server needs as
possible; both run on the same machine. A request fails when its status is not 200 or its answer
(the first photo's class id) differs from the first answer of the run.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

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
                      "statuses": out["statuses"], "answer": out["first"]})


def run_client(host: str, port: int, request: bytes, n: int, concurrency: int) -> dict:
    ctx = mp.get_context("spawn")  # another process: the server's CPU time is not the client's
    q = ctx.Queue()
    p = ctx.Process(target=client, args=(host, port, request, n, concurrency, q))
    p.start()
    res = q.get()
    p.join()
    lat = np.asarray(res["latency"]) * 1000
    return {"concurrency": concurrency, "requests": len(lat), "failed": res["failed"], "statuses": res["statuses"],
            "answer": res["answer"],
            "req_s": len(lat) / res["seconds"], "p50": float(np.percentile(lat, 50)),
            "p95": float(np.percentile(lat, 95)), "p99": float(np.percentile(lat, 99))}


def get_json(port: int, path: str) -> tuple[int, dict]:
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


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd: list[str], port: int, log_path: Path, timeout: float = 600) -> subprocess.Popen:
    """Start the server ``cmd`` (listening on 127.0.0.1:``port``) and wait until GET /readyz answers 200."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log_path}:\n{log_path.read_text()}")
        if get_json(port, "/readyz")[0] == 200:
            return proc
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"the server was not ready after {timeout} s; see {log_path}")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGINT (a graceful shutdown), then a kill after a minute."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_mb(pid: int) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20
