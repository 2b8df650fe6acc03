"""Micro-batching: images of concurrent requests run through the model together.

A model call has a cost per call (framework dispatch, kernel launches, a GPU round trip) on
top of its cost per image, so images from concurrent requests are gathered: a batch leaves when
it holds ``max_batch`` images, or when its oldest image has waited ``max_wait_ms`` — counted
from that image's arrival, so images that queued while the model was busy leave at once. It
waits only while more images are on their way (``incoming``: admitted requests still being
decoded); with nothing else in flight a lone request runs at once instead of paying the wait.
The model runs on dedicated threads, never on the event loop: one batch at a time with all of
the model's own threads, or with ``streams`` > 1 up to that many batches at once (a predictor of
several ONNX Runtime sessions, :class:`.model.SessionPool`): a batch leaves as soon as a stream is
free, and images gather while every stream is busy. ``max_batch=1`` is plain
one-request-at-a-time serving.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

log = logging.getLogger(__name__)


class MicroBatcher:
    """Gathers single images into model batches.

    Args:
        predict: uint8 N×3×S×S → N×K probabilities; called on the batcher's own thread.
        max_batch: most images per model call.
        max_wait_ms: longest an image waits for its batch to fill.
        incoming: how many images are admitted but not yet handed to the batcher; the batch
            waits for them only (None: always wait up to ``max_wait_ms``).
        streams: model calls that may run at once (the predictor must allow as many callers).
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16,
                 max_wait_ms: float = 10.0, incoming: Callable[[], int] | None = None, streams: int = 1):
        if max_batch < 1 or max_wait_ms < 0 or streams < 1:
            raise ValueError(f"max_batch and streams must be >= 1 and max_wait_ms >= 0, not {max_batch}, {streams} "
                             f"and {max_wait_ms}")
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.incoming = incoming
        self._items: deque[tuple[np.ndarray, asyncio.Future, float]] = deque()
        self._arrived = asyncio.Event()
        self.streams = streams
        self._pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="maskcls-infer")
        self._task: asyncio.Task | None = None
        self._free: asyncio.Semaphore | None = None  # streams not running a batch
        self._calls: set[asyncio.Task] = set()
        self._busy = 0  # batches in the model now
        self._running = 0  # images in the model calls now
        self.batches = self.images = 0  # counters for /readyz and the benchmark

    @property
    def in_flight(self) -> int:
        """Images queued or in the model."""
        return len(self._items) + self._running

    def start(self) -> None:
        self._free = asyncio.Semaphore(self.streams)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="maskcls-batcher")

    async def run(self, images: list[np.ndarray]) -> np.ndarray:
        """Probabilities of ``images`` (each 3×S×S uint8), in order."""
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        futures = []
        for x in images:
            fut = loop.create_future()
            self._items.append((x, fut, time.monotonic()))
            futures.append(fut)
        self._arrived.set()
        return np.stack(await asyncio.gather(*futures))

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future, float]]:
        n = min(self.max_batch, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        return [b for b in batch if not b[1].done()]  # a cancelled request's images are dropped

    async def _gather(self) -> None:
        """Wait until the oldest image's deadline passes or a full batch is there."""
        while len(self._items) < self.max_batch:
            if self.incoming is not None and self.incoming() <= 0:
                return  # nothing else on its way: waiting would only add latency
            remaining = self._items[0][2] + self.max_wait - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _run(self) -> None:
        while True:
            while not self._items:
                self._arrived.clear()
                await self._arrived.wait()
            await self._free.acquire()  # a stream is free; images keep gathering while none is
            await self._gather()
            batch = self._take()
            if not batch:
                self._free.release()
                continue
            self._busy, self._running = self._busy + 1, self._running + len(batch)
            call = asyncio.get_running_loop().create_task(self._call(batch))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[np.ndarray, asyncio.Future, float]]) -> None:
        """One model call on a free stream; its results (or its error) go to the waiting requests."""
        loop = asyncio.get_running_loop()
        try:
            probs = await loop.run_in_executor(self._pool, self.predict, np.stack([b[0] for b in batch]))
        except Exception as e:  # every waiting request learns of it; the batcher keeps serving
            log.exception("model failed on a batch of %d", len(batch))
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            self._busy, self._running = self._busy - 1, self._running - len(batch)
            self._free.release()
        self.batches, self.images = self.batches + 1, self.images + len(batch)
        for (_, fut, _), p in zip(batch, probs):
            if not fut.done():
                fut.set_result(p)

    async def close(self) -> None:
        """Finish what is queued, then stop (graceful shutdown)."""
        while (self._items or self._busy) and self._task is not None and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=True)
