"""Batch loaders: worker processes (torch's DataLoader) or a thread pool in this process.

Why threads: our transforms spend their time in libjpeg-turbo and OpenCV, which release
the GIL, so threads run them in parallel like processes do — without sending every batch
through shared memory. A 30×3×380×380 uint8 batch is 13 MB; handing it from a worker
process to the trainer costs fresh shared-memory pages on both sides, and measured on the
crop cache that hand-off ate more than the second core gave (2 worker processes were
slower than none). The thread loader assembles each batch straight into one tensor.

Why not always: threads share the GIL with the training loop. Training on this 2-core CPU
(demo data, 128 px, crop cache) ran at 32 img/s with 2 worker processes and 24-27 img/s
with 2 threads: there the model is the bottleneck, batches are small, and the trainer's
own Python waits for the GIL. So ``kind="auto"`` picks threads when CUDA is present (the
device is fast, the loader is what can starve it, and uint8 batches at full size are
large) and processes on CPU-only machines — and processes for transforms that are not
thread-safe (the ``reference`` preset seeds torch's and Python's global RNGs).

Both kinds yield exactly what ``DataLoader``'s default collation yields for an
:class:`~maskcls.data.dataset.ImageDataset` — ``(uint8 N×C×H×W, int64 labels, int64
indices)`` — in sampler order, with the same pixels (augmentation depends on (seed, epoch,
index) only). (A DataLoader with workers draws one number from torch's global RNG per
epoch for its worker seeds, so dropout masks, not batches, differ between the kinds.)
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from ..errors import MaskclsError

KINDS = ("auto", "threads", "processes")


@contextlib.contextmanager
def opencv_threads(n: int) -> Iterator[None]:
    """OpenCV's own thread pool at ``n`` threads while the block runs, and as it was after. The loader's workers
    decode and augment in parallel already; OpenCV's pool on top of them would oversubscribe the cores. Set where
    a loader starts, not at import: importing maskcls changes nothing in a program that uses OpenCV itself."""
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


class ThreadLoader:
    """Batches of ``dataset[i]`` for the indices of ``sampler``, built by ``threads`` threads.

    Each batch is one task (a thread fills one batch tensor); up to ``prefetch`` batches are
    in flight, handed out in order. An exception in a task (e.g. a DataError naming the
    file) is raised by the iterator; breaking out of the loop cancels pending batches.

    Args:
        dataset: items ``(C×H×W tensor, int label, int index)`` of one shape.
        batch_size: images per batch.
        sampler: any sampler (an epoch or distributed sampler: set its epoch first).
        threads: worker threads (≥ 1).
        drop_last: drop a final incomplete batch.
        pin_memory: allocate batches in page-locked memory (faster, asynchronous copies to
            a CUDA device).
        prefetch: batches in flight (default 2 per thread).
    """

    def __init__(self, dataset: Dataset, *, batch_size: int, sampler: Sampler | Sequence[int], threads: int,
                 drop_last: bool = False, pin_memory: bool = False, prefetch: int | None = None):
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.dataset, self.sampler = dataset, sampler
        self.threads, self.pin_memory = int(threads), bool(pin_memory)
        self.batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.prefetch = max(1, prefetch if prefetch is not None else 2 * self.threads)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def _load(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first, label, idx = self.dataset[indices[0]]
        x = torch.empty((len(indices),) + tuple(first.shape), dtype=first.dtype, pin_memory=self.pin_memory)
        labels = np.empty(len(indices), dtype=np.int64)
        index = np.empty(len(indices), dtype=np.int64)
        x[0], labels[0], index[0] = first, label, idx
        load_into = getattr(self.dataset, "load_into", None)  # writes into the batch: one copy less
        for k in range(1, len(indices)):
            if load_into is not None:
                label, idx = load_into(indices[k], x[k])
            else:
                img, label, idx = self.dataset[indices[k]]
                x[k] = img
            labels[k], index[k] = label, idx
        return x, torch.from_numpy(labels), torch.from_numpy(index)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        with opencv_threads(1):
            yield from self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        batches = iter(self.batch_sampler)
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="maskcls-loader")
        pending: collections.deque[Future] = collections.deque()
        try:
            for indices in batches:
                pending.append(pool.submit(self._load, list(indices)))
                if len(pending) >= self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def thread_safe(dataset: Dataset) -> bool:
    """Whether the dataset's transform may run in several threads at once."""
    return getattr(getattr(dataset, "transform", None), "thread_safe", True)


