"""Files and processes: atomic writes, new directories, free names, the default worker count.

Every file maskcls writes goes through :func:`atomic_path`: a uniquely named temporary file
beside the target, flushed to disk, then ``os.replace``d onto it. A crash or Ctrl-C at any
moment leaves either the old file or the new one, never half of one, and two writers never
share a temporary name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path, *, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it onto ``path``.

    Args:
        path: the file to (re)place.
        before_replace: called after the new content is on disk and just before the rename
            (e.g. to rotate the previous version aside).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def ensure_new_dir(path: str | Path) -> Path:
    """Create ``path``; refuse if it exists and is not empty (we never overwrite)."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} already exists and is not empty; choose a new folder "
                              "(maskcls never overwrites earlier results)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_name(path: str | Path) -> Path:
    """``path`` if free, else ``stem-2.ext``, ``stem-3.ext``… (outputs never overwrite each other)."""
    path = Path(path)
    if not path.exists():
        return path
    n = 2
    while (alt := path.with_name(f"{path.stem}-{n}{path.suffix}")).exists():
        n += 1
    return alt


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_workers(cap: int = 8) -> int:
    """The default number of loader / decoding workers: one per usable CPU, at most ``cap``."""
    return max(1, min(cap, cpu_count()))
