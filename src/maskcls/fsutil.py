"""Files and processes: atomic writes, new directories, free names, the default worker count, a TCP probe.

Every file maskcls writes goes through :func:`atomic_path`: a uniquely named temporary file
beside the target, flushed to disk, then ``os.replace``d onto it. A crash or Ctrl-C at any
moment leaves either the old file or the new one, never half of one, and two writers never
share a temporary name.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Callable, Iterator

from .errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path, *, before_replace: Callable[[], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, fsync it and rename it onto ``path``.

    Args:
        path: the file to (re)place.
        before_replace: called after the new content is on disk and just before the rename
            (e.g. to rotate the previous version aside).
    """
    path = Path(path)
    tmp = _new_file_beside(path)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut only once the directory is on disk
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (renames, new files) to disk; a no-op where directories cannot be
    opened (Windows) or synced (some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_beside(path: Path) -> str:
    """A new empty file ``.NAME.<random>.tmp`` beside ``path`` with the usual permissions: created with mode 0o666,
    which the kernel narrows by the process's umask (mkstemp's files are private; reading the umask means
    setting it, which changes the mode of a file another thread creates at that moment)."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, *, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (caches, optional hints: for a
    file whose damage must not go unnoticed use :func:`load_json`)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def load_json(path: str | Path, *, fix: str, missing_ok: bool = False) -> dict | None:
    """The JSON object in ``path``, read strictly: a damaged or non-object file is a :class:`DataError`
    naming it and saying ``fix``; a missing one is None with ``missing_ok``, else FileNotFoundError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path} not found; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path} cannot be read ({e.__class__.__name__}); {fix}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); {fix}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a JSON {type(obj).__name__}, not an object; {fix}")
    return obj


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


def can_connect(host: str, port: int, timeout: float) -> bool:
    """True when ``host:port`` accepts a TCP connection within ``timeout`` seconds (the one network probe:
    tracker servers and the model hub are checked with it before anything waits on them)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask: a container's or taskset's limit, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def default_workers(cap: int = 8) -> int:
    """The default number of loader / decoding workers: one per usable CPU, at most ``cap``."""
    return max(1, min(cap, cpu_count()))
