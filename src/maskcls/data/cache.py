"""Optional uint8 cache of centre crops, memory-mapped (decode JPEGs once, not every epoch).

``build_cache`` decodes every image once, takes its centre square resized to ``side×side``
(mode ``square``) or its centred ``side×side`` window unresized (mode ``center``, torchvision's
CenterCrop, for the reference presets) and stores all of them in one ``.npy`` file (``N×side×side×3`` uint8, a plain
format: no pickle) that loaders read through ``np.load(mmap_mode="r")``: the OS page cache
shares it between workers and processes at no memory cost to any of them.

Safety:
* the array is written under a temporary name and ``os.replace``d, then a JSON with the
  key is written the same way: a crash leaves either the old cache or none, never half of
  one, and the key is only ever recorded for a complete array;
* the key hashes (format version, side, every path, its size and mtime), so any changed,
  added, removed or reordered input rebuilds the cache instead of reusing stale crops.

The training engine calls it with ``side = round(image_size · 1.15)`` so that the random
resized crop has margin to work with (``fast``), or with mode ``center`` and side 380.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError
from ..fsutil import atomic_path, atomic_write_json
from .fastaug import center_crop, center_square, resize
from .imageio import read_rgb
from .loader import tune_malloc

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_CHUNK = 64  # images per task: amortises thread hand-off, keeps the memmap writes local
MODES = ("square", "center")


def cache_key(paths: Sequence[str | os.PathLike], side: int, mode: str = "square") -> str:
    """sha256 of (format version, side, mode, each path with its size and mtime in ns)."""
    tag = "" if mode == "square" else f" mode={mode}"  # square keys are those of earlier versions
    h = hashlib.sha256(f"maskcls-crop-cache v{FORMAT_VERSION} side={side}{tag} n={len(paths)}\n".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {p} not found; re-run `maskcls prepare` if the dataset moved") from None
        h.update(os.fsencode(p) + b"\0" + f"{st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_paths(cache_dir: Path, side: int, mode: str = "square") -> tuple[Path, Path]:
    """(array file, key file) of the cache of ``side``-pixel crops in ``cache_dir``."""
    stem = f"crops_{side}" if mode == "square" else f"{mode}_{side}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _load_if_valid(npy: Path, meta: Path, key: str, n: int, side: int) -> np.memmap | None:
    try:
        info = json.loads(meta.read_text())
        if info.get("key") != key:
            return None
        arr = np.load(npy, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):  # missing, unreadable or truncated: rebuild
        return None
    if arr.shape != (n, side, side, 3) or arr.dtype != np.uint8:
        return None
    return arr


def _crop(img: np.ndarray, side: int, mode: str) -> np.ndarray:
    return resize(center_square(img), side) if mode == "square" else center_crop(img, side)


def _fill(out: np.ndarray, paths: Sequence[str], fast: np.ndarray, side: int, mode: str, start: int) -> None:
    for i in range(start, min(start + _CHUNK, len(paths))):
        out[i] = _crop(read_rgb(paths[i], fast=bool(fast[i])), side, mode)


def _fill_all(out: np.ndarray, paths: Sequence[str], fast: np.ndarray, side: int, mode: str, workers: int) -> None:
    """Fill every row with threads; the first error (a DataError naming the file) cancels the rest."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = [pool.submit(_fill, out, paths, fast, side, mode, s) for s in range(0, len(paths), _CHUNK)]
    try:
        for f in futures:
            f.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_space(cache_dir: Path, nbytes: int) -> None:
    free = shutil.disk_usage(cache_dir).free
    if free < nbytes * 1.05:
        raise DataError(f"{cache_dir}: the crop cache needs {nbytes / 1e9:.2f} GB but only "
                        f"{free / 1e9:.2f} GB is free; free space, choose another cache "
                        "directory, or train without the cache")


def build_cache(paths: Sequence[str | os.PathLike], fast: Sequence[bool] | None, cache_dir: Path,
                side: int, workers: int = 2, mode: str = "square") -> np.memmap:
    """Return the ``N×side×side×3`` uint8 crop cache of ``paths``, building it if needed.

    Args:
        paths: image files, in dataset order (row i of the cache is image i).
        fast: per image, whether the libjpeg-turbo decode path is safe (from prepare);
            None = decode everything with PIL.
        cache_dir: directory for ``crops_<side>.npy`` and its ``.json`` key file.
        side: crop side in pixels.
        workers: decoding threads (the decoders and OpenCV release the GIL).
        mode: ``square`` (the centre square resized to side) or ``center`` (the centred
            side×side window, zero-padded where the image is smaller, as CenterCrop does).

    Returns:
        A read-only memory map, reused as is when the key file matches the inputs.

    Raises:
        DataError: an image cannot be decoded (named) or the disk is too small.
        FileNotFoundError: an image is missing.
    """
    if side < 8:
        raise ValueError(f"cache side must be at least 8 pixels, got {side}")
    if mode not in MODES:
        raise ValueError(f"unknown cache mode {mode!r}; valid modes: {', '.join(MODES)}")
    paths = [os.fspath(p) for p in paths]
    fast_arr = np.zeros(len(paths), bool) if fast is None else np.asarray(fast, dtype=bool)
    if fast_arr.shape != (len(paths),):
        raise ValueError(f"fast has {fast_arr.size} entries for {len(paths)} paths")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    npy, meta = cache_paths(cache_dir, side, mode)
    key = cache_key(paths, side, mode)
    arr = _load_if_valid(npy, meta, key, len(paths), side)
    if arr is not None:
        log.info("crop cache %s is up to date (%d images, %d px)", npy, len(paths), side)
        return arr

    nbytes = len(paths) * side * side * 3
    tune_malloc()
    _check_space(cache_dir, nbytes)
    log.info("building crop cache %s: %d images at %d px (%.2f GB)", npy, len(paths), side, nbytes / 1e9)
    t0 = time.perf_counter()
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
        _fill_all(out, paths, fast_arr, side, mode, workers)
        out.flush()
        del out
    # the key last: it is only ever recorded for a complete array
    atomic_write_json(meta, {"key": key, "format_version": FORMAT_VERSION, "side": side, "count": len(paths),
                             "built_seconds": round(time.perf_counter() - t0, 2)}, indent=1)
    log.info("crop cache built in %.1f s", time.perf_counter() - t0)
    return np.load(npy, mmap_mode="r", allow_pickle=False)
