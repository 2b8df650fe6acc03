"""``maskcls serve``: a trained run as a web service and a web page."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .common import float_range, int_range, sub


def register(subs) -> None:
    s = sub(subs, "serve", "serve a trained run: JSON API (POST /v1/predict) and a web page, micro-batched",
            "maskcls serve runs/mobilenetv2_100-1                     # http://127.0.0.1:8000/\n"
            "maskcls serve runs/mobilenetv2_100-1 --folds all --port 9000\n"
            "MASKCLS_SERVE_TOKEN=$(openssl rand -hex 16) maskcls serve runs/mobilenetv2_100-1 --host 0.0.0.0 \\\n"
            "    --allow-host photos.example.org          # the name clients use to reach it\n"
            "maskcls serve runs/mobilenetv2_100-1 --int8             # after: maskcls export RUN --format onnx --int8\n"
            "maskcls serve --model exported/model.onnx --streams 2 --threads 1\n"
            "curl -F file=@photo.jpg http://127.0.0.1:8000/v1/predict")
    s.add_argument("run_dir", metavar="RUN", nargs="?", default=None,
                   help="run directory (runs/<name>-<n>); not needed with --model")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other needs a token)")
    s.add_argument("--port", type=int_range(0, 65535), default=8000, help="port (0 = any free one)")
    s.add_argument("--folds", default="best", help="'best' (one model, fastest), 'all' (fold ensemble), or '0,2'")
    s.add_argument("--backend", choices=["onnx", "torch"], default="onnx",
                   help="onnx: ONNX Runtime, exported on first use into RUN/export/ and checked against torch")
    s.add_argument("--int8", action="store_true",
                   help="serve RUN/export/model.int8.onnx (write it with `maskcls export RUN --format onnx --int8`)")
    s.add_argument("--model", default=None, metavar="PATH.onnx",
                   help="serve this ONNX file written by `maskcls export` (its JSON beside it, or the run it lies in, "
                        "says the preprocessing and classes)")
    s.add_argument("--streams", type=int_range(1, 64), default=None,
                   help="ONNX Runtime sessions running batches at once, the cores shared between them "
                        "(default: 1 — what `maskcls bench serve` measured best on 2 cores; see the README)")
    s.add_argument("--threads", type=int_range(1, 256), default=None,
                   help="intra-op threads per session (default: CPUs / streams)")
    s.add_argument("--max-batch", type=int_range(1, 1024), default=16,
                   help="most images per model call (1 = no batching)")
    s.add_argument("--max-wait-ms", type=float_range(0, 10000), default=10.0,
                   help="longest an image waits for its batch to fill")
    s.add_argument("--token", default=None,
                   help="bearer token required on /v1/* (prefer the MASKCLS_SERVE_TOKEN variable: arguments "
                        "are visible to every user of the machine)")
    s.add_argument("--max-upload-mb", type=float_range(0.001, 4096), default=20.0, help="largest request body in MiB")
    s.add_argument("--max-pixels", type=int_range(1, 50_000_000), default=None,
                   help="largest image in pixels (width x height; default and maximum 50,000,000)")
    s.add_argument("--max-images", type=int_range(1, 1024), default=16, help="photos per request")
    s.add_argument("--max-queue", type=int_range(1, 100_000), default=64,
                   help="images waiting or running, over all requests; more are answered 503 + Retry-After")
    s.add_argument("--decode-workers", type=int_range(1, 256), default=None,
                   help="threads decoding uploads (default: CPUs)")
    s.add_argument("--decode-budget-mp", type=float_range(0.004, 10_000), default=64.0,
                   help="megapixels decoded at once over all requests, and the most one request's photos may hold "
                        "together (more: 413); decoding costs 10-15 bytes per pixel (default 64: under 1 GB)")
    s.add_argument("--header-timeout", type=float_range(0.1, 3600), default=10.0,
                   help="seconds a request's line and headers may take to arrive (then 408 and the connection "
                        "closes)")
    s.add_argument("--body-timeout", type=float_range(0.1, 3600), default=60.0,
                   help="seconds a request's body may take after its headers (then the connection closes)")
    s.add_argument("--max-client-connections", type=int_range(1, 10_000), default=64,
                   help="connections one client address (an IPv6 /64) may hold open; more are answered 429")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests whose Host header names NAME (repeatable; *.example.org for a "
                        "domain, * for any); by default only the address the server listens on (and localhost)")
    s.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages of ORIGIN (https://example.org) call the API (repeatable; * for any); "
                        "by default only the server's own page")
    s.add_argument("--no-access-log", action="store_true", help="do not log every request")
    s.set_defaults(handler=cmd_serve)


def _options(args, token: str | None):
    from ..serve.app import ServeOptions
    from ..serve.connections import ConnectionLimits
    from ..serve.limits import Limits, MiB
    from ..serve.model import default_streams
    from ..serve.origins import WILDCARD_BINDS, check_allowed_hosts, normalize_origin

    limits = Limits(max_upload_bytes=int(args.max_upload_mb * MiB), max_images=args.max_images,
                    max_queue=args.max_queue, decode_budget_pixels=int(args.decode_budget_mp * 1e6),
                    **({"max_pixels": args.max_pixels} if args.max_pixels else {}))
    limits.check()
    connections = ConnectionLimits(header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                                   per_client=args.max_client_connections)
    connections.check()
    hosts = check_allowed_hosts(args.allow_host + ([] if args.host in WILDCARD_BINDS else [args.host]))
    origins = [normalize_origin(o) for o in args.allow_origin]
    return ServeOptions(folds=args.folds, backend=args.backend, max_batch=args.max_batch,
                        max_wait_ms=args.max_wait_ms, token=token, limits=limits, decode_workers=args.decode_workers,
                        allow_hosts=hosts, allow_origins=origins, connections=connections,
                        streams=args.streams or default_streams(), threads=args.threads,
                        model_file=_model_file(args))


def _model_file(args):
    """The exported file to serve (--int8, --model), checked before anything listens; None: the run's folds."""
    from ..errors import ConfigError
    from ..serve.exported import check_exported, int8_path
    if args.int8 and args.model:
        raise ConfigError("give --int8 (RUN/export/model.int8.onnx) or --model PATH.onnx, not both")
    if not args.int8 and not args.model:
        if not args.run_dir:
            raise ConfigError("give the run directory to serve (maskcls serve RUN), or --model PATH.onnx")
        return None
    if args.backend != "onnx":
        raise ConfigError("--int8 and --model serve an ONNX file: leave --backend at onnx")
    if args.int8 and not args.run_dir:
        raise ConfigError("--int8 serves RUN/export/model.int8.onnx: give the run directory")
    path = int8_path(args.run_dir) if args.int8 else args.model
    check_exported(path)
    return path