def build_loader(dataset: Dataset, *, batch_size: int, sampler: Sampler | Sequence[int], workers: int,
                 kind: str = "auto", drop_last: bool = False, pin_memory: bool | None = None):
    """A loader of ``kind`` (``auto`` = threads with CUDA where the transform allows, else processes).

    ``workers`` = 0 loads in the calling thread (a plain DataLoader, no parallelism).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown loader kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    tune_malloc()  # before workers fork; batches and images come and go: keep the pages
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if kind == "auto":
        kind = "threads" if torch.cuda.is_available() and thread_safe(dataset) else "processes"
    if workers > 0 and kind == "threads":
        if not thread_safe(dataset):
            raise ValueError(f"loader kind 'threads' cannot run {dataset.transform!r}: it is not thread-safe (it "
                             "draws from process-wide RNGs); use kind 'processes' or 'auto'")
        return ThreadLoader(dataset, batch_size=batch_size, sampler=sampler, threads=workers,
                            drop_last=drop_last, pin_memory=pin)
    kwargs = {"prefetch_factor": 2} if workers > 0 else {}
    return ProcessLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin,
                         drop_last=drop_last, persistent_workers=False, **kwargs)


class ProcessLoader(DataLoader):
    """torch's DataLoader, except that a user error raised in a worker process arrives as itself.

    DataLoader re-raises a worker's exception as the same type with the message
    ``Caught DataError in DataLoader worker process 1. Original Traceback …`` — twenty lines
    where the user needs one (``image X not found: …``). User errors (maskcls errors and
    OS errors such as a deleted file) get their original one-line message back; the worker's
    traceback stays attached as the cause. Anything else (a bug) keeps torch's full report.
    """

    def __iter__(self):
        # one OpenCV thread from before the workers fork: they inherit it (OpenCV's pool does not survive a fork; a
        # worker that touched it, even to resize it, would wait forever), and the trainer's own decoding uses it too
        with opencv_threads(1):
            yield from self._batches()

    def _batches(self):
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (MaskclsError, OSError) as e:
                original = unwrap_worker_error(e)
                if original is e:
                    raise
                raise original from e
            yield batch


def unwrap_worker_error(e: BaseException) -> BaseException:
    """The exception a DataLoader worker raised, rebuilt with its own message (``e`` itself when it
    is not a re-raised worker error or cannot be rebuilt)."""
    msg = str(e)
    if not msg.startswith(f"Caught {type(e).__name__} ") or "\nOriginal Traceback" not in msg:
        return e
    text = msg.rstrip("\n")
    # The traceback's last part is "<module>.<Name>: <message>" (just "<Name>: " for builtins).
    for prefix in (f"\n{type(e).__module__}.{type(e).__qualname__}: ", f"\n{type(e).__qualname__}: "):
        at = text.rfind(prefix)
        if at >= 0:
            try:
                return type(e)(text[at + len(prefix):])
            except Exception:  # noqa: BLE001 - an exception type that takes other arguments: keep torch's
                return e
    return e


def set_epoch(loader, epoch: int) -> None:
    """Select epoch ``epoch`` of a loader built by :func:`build_loader`: its sampler's order and
    its dataset's augmentation stream (call before iterating; workers are not persistent)."""
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


_MALLOC_TUNED = False


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Keep freed heap memory for reuse instead of returning it to the OS (glibc only).

    Each image allocates and frees a few 0.4–2 MB arrays. glibc's defaults hand such
    blocks back to the kernel and fault them in again on the next image; page faults are
    costly (≈2.5 µs per 4 kB page in the VMs this was measured on): re-faulting took
    about 45% of the time of decode + centre square + resize. Retained memory is bounded by
    the process's peak use. Idempotent; returns False where glibc's ``mallopt`` is
    unavailable (a no-op there).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, int(mmap_threshold)) == 1  # M_MMAP_THRESHOLD
        ok = libc.mallopt(-1, int(trim_threshold)) == 1 and ok  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False
    _MALLOC_TUNED = ok
    return ok
