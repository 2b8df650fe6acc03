"""Binding and running: the address check, the token rule, the socket, uvicorn.

The server binds 127.0.0.1 unless told otherwise, and refuses any other address without a
bearer token. Connections are uvicorn's h11 protocol with time limits on headers and bodies and
a per-client connection limit (:mod:`.connections`). On SIGINT/SIGTERM uvicorn stops accepting
connections, lets requests in flight finish (up to ``graceful_s``), then the batcher finishes its
queue and stops. Stopped while the model is still loading, :func:`serve` returns at once and says
so: the load goes on in a daemon thread, and the program decides how to end (the ``maskcls serve``
command ends its process at once, since letting the interpreter finalise under ONNX Runtime's or
torch's native threads aborts it).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

from ..errors import ConfigError, MaskclsError
from .app import ServeOptions, create_app, loading
from .connections import guarded_protocol

log = logging.getLogger(__name__)

TOKEN_ENV = "MASKCLS_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """A server reachable from other machines needs a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"--host {host} makes the server reachable from other machines: give it a bearer token "
                          f"(set {TOKEN_ENV}=<secret>, or --token), or keep the default --host 127.0.0.1")
    if token is not None and len(token) < 8:
        raise ConfigError("the bearer token must have at least 8 characters")
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        raise ConfigError("the bearer token must be printable ASCII without spaces (HTTP headers carry nothing "
                          "else, so a client could never send it); e.g. MASKCLS_SERVE_TOKEN=$(openssl rand -hex 16)")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 = any free port), or a clear error when it is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({e})") from None
    family, kind, proto, _, addr = infos[0]
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP;
    # without it a response's header and body writes wait ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise MaskclsError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port, or stop the "
                           "program that uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def uvicorn_server(app, options: ServeOptions, *, access_log: bool = True, graceful_s: float = 30.0,
                   log_level: str = "info", limit_concurrency: int | None = None):
    """The uvicorn server for ``app``: h11 with the connection guard of ``options.connections``.

    ``limit_concurrency``: connections beyond which requests get uvicorn's own 503, a backstop above the
    image queue's limit (default: 512, or 4 × ``max_queue``); idle and slow connections are closed by the
    guard, and each client holds only ``per_client`` of them.
    """
    import uvicorn
    limit = limit_concurrency or max(512, 4 * options.limits.max_queue)
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=graceful_s,
                            limit_concurrency=limit, timeout_keep_alive=15, server_header=False,
                            http=guarded_protocol(options.connections),
                            ws="none")  # no WebSocket routes: an upgrade would leave the guarded protocol
    return uvicorn.Server(config)


def serve(run: str | Path, sock: socket.socket, options: ServeOptions, *, access_log: bool = True,
          graceful_s: float = 30.0, loader=None) -> bool:
    """Serve ``run`` on the bound ``sock`` until SIGINT/SIGTERM; raise when the model cannot be loaded.

    Returns after a graceful shutdown on SIGINT (Ctrl+C); SIGTERM ends the process as the signal does.
    Returns True when stopped while the model was still loading: its load thread still runs native
    code, and a program that exits now should end with ``os._exit`` (the ``maskcls serve`` command
    does). ``loader``: see :func:`.app.create_app`.
    """
    import uvicorn
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop(err: BaseException) -> None:
        failure.append(err)
        if server is not None:
            server.should_exit = True

    app = create_app(run, options, loader=loader, on_load_error=stop)
    server = uvicorn_server(app, options, access_log=access_log, graceful_s=graceful_s)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl+C it shut down on: stopping is the normal end
        pass
    if not failure and loading():
        # Native code (ONNX Runtime's session, torch) may still run on the load thread.
        log.info("stopped while the model was loading")
        return True
    if failure:
        err = failure[0]
        raise err if isinstance(err, (MaskclsError, FileNotFoundError)) else MaskclsError(f"cannot serve {run}: {err}")
    return False
