"""What one connection may hold: time limits on a request's headers and body, and connections per client.

uvicorn times out only idle keep-alive connections: a client that opens a connection and sends
nothing, part of a request's headers, or a body one byte every few seconds holds its connection
for ever, and a few hundred such connections fill the server's connection cap (every other
client, ``/healthz`` included, then gets 503). This happens before any route or token check.
:func:`guarded_protocol` is uvicorn's h11 protocol with three guards at the transport level:

- the request line and headers must arrive within ``header_timeout_s`` of the connection's
  first byte of that request (or of the connection itself): else ``408`` and the connection closes;
- the body must arrive within ``body_timeout_s`` of the headers' end: else the connection closes
  (the request handler sees a disconnect);
- one client (an IPv4 address, or an IPv6 /64: one machine's usual allotment) holds at most
  ``per_client`` connections at once: more are answered ``429`` and closed at once.

While the application works on a request (the body is read) no limit applies: the model's own
time is bounded by the image queue (``limits.Admission``).
"""
from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-connection limits of ``maskcls serve``.

    Args:
        header_timeout_s: longest a request's line and headers may take to arrive.
        body_timeout_s: longest a request's body may take to arrive after its headers
            (60 s: the default 20 MiB upload limit at 2.8 Mbit/s).
        per_client: connections one client address may hold open at once (a browser opens
            at most 6 per host; ``maskcls bench serve`` up to 32, twice that leaves room for
            connections of a finished client not yet seen closed).
    """
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    per_client: int = 64

    def check(self) -> None:
        for name, value in (("--header-timeout", self.header_timeout_s), ("--body-timeout", self.body_timeout_s)):
            if not 0 < value <= 3600:
                raise ConfigError(f"{name} must be in (0, 3600] seconds, not {value}")
        if self.per_client < 1:
            raise ConfigError(f"--max-client-connections must be >= 1, not {self.per_client}")


def client_key(host: str) -> str:
    """The address a per-client limit counts: the IPv4 address, or the IPv6 address's /64 network."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if addr.version == 6:
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def raw_response(status: int, reason: str, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` JSON response, written before (or instead of) h11's own."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}",
             "connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Throttled:
    """At most one log line per ``every_s`` for a repeated event (an attack must not flood the log)."""

    def __init__(self, every_s: float = 10.0):
        self.every_s, self.last, self.skipped = every_s, -float("inf"), 0

    def warn(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            self.skipped += 1
            return
        more = f" (and {self.skipped} more like it)" if self.skipped else ""
        log.warning(message + more, *args)
        self.last, self.skipped = now, 0


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of :class:`ConnectionLimits` (see the module's docstring).

    Use :func:`guarded_protocol`: it makes a subclass holding one server's limits and client counts.
    """
    limits: ConnectionLimits = ConnectionLimits()
    open_per_client: Counter[str] = Counter()
    throttled: _Throttled = _Throttled()
    _key: str | None = None
    _refused = False
    _timer = None
    _phase: str | None = None  # "headers" | "body" | None (no limit running)

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self._key = client_key(str(peer[0])) if peer else None
        per_client = self.limits.per_client
        if self._key is not None and self.open_per_client[self._key] >= per_client:
            self._refused = True
            self.throttled.warn("refusing connections from %s: it already holds %d (--max-client-connections)",
                                self._key, per_client)
            transport.write(raw_response(429, "Too Many Requests", "too_many_connections",
                                         f"this address already holds {per_client} open connections to the "
                                         "server; reuse them or close some", {"retry-after": "1"}))
            transport.close()
            return
        if self._key is not None:
            self.open_per_client[self._key] += 1
        super().connection_made(transport)
        self._watch(fresh=True)

    def connection_lost(self, exc) -> None:
        if self._refused:
            return
        self._arm(None)
        if self._key is not None:
            self.open_per_client[self._key] -= 1
            if self.open_per_client[self._key] <= 0:
                del self.open_per_client[self._key]
            self._key = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(fresh=False)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch(fresh=False)

    def _watch(self, *, fresh: bool) -> None:
        """Start, keep or stop the limit that fits what the connection is waiting for now."""
        if self.transport is None or self.transport.is_closing():
            return self._arm(None)
        state = self.conn.their_state
        if state is h11.IDLE:
            # waiting for a request: limited once the connection is new or part of a request arrived;
            # between requests on a kept-alive connection uvicorn's keep-alive timeout applies
            started = fresh or bool(self.conn.trailing_data[0]) or self._phase == "headers"
            self._arm("headers" if started else None)
        elif state is h11.SEND_BODY:
            self._arm("body")
        else:  # the request is read (the application works on it), or the connection is ending
            self._arm(None)

    def _arm(self, phase: str | None) -> None:
        if phase == self._phase and (phase is None or self._timer is not None):
            return  # a running limit keeps its deadline
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase
        if phase is not None:
            delay = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
            self._timer = self.loop.call_later(delay, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing() or self._phase != phase:
            return
        limit = self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s
        self.throttled.warn("closed a connection from %s: its request %s did not arrive within %g s", self._key,
                            "line and headers" if phase == "headers" else "body", limit)
        if phase == "headers" and self.conn.our_state is h11.IDLE:
            self.transport.write(raw_response(408, "Request Timeout", "request_timeout",
                                              f"the request's headers did not arrive within {limit:g} s"))
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """The protocol class for one server (``uvicorn.Config(http=...)``): ``limits`` and its own client counts."""
    limits.check()
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"limits": limits, "open_per_client": Counter(), "throttled": _Throttled()})
