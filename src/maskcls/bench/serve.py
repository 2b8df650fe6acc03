"""``maskcls bench serve``: maskcls serve against the server a user would write, over real HTTP.

Each configuration is a server process on 127.0.0.1 serving the same run; one client (another
process, :mod:`.serve_client`) sends ``requests`` POST /v1/predict requests — one 384×512 JPEG, the
competition's photo size, the same bytes for every server — at each concurrency. Configurations:

* ``peer`` — :mod:`.peer_server`: FastAPI + uvicorn, the PyTorch model in eager fp32 from the run's
  checkpoint, PIL + torchvision preprocessing, one request at a time;
* ``fp32`` — ``maskcls serve RUN --streams 1``: the fp32 ONNX graph, one session on every core;
* ``fp32-streams`` — ``--streams N --threads 1`` (N = CPUs, at least 2): N sessions of one core;
* ``int8``, ``int8-streams`` — the same with ``--int8`` (RUN/export/model.int8.onnx, exported
  first with ``maskcls export RUN --format onnx --int8`` when missing; skipped with a note when
  that cannot be done).

Every maskcls configuration micro-batches (``--max-batch 16 --max-wait-ms 10``, the defaults). The
one whose settings are ``maskcls serve``'s defaults is marked "default"; the last line is its
throughput over the peer's at concurrency 8. Per row: requests/s, p50/p95/p99 latency, failed
requests (any non-200, or an answer that differs from the first), the class answered, and the
server's resident memory after that concurrency and its growth since the warm-up.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from ..fsutil import cpu_count
from .common import make_jpegs
from .serve_client import build_request, free_port, rss_mb, run_client, start_process, stop_process

CONFIGS = ("peer", "fp32", "fp32-streams", "int8", "int8-streams")
PEER_LABEL = "peer: FastAPI + PyTorch eager, 1 at a time"


@dataclass
class ServeConfig:
    """One server to measure: its name, the command's options, and what it is."""
    name: str
    label: str
    options: list[str]
    streams: int = 1
    threads: int = 1


def configurations(names: tuple[str, ...]) -> list[ServeConfig]:
    """The maskcls configurations among ``names`` (the peer is started on its own)."""
    from ..serve.model import default_threads
    n = max(2, cpu_count())
    out = []
    for name in names:
        if name == "peer":
            continue
        streams, threads = (n, 1) if name.endswith("-streams") else (1, default_threads(1))
        precision = name.split("-")[0]
        options = ["--streams", str(streams), "--threads", str(threads)] + (["--int8"] if precision == "int8" else [])
        label = f"maskcls {precision}, {streams} stream{'s' * (streams > 1)} x {threads} thread{'s' * (threads > 1)}"
        out.append(ServeConfig(name, label, options, streams, threads))
    return out


def default_config(configs: list[ServeConfig]) -> ServeConfig | None:
    """The fp32 configuration with ``maskcls serve``'s default streams and threads, if measured."""
    from ..serve.model import default_streams, default_threads
    streams = default_streams()
    want = (streams, default_threads(streams))
    return next((c for c in configs if c.name.startswith("fp32") and (c.streams, c.threads) == want), None)


