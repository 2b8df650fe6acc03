"""Which ``Host`` a request may name and which web pages may send it (``Origin``).

Without these checks a server on 127.0.0.1 without a token is reachable from any web page
the user opens: by DNS rebinding (a page's own name made to resolve to 127.0.0.1: the browser
then sends ``Host: evil.example``), and by plain cross-site form posts, which a browser sends
without asking first (multipart is a "simple" request) — enough to burn the server's CPU and
memory. :class:`HostOriginGuard` therefore answers:

- ``421 wrong_host`` unless the ``Host`` header names the address the connection arrived on
  (``127.0.0.1``, ``[::1]``, the machine's address for ``--host 0.0.0.0``), ``localhost`` on a
  loopback connection, the ``--host`` the server was started with, or a name given with
  ``--allow-host`` (``*.example.org`` for a domain's names; ``*`` switches the check off);
- ``403 cross_origin`` for a request with an ``Origin`` header (what browsers send with posts and
  scripted requests) other than the page's own (``Origin`` equal to ``http://`` + ``Host``), unless
  that origin was given with ``--allow-origin`` (``*`` for any); allowed origins also get the CORS
  headers that let their pages read the answers.
"""
from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

from ..errors import ConfigError

WILDCARD_BINDS = {"", "0.0.0.0", "::", "*"}


def host_name(header: str) -> str:
    """The host part of a ``Host`` header, lower case, without port, brackets or trailing dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, the default port dropped; ``null`` and ``*`` as they are."""
    origin = origin.strip().lower().rstrip("/")
    if origin in ("null", "*"):
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
        raise ConfigError(f"--allow-origin {origin!r}: give an origin such as https://example.org or "
                          "http://localhost:3000 (scheme, host and port only)")
    default = {"http": 80, "https": 443}[parts.scheme]
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


def check_allowed_hosts(hosts: list[str]) -> list[str]:
    out = []
    for h in hosts:
        name = h.strip().lower().rstrip(".")
        if not name or "/" in name or " " in name:
            raise ConfigError(f"--allow-host {h!r}: give a host name (example.org, *.example.org) or an address")
        out.append(name)
    return out


class HostOriginGuard:
    """ASGI middleware: refuse requests whose Host or Origin this server was not started for.

    Args:
        app: the ASGI application.
        hosts: names accepted in ``Host`` besides the connection's own address (``*`` = any).
        origins: normalised origins accepted besides the page's own (``*`` = any).
    """

    def __init__(self, app, *, hosts: list[str], origins: list[str]):
        self.app = app
        self.hosts = set(check_allowed_hosts(hosts))
        self.origins = {normalize_origin(o) for o in origins}

    def host_ok(self, name: str, server: tuple | None) -> bool:
        if "*" in self.hosts or name in self.hosts:
            return True
        if any(h.startswith("*.") and name.endswith(h[1:]) for h in self.hosts):
            return True
        local = str(server[0]).lower() if server else None
        if local is not None and name == local:
            return True
        return name == "localhost" and local is not None and _is_loopback(local)

    def origin_ok(self, origin: str, host_header: str) -> bool:
        if "*" in self.origins:
            return True
        try:
            normal = normalize_origin(origin)
        except ConfigError:
            return False
        return normal in self.origins or normal in (normalize_origin(f"http://{host_header}"),
                                                    normalize_origin(f"https://{host_header}"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get(b"host", "")
        if not self.host_ok(host_name(host), scope.get("server")):
            return await _refuse(send, 421, "wrong_host",
                                 f"this server does not answer to the host {host_name(host)!r}; start it with "
                                 "--allow-host NAME to serve that name (a name that points at a loopback server "
                                 "may be a DNS-rebinding attack)")
        origin = headers.get(b"origin")
        if origin is not None and not self.origin_ok(origin, host):
            return await _refuse(send, 403, "cross_origin",
                                 f"requests from web pages of {origin!r} are refused; start the server with "
                                 "--allow-origin ORIGIN to accept them")
        return await self.app(scope, receive, send)


async def _refuse(send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"vary", b"origin")]})
    await send({"type": "http.response.body", "body": body})
