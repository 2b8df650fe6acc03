"""What one request may cost the server, and the errors a refused request gets.

Every limit answers before memory grows: the body is counted while it arrives (413 past
``max_upload_bytes``, whatever Content-Length claimed), an image's pixels are read from its
header before it is decoded (413 past ``max_pixels``: decompression bombs), a request holds
at most ``max_images`` photos, and at most ``max_queue`` images may be admitted and not yet
answered — beyond that the server answers 503 with Retry-After at once instead of queueing.
Decoding costs memory by pixels, not by bytes (a flat 7000×7000 PNG is 47 KB on the wire and
about 500 MB decoded: 10–15 bytes per pixel through decode and resize), so the pixels being
decoded at once, over all requests, stay within ``decode_budget_pixels``: a request whose photos
hold more together is refused with 413, and requests wait (first come, first served) for their
pixels to fit, whatever the number of decode workers.
Errors are JSON ``{"error": {"code", "message", "file"?}}``; the message names the file and
says what to do.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

from ..data.imageio import MAX_PIXELS
from ..errors import ConfigError

MiB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-request and server-wide limits of ``maskcls serve``.

    Args:
        max_upload_bytes: largest request body (all photos of a request together).
        max_pixels: largest image, width × height after decoding its header; at most
            maskcls' decoder limit (``data.imageio.MAX_PIXELS``).
        max_images: photos in one request.
        max_queue: images admitted and not yet answered, over all requests; more → 503.
        decode_budget_pixels: pixels decoded at once over all requests, and the most one request's
            photos may hold together (64 MP: about 0.6–1 GB of decode memory); at least ``max_pixels``.
    """
    max_upload_bytes: int = 20 * MiB
    max_pixels: int = MAX_PIXELS
    max_images: int = 16
    max_queue: int = 64
    decode_budget_pixels: int = 64_000_000

    def check(self) -> None:
        if self.max_upload_bytes < 1024:
            raise ConfigError(f"--max-upload-mb must allow at least 1 KiB, not {self.max_upload_bytes} bytes")
        if not 64 * 64 <= self.max_pixels <= MAX_PIXELS:
            raise ConfigError(f"--max-pixels must be in [{64 * 64}, {MAX_PIXELS:,}] (the decoder's own "
                              f"decompression-bomb limit), not {self.max_pixels:,}")
        if self.max_images < 1:
            raise ConfigError(f"--max-images must be >= 1, not {self.max_images}")
        if self.max_queue < self.max_images:
            raise ConfigError(f"--max-queue ({self.max_queue}) must be at least --max-images ({self.max_images}), "
                              "or a full request could never be admitted")
        if self.decode_budget_pixels < self.max_pixels:
            raise ConfigError(f"--decode-budget-mp ({self.decode_budget_pixels / 1e6:g} MP) must be at least "
                              f"--max-pixels ({self.max_pixels / 1e6:g} MP), or an accepted photo could never be "
                              "decoded")


class ApiError(Exception):
    """A refused request: HTTP status, a stable ``code``, a message naming the file and the fix."""

    def __init__(self, status: int, code: str, message: str, *, file: str | None = None,
                 headers: dict[str, str] | None = None, details: list[ApiError] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.file = status, code, message, file
        self.headers, self.details = headers or {}, details or []

    def payload(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.file is not None:
            err["file"] = self.file
        body = {"error": err}
        if self.details:
            body["errors"] = [d.payload()["error"] for d in self.details]
        return body

    @classmethod
    def combine(cls, errors: list[ApiError]) -> ApiError:
        """One error for several bad files: the first one's status and code, every file listed."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        files = ", ".join(e.file or "?" for e in errors)
        return cls(first.status, first.code, f"{len(errors)} uploads refused ({files}): {first.message}",
                   file=first.file, details=errors)


def overloaded(pending: int, capacity: int) -> ApiError:
    return ApiError(503, "overloaded", f"the server is busy ({pending} of {capacity} queued images); retry in a "
                    "second", headers={"Retry-After": "1"})


class Admission:
    """Images admitted and not yet answered, over all requests (the event loop's own counter: no lock)."""

    def __init__(self, capacity: int):
        self.capacity, self.pending, self.refused = capacity, 0, 0

    @contextlib.contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Admit ``n`` images for the block, or raise a 503 :class:`ApiError` when the queue is full."""
        if self.pending + n > self.capacity:
            self.refused += 1
            raise overloaded(self.pending, self.capacity)
        self.pending += n
        try:
            yield
        finally:
            self.pending -= n


class PixelBudget:
    """Pixels being decoded, over all requests: a request waits (first come, first served) until its
    photos' pixels fit in ``capacity`` (event-loop only: no lock)."""

    def __init__(self, capacity: int):
        self.capacity, self.used = capacity, 0
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()

    def refuse_if_over(self, pixels: int, photos: int) -> None:
        """413 for a request whose photos could never fit the budget together."""
        if pixels > self.capacity:
            raise ApiError(413, "too_many_pixels", f"the {photos} photo(s) of this request hold {pixels / 1e6:.1f} "
                           f"MP together, over this server's decode budget of {self.capacity / 1e6:g} MP per "
                           "request; send them in several requests, or smaller (the model sees a few hundred pixels)")

    @contextlib.asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Hold ``pixels`` (at most ``capacity``) for the block, waiting for them to be free."""
        if pixels > self.capacity:
            raise ValueError(f"{pixels} pixels can never fit a budget of {self.capacity}")
        if self._waiting or self.used + pixels > self.capacity:
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append((pixels, turn))
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # granted just as the request went away
                    self._release(pixels)
                else:
                    self._waiting.remove((pixels, turn))
                    self._grant()
                raise
        else:
            self.used += pixels
        try:
            yield
        finally:
            self._release(pixels)

    def _release(self, pixels: int) -> None:
        self.used -= pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            pixels, turn = self._waiting.popleft()
            if not turn.done():
                self.used += pixels
                turn.set_result(None)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, counted as they arrive."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _error(self) -> ApiError:
        mb = self.max_bytes / MiB
        return ApiError(413, "upload_too_large", f"the request body is over {mb:g} MiB; send fewer or smaller "
                        "photos per request (the model sees them at a few hundred pixels)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _send_json(send, self._error())
        seen, started = 0, False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if started:
                raise
            await _send_json(send, self._error())


async def _send_json(send, err: ApiError) -> None:
    body = json.dumps(err.payload()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