def ensure_int8(run: Path, log_path: Path) -> str | None:
    """Make RUN/export/model.int8.onnx when missing; None when it is there, else why it is not."""
    if (run / "export" / "model.int8.onnx").is_file():
        return None
    cmd = [sys.executable, "-m", "maskcls", "export", str(run), "--format", "onnx", "--int8"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if rc == 0 and (run / "export" / "model.int8.onnx").is_file():
        return None
    lines = [ln for ln in log_path.read_text().splitlines() if ln.strip()]
    return lines[-1] if lines else f"`maskcls export --int8` exited with {rc}"


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


def measure(cmd: list[str], jpeg: bytes, requests: int, concurrency: tuple[int, ...], warmup: int,
            log_path: Path) -> list[dict]:
    """Start the server ``cmd``, warm it up, then one row per concurrency (with the RSS after it)."""
    port = free_port()
    proc = start_process([*cmd, "--port", str(port)], port, log_path)
    try:
        request = build_request(jpeg, "127.0.0.1", port)
        run_client("127.0.0.1", port, request, warmup, 8)
        start, rows = rss_mb(proc.pid), []
        for c in concurrency:
            row = run_client("127.0.0.1", port, request, requests, c)
            rows.append({**row, "rss": rss_mb(proc.pid), "rss_growth": 100 * (rss_mb(proc.pid) / start - 1)})
    finally:
        stop_process(proc)
    return rows


HEADER = (f"  {'configuration':<46} {'conc':>4} {'requests':>8} {'failed':>6} {'req/s':>7} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7} {'class':>5} {'RSS MiB':>8} {'RSS +%':>6}")


def table_rows(label: str, rows: list[dict]) -> list[str]:
    return [f"  {label:<46} {r['concurrency']:>4} {r['requests']:>8} {r['failed']:>6} {r['req_s']:>7.1f} "
            f"{r['p50']:>7.1f} {r['p95']:>7.1f} {r['p99']:>7.1f} {str(r['answer']):>5} {r['rss']:>8.0f} "
            f"{r['rss_growth']:>+6.1f}" for r in rows]


def _speedup(results: dict, default: ServeConfig | None, concurrency: tuple[int, ...]) -> tuple[float | None, str]:
    c8 = 8 if 8 in concurrency else concurrency[len(concurrency) // 2]
    if default is None or "peer" not in results or default.name not in results:
        return None, "serve speedup vs naive server: n/a (needs the peer and maskcls' default configuration)"
    at = {name: {r["concurrency"]: r["req_s"] for r in rows} for name, rows in results.items()}
    ratio = at[default.name][c8] / at["peer"][c8]
    note = "" if c8 == 8 else f"  (at concurrency {c8}: 8 was not measured)"
    return ratio, f"serve speedup vs naive server: {ratio:.2f}{note}"


def bench_serve(*, run: str | Path | None = None, requests: int = 2000, concurrency: tuple[int, ...] = (1, 8, 32),
                configs: tuple[str, ...] = CONFIGS, warmup: int = 200, workdir: Path | None = None) -> dict:
    """Serve ``run`` (default: a quick run of the default backbone at 128 px) in each configuration and measure.

    Args:
        run: a run directory; None trains a small one in a temporary folder first.
        requests: requests per configuration and concurrency.
        concurrency: client connections sending at once.
        configs: which of :data:`CONFIGS` to measure.
        warmup: requests at concurrency 8 before the start memory is read.
        workdir: parent of the temporary folder.

    Returns ``{"results": {config: rows}, "labels", "default", "speedup", "notes", "text"}``; ``text`` ends
    with ``serve speedup vs naive server: X.XX`` (maskcls' default configuration over the peer at concurrency 8).
    """
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs or not concurrency:
        from ..errors import ConfigError
        raise ConfigError(f"--configs {','.join(configs)}: choose among {', '.join(CONFIGS)}; --concurrency: one or "
                          "more numbers")
    if run is not None:
        from ..rundir.models import select_folds
        select_folds(run, "best")  # a wrong run fails here, in one line, before any server starts
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        run = Path(run) if run else quick_run(tmp)
        jpeg = Path(make_jpegs(tmp / "photos", 1)[0]).read_bytes()
        todo, notes = configurations(configs), []
        if any(c.name.startswith("int8") for c in todo) and (why := ensure_int8(run, tmp / "export-int8.log")):
            todo = [c for c in todo if not c.name.startswith("int8")]
            notes.append(f"INT8 rows skipped: no {run / 'export' / 'model.int8.onnx'} ({why})")
        default = default_config(todo)
        labels, results = {}, {}
        if "peer" in configs:
            cmd = [sys.executable, "-m", "maskcls.bench.peer_server", str(run)]
            results["peer"] = measure(cmd, jpeg, requests, concurrency, warmup, tmp / "peer.log")
            labels["peer"] = PEER_LABEL
        for c in todo:
            cmd = [sys.executable, "-m", "maskcls", "serve", str(run), "--no-access-log", *c.options]
            results[c.name] = measure(cmd, jpeg, requests, concurrency, warmup, tmp / f"{c.name}.log")
            labels[c.name] = c.label + (" (default)" if c is default else "")
    speedup, last = _speedup(results, default, concurrency)
    head = (f"bench serve: {run} ({os.path.basename(str(run))}), {requests} requests per configuration and "
            f"concurrency, one 384x512 JPEG each; maskcls micro-batches (max 16, 10 ms); {cpu_count()} CPUs")
    lines = [head, HEADER] + [ln for name in results for ln in table_rows(labels[name], results[name])]
    text = "\n".join([*lines, *notes, last])
    return {"results": results, "labels": labels, "default": default.name if default else None,
            "speedup": speedup, "notes": notes, "text": text}