def cmd_serve(args) -> int:
    from ..rundir.models import select_folds
    from ..serve.server import TOKEN_ENV, bind, check_exposure, serve, url_of

    token = args.token or os.environ.get(TOKEN_ENV) or None
    check_exposure(args.host, token)
    options = _options(args, token)
    if options.model_file is None:
        select_folds(args.run_dir, args.folds)  # a wrong run or fold fails here, before anything listens
    sock = bind(args.host, args.port)
    logging.getLogger("maskcls.serve").setLevel(logging.INFO)
    what = f"{args.run_dir} (folds {args.folds}, {args.backend}" if options.model_file is None else \
        f"{options.model_file} ({'int8' if args.int8 else 'exported file'}"
    print(f"maskcls serve: {what}, {options.streams} stream(s) x {options.threads or 'auto'} thread(s)) on "
          f"{url_of(sock)}; {'token required' if token else 'no token'}; Ctrl+C stops", flush=True)
    run = args.run_dir or str(Path(options.model_file).parent)
    if serve(run, sock, options, access_log=not args.no_access_log):
        # The model load still runs native code (ONNX Runtime, torch) on its thread: finalising the interpreter
        # under it aborts ("terminate called without an active exception"). Nothing was served; end at once.
        print("maskcls serve: stopped while the model was loading", flush=True)
        sys.stderr.flush()
        os._exit(0)
    print("maskcls serve: stopped", flush=True)
    return 0
