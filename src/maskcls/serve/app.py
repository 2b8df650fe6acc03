"""The FastAPI application of ``maskcls serve``: routes, model loading, authentication.

Routes: ``POST /v1/predict`` (photos → JSON per photo), ``GET /v1/model`` (what is served),
``GET /healthz`` (liveness: the process answers), ``GET /readyz`` (readiness: 200 once the
model is loaded and warmed up, 503 before), ``GET /`` (the page). The model loads on a
background thread after start-up, so probes answer at once while an ONNX export runs.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from .. import __version__
from ..fsutil import cpu_count
from .answers import answer
from .batcher import MicroBatcher
from .connections import ConnectionLimits
from .exported import load_exported
from .images import ModelInput, Preprocessor, read_uploads
from .limits import Admission, ApiError, BodyLimit, Limits, PixelBudget
from .model import ServedModel, load_model
from .origins import HostOriginGuard, normalize_origin

log = logging.getLogger(__name__)

# The page may reach nothing but this server: no CDN, no tracker (blob:/data: photos, mediastream: the webcam).
PAGE_CSP = ("default-src 'none'; connect-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")


@dataclass
class ServeOptions:
    """How ``maskcls serve`` serves a run.

    Args:
        folds: 'best' (one model, the fastest), 'all' (the fold ensemble) or '0,2'.
        backend: 'onnx' (ONNX Runtime, exported and cached on first use) or 'torch'.
        max_batch: most images per model call; 1 = one request at a time.
        max_wait_ms: longest an image waits for its batch to fill.
        token: bearer token required on /v1/*; None = none (loopback only; the CLI enforces it).
        limits: upload, pixel, image-count, queue and decode-budget limits.
        decode_workers: threads decoding and preprocessing uploads (default: one per CPU).
        allow_hosts: names accepted in the Host header besides the connection's own address and
            ``localhost`` on loopback (see :mod:`.origins`); ``["*"]`` = any.
        allow_origins: web origins whose pages may call the API besides the server's own page;
            ``["*"]`` = any.
        connections: time limits on requests' headers and bodies, connections per client
            (applied by :func:`.server.serve`, at the transport level).
        streams: ONNX Runtime sessions running batches at once (each on ``threads`` cores).
        threads: intra-op threads per session (None: the cores shared out between the streams).
        model_file: an ONNX file ``maskcls export`` wrote (``--model``, ``--int8``) to serve instead of
            exporting the run's folds (its folds and precision are the file's).
    """
    folds: str = "best"
    backend: str = "onnx"
    max_batch: int = 16
    max_wait_ms: float = 10.0
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    decode_workers: int | None = None
    allow_hosts: list[str] = field(default_factory=list)
    allow_origins: list[str] = field(default_factory=list)
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    streams: int = 1
    threads: int | None = None
    model_file: str | Path | None = None

    def loader(self, run: str | Path) -> Callable[[], ServedModel]:
        """What builds the served model: the exported file, or the run's folds."""
        if self.model_file is not None:
            return lambda: load_exported(self.model_file, streams=self.streams, threads=self.threads)
        return lambda: load_model(run, folds=self.folds, backend=self.backend, streams=self.streams,
                                  threads=self.threads)


class ServerState:
    """What the routes share: set up by the lifespan, the model filled in once loaded."""

    def __init__(self, options: ServeOptions):
        self.options, self.limits = options, options.limits
        self.admission = Admission(options.limits.max_queue)
        self.pixels = PixelBudget(options.limits.decode_budget_pixels)
        self.model: ServedModel | None = None
        self.preprocess: Preprocessor | None = None
        self.batcher: MicroBatcher | None = None
        self.error: str | None = None
        self.pool: ThreadPoolExecutor | None = None

    def ready(self) -> ServedModel:
        if self.model is None or self.batcher is None:
            if self.error:
                raise ApiError(503, "model_failed", f"the model could not be loaded: {self.error}")
            raise ApiError(503, "loading", "the model is still loading; retry in a few seconds",
                           headers={"Retry-After": "2"})
        return self.model


def _page() -> str:
    return resources.files("maskcls.serve").joinpath("static/index.html").read_text(encoding="utf-8")


LOAD_THREAD = "maskcls-load"


def loading() -> bool:
    """Whether a model load is still running (on its daemon thread)."""
    return any(t.name == LOAD_THREAD and t.is_alive() for t in threading.enumerate())


async def _in_thread(fn: Callable):
    """Run ``fn`` on a daemon thread (a Ctrl-C during a long load must not wait for it)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def work():
        try:
            res = (fn(), None)
        except BaseException as e:  # handed to the event loop, which decides
            res = (None, e)
        try:
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(res))
        except RuntimeError:  # the loop closed meanwhile (shutdown during loading)
            pass
    threading.Thread(target=work, name=LOAD_THREAD, daemon=True).start()
    return await fut


async def _load(st: ServerState, loader: Callable[[], ServedModel], on_error: Callable[[BaseException], None] | None):
    t0 = time.perf_counter()
    opts, batcher = st.options, None
    try:
        model, err = await _in_thread(loader)
        if err is None:
            pre, err = await _in_thread(lambda: Preprocessor(model, st.limits.max_pixels))
        if err is not None:
            raise err
        streams = getattr(model.predict, "streams", 1)  # the torch fallback: one
        batcher = MicroBatcher(model.predict, max_batch=opts.max_batch, max_wait_ms=opts.max_wait_ms,
                               incoming=lambda: st.admission.pending - batcher.in_flight, streams=streams)
        batcher.start()
        size = model.preprocessing.image_size
        # warm-up (first-run costs now): a full batch per stream, which run at once, so on every session
        await batcher.run([np.zeros((3, size, size), np.uint8)] * (opts.max_batch * streams))
    except Exception as e:
        st.error = str(e) or type(e).__name__
        log.error("cannot serve: %s", st.error)
        if batcher is not None:
            await batcher.close()
        if on_error is not None:
            on_error(e)
        return
    st.model, st.preprocess, st.batcher = model, pre, batcher
    log.info("model ready in %.1f s: folds %s, %s backend", time.perf_counter() - t0, model.folds, model.backend)


def _auth_dependency(token: str | None):
    expected = token.encode() if token else None

    async def check(request: Request) -> None:  # async: no thread hop per request
        if expected is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
            raise ApiError(401, "unauthorized", "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
                           "with the token the server was started with", headers={"WWW-Authenticate": "Bearer"})
    return check


def create_app(run: str | Path, options: ServeOptions | None = None, *,
               loader: Callable[[], ServedModel] | None = None,
               on_load_error: Callable[[BaseException], None] | None = None) -> FastAPI:
    """The application serving ``run``.

    Args:
        run: the run directory.
        options: folds, backend, batching, token and limits.
        loader: builds the served model (default: :func:`.model.load_model` with the options).
        on_load_error: called (on the event loop) when loading fails — the CLI stops the server.
    """
    options = options or ServeOptions()
    options.limits.check()
    st = ServerState(options)
    loader = loader or options.loader(run)

    async def lifespan(app: FastAPI):
        st.pool = ThreadPoolExecutor(options.decode_workers or cpu_count(), thread_name_prefix="maskcls-decode")
        loading = asyncio.create_task(_load(st, loader, on_load_error))
        try:
            yield
        finally:
            loading.cancel()
            if st.batcher is not None:
                await st.batcher.close()  # in-flight requests have finished: uvicorn waited for them
            st.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="maskcls serve", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # the interactive docs load from a CDN: not here
    app.state.serving = st
    app.add_middleware(BodyLimit, max_bytes=options.limits.max_upload_bytes)
    if options.allow_origins:  # their pages may read the answers (and send the token: a preflight)
        app.add_middleware(CORSMiddleware, allow_origins=[normalize_origin(o) for o in options.allow_origins],
                           allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"])
    app.add_middleware(HostOriginGuard, hosts=options.allow_hosts, origins=options.allow_origins)  # outermost
    auth = Depends(_auth_dependency(options.token))
    _routes(app, st, auth)
    return app


async def _in_pool(st: ServerState, fn, *args) -> list:
    """``fn(*args)`` for each tuple of ``args`` on the decode pool; ApiErrors combined into one, others raised."""
    loop = asyncio.get_running_loop()
    done = await asyncio.gather(*(loop.run_in_executor(st.pool, fn, *a) for a in args), return_exceptions=True)
    for d in done:
        if isinstance(d, BaseException) and not isinstance(d, ApiError):
            raise d
    errors = [d for d in done if isinstance(d, ApiError)]
    if errors:
        raise ApiError.combine(errors)
    return done


async def _decode_all(st: ServerState, uploads: list[tuple[str, bytes]]) -> list[ModelInput]:
    """Every upload's model input: headers first, then the decoding within the server's pixel budget."""
    headers = await _in_pool(st, st.preprocess.header, *((data, name) for name, data in uploads))
    pixels = sum(h.pixels for h in headers)
    st.pixels.refuse_if_over(pixels, len(uploads))
    async with st.pixels.hold(pixels):
        return await _in_pool(st, st.preprocess, *((data, name, h) for (name, data), h in zip(uploads, headers)))


def _routes(app: FastAPI, st: ServerState, auth) -> None:
    page = _page()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.payload(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return JSONResponse({"error": {"code": code, "message": str(exc.detail)}}, status_code=exc.status_code,
                            headers=exc.headers)  # 405: Allow

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # logged with its traceback by the server
        return JSONResponse({"error": {"code": "internal", "message": f"internal error ({type(exc).__name__}); "
                                       "the server log has the details"}}, status_code=500)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.api_route("/healthz", methods=["GET", "HEAD"])
    async def healthz():
        return {"status": "ok"}

    @app.api_route("/readyz", methods=["GET", "HEAD"])
    async def readyz():
        if st.model is None or st.batcher is None:
            status = "failed" if st.error else "loading"
            return JSONResponse({"status": status, "error": st.error}, status_code=503, headers={"Retry-After": "2"})
        return {"status": "ready", "backend": st.model.backend, "queued_images": st.admission.pending,
                "refused_requests": st.admission.refused, "batches": st.batcher.batches, "images": st.batcher.images}

    @app.get("/v1/model", dependencies=[auth])
    async def model_info():
        model = st.ready()
        opts = st.options
        return {**model.info, "serving": {"max_batch": opts.max_batch, "max_wait_ms": opts.max_wait_ms,
                                          "streams": st.batcher.streams,
                                          "limits": vars(st.limits), "token_required": bool(opts.token)}}

    @app.post("/v1/predict", dependencies=[auth])
    async def predict(request: Request):
        model = st.ready()
        try:
            uploads = await read_uploads(request, st.limits)
        except ClientDisconnect:  # nobody to answer: one line, not a traceback
            log.info("client %s went away while sending its photos", request.client.host if request.client else "?")
            return JSONResponse({"error": {"code": "client_disconnected", "message": "incomplete request"}}, 400)
        t0 = time.perf_counter()
        with st.admission.hold(len(uploads)):
            done = await _decode_all(st, uploads)
            probs = await st.batcher.run([d.tensor for d in done])
        results = [answer(d.name, p, model.task, width=d.width, height=d.height, box=d.box)
                   for d, p in zip(done, probs)]
        return JSONResponse({"results": results, "folds": model.folds, "backend": model.backend,
                             "elapsed_ms": round((time.perf_counter() - t0) * 1000, 2)})
