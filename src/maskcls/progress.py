"""Progress of long steps, readable anywhere: tqdm bars on a terminal, plain lines everywhere else.

A bar redrawn with ``\\r`` is fine on a terminal, but in a file (``nohup``, a cluster job,
``| tee``) it becomes one endless line. Every long step — training and validation epochs,
prediction, ``prepare``'s image check, ``stats``, ``faces``, ``audit`` — reports through
:func:`progress` (or :func:`track` for a plain loop), and this module picks the form::

    from maskcls.progress import progress, track

    with progress(total=len(loader), desc="fold 0 epoch 3/30 train", unit="batch") as bar:
        for batch in loader:
            ...
            bar.update(1, loss=f"{running_loss:.4f}", acc=f"{running_acc:.3f}")

    for x, y, idx in track(loader, desc="predict"):   # one update per item
        ...

``update(n, **metrics)`` advances by ``n`` units and shows the metrics given (strings as they
are, numbers with 4 significant digits); it may be called from worker threads.
``enabled=False`` (ranks other than 0, callers asked to be quiet) makes everything a no-op.

The form, decided when a step starts:

* :func:`configure` ``(every=N)`` or ``(seconds=S)`` — the CLI's ``--log-every N`` /
  ``--log-every 30s`` — plain lines, also on a terminal;
* else ``MASKCLS_PROGRESS``: ``auto`` (default), ``bar``, ``plain`` or ``off``;
* ``auto``: bars when stderr is a terminal (or in a Jupyter kernel), plain lines otherwise.

Plain lines are INFO records of the ``maskcls.progress`` logger (the CLI shows them on stderr):
one every N updates when asked for, else one every ~30 s, and a last one when a step that has
printed ends::

    fold 0 epoch 3/30 train: 120/400 batches (30%), 2.10 batch/s, elapsed 0:57, ETA 2:13 | loss 0.8123 acc 0.712
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

MODES = ("auto", "bar", "plain", "off")
DEFAULT_SECONDS = 30.0
_PLURAL = {"batch": "batches", "img": "images", "image": "images"}


@dataclass
class _Settings:
    mode: str | None = None       # None: MASKCLS_PROGRESS, else auto
    every: int = 0                # plain lines every N updates; 0 = by time
    seconds: float = DEFAULT_SECONDS


_settings = _Settings()


def configure(*, mode: str | None = None, every: int | None = None, seconds: float | None = None) -> None:
    """Set the progress form for this process (the CLI calls it for ``--log-every``).

    Args:
        mode: 'auto', 'bar', 'plain' or 'off'; None = ``MASKCLS_PROGRESS`` (default auto).
        every: a plain line every ``every`` updates (batches); implies mode 'plain' unless given.
        seconds: a plain line every ``seconds``; implies mode 'plain' unless given.
    """
    if mode is not None and mode not in MODES:
        raise ValueError(f"progress mode {mode!r}: choose one of {', '.join(MODES)}")
    if every is not None or seconds is not None:
        mode = mode or "plain"
        _settings.every = max(0, int(every or 0))
        _settings.seconds = float(seconds) if seconds else DEFAULT_SECONDS
    _settings.mode = mode


def reset() -> None:
    """Back to the defaults (``MASKCLS_PROGRESS`` or auto, a line every ~30 s)."""
    _settings.mode, _settings.every, _settings.seconds = None, 0, DEFAULT_SECONDS


def parse_log_every(text: str) -> tuple[int, float | None]:
    """``'50'`` → a line every 50 batches ``(50, None)``; ``'30s'`` → every 30 seconds ``(0, 30.0)``."""
    t = str(text).strip().lower()
    try:
        if t.endswith("s"):
            seconds = float(t[:-1])
            if seconds > 0:
                return 0, seconds
        elif int(t) > 0:
            return int(t), None
    except ValueError:
        pass
    raise ValueError(f"--log-every {text!r}: give a number of batches (50) or of seconds (30s), above 0")


def resolve_mode(stream=None) -> str:
    """The form a step starting now takes: 'bar', 'plain' or 'off'."""
    mode = _settings.mode or os.environ.get("MASKCLS_PROGRESS", "").strip().lower() or "auto"
    if mode not in MODES:
        log.warning("MASKCLS_PROGRESS=%s is not one of %s; using auto", mode, ", ".join(MODES))
        mode = "auto"
    if mode != "auto":
        return mode
    stream = stream if stream is not None else sys.stderr
    return "bar" if _isatty(stream) or "ipykernel" in sys.modules else "plain"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    h, m = divmod(s, 3600)
    return f"{h}:{m // 60:02d}:{m % 60:02d}" if h else f"{m // 60}:{m % 60:02d}"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Progress:
    """A running step; use :func:`progress` to make one. Closes itself as a context manager."""

    def update(self, n: int = 1, **metrics) -> None:
        """Advance by ``n`` units; ``metrics`` (loss=…, acc=…) replace the shown ones."""

    def close(self) -> None:
        """End the step (a last plain line if the step has printed any)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class _Bar(Progress):
    """A tqdm bar; thread-safe (tqdm's own lock guards its output, not its counter: ``faces`` and
    ``stats`` update from thread pools)."""

    def __init__(self, *, total, desc, unit, initial):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
        self._lock = threading.Lock()

    def update(self, n: int = 1, **metrics) -> None:
        with self._lock:
            if metrics:
                self.bar.set_postfix({k: _fmt(v) for k, v in metrics.items()}, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        with self._lock:
            self.bar.close()


class PlainProgress(Progress):
    """Progress as log lines: every ``every`` updates, else every ``seconds``; thread-safe."""

    def __init__(self, *, total: int | None, desc: str, unit: str, initial: int = 0, every: int = 0,
                 seconds: float = DEFAULT_SECONDS, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log):
        self.total, self.desc, self.unit, self.every, self.seconds = total, desc, unit, every, seconds
        self.n, self.initial, self.calls, self.metrics = initial, initial, 0, {}
        self.clock, self.logger = clock, logger
        self.t0 = self.last = clock()
        self.printed_at: int | None = None  # the count of the last line printed
        self._lock = threading.Lock()

    def update(self, n: int = 1, **metrics) -> None:
        with self._lock:
            self.n += n
            self.calls += 1
            self.metrics.update(metrics)
            now = self.clock()
            due = self.calls % self.every == 0 if self.every else now - self.last >= self.seconds
            if due:
                self._emit(now)

    def close(self) -> None:
        with self._lock:
            if self.printed_at is not None and self.printed_at != self.n:
                self._emit(self.clock())

    def _emit(self, now: float) -> None:
        self.logger.info(self.line(now))
        self.last, self.printed_at = now, self.n

    def line(self, now: float) -> str:
        """``desc: n/total units (pct), rate unit/s, elapsed m:ss, ETA m:ss | metrics``."""
        elapsed = now - self.t0
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        units = _PLURAL.get(self.unit, self.unit + "s")
        parts = [f"{self.n}/{self.total} {units} ({100 * self.n / self.total:.0f}%)" if self.total
                 else f"{self.n} {units}"]
        parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 0.1 or rate == 0 else f"{1 / rate:.1f} s/{self.unit}")
        parts.append(f"elapsed {_clock(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        shown = " ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items())
        return f"{self.desc}: {', '.join(parts)}" + (f" | {shown}" if shown else "")


def progress(*, total: int | None, desc: str, unit: str = "batch", initial: int = 0,
             enabled: bool = True) -> Progress:
    """A progress reporter for one long step, in the form :func:`resolve_mode` picks.

    Args:
        total: units the step will do (None when unknown: no percentage or ETA).
        desc: what runs, the start of every line ("fold 0 epoch 3/30 train", "faces").
        unit: what one unit is ("batch", "img"); rates are units per second.
        initial: units already done before this start (a resumed step).
        enabled: False = a no-op (ranks other than 0, quiet callers).
    """
    mode = resolve_mode() if enabled else "off"
    if mode == "bar":
        return _Bar(total=total, desc=desc, unit=unit, initial=initial)
    if mode == "plain":
        return PlainProgress(total=total, desc=desc, unit=unit, initial=initial, every=_settings.every,
                             seconds=_settings.seconds)
    return Progress()


def track(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "batch",
          enabled: bool = True) -> Iterator[T]:
    """Yield from ``iterable``, one progress update per item (total: ``len(iterable)`` when it has one)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with progress(total=total, desc=desc, unit=unit, enabled=enabled) as p:
        for item in iterable:
            yield item
            p.update(1)
