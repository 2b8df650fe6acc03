"""Face crops: detect the face in every manifest image once and store square crops.

``maskcls faces DIR`` writes ``DIR/faces/``:

* ``crops.npy``  — uint8 N×S×S×3 in manifest row order; a plain .npy (no pickle), open it
  with ``np.load(path, mmap_mode="r")`` or :func:`load_face_crops`;
* ``boxes.csv``  — row, path, x1, y1, x2, y2, prob, n_faces, fallback. The box is the detected
  face in original pixels (before the margin), or the fallback region (prob empty, n_faces 0);
* ``faces.json`` — settings, counts (images, detected, fallback, multi_face), the fallback
  paths, timing, the ``key`` the crops depend on and ``complete: true``.

Detection: MTCNN with facenet-pytorch's nets (weights ship in its wheel; nothing is
downloaded), run by a batched version of its ``detect_face`` (:mod:`.mtcnn`) on a copy
shrunk to ``detect_size`` on its longer side, in batches of equally sized images, with the
smallest face searched for a fraction (``min_face``) of the shorter side: competition faces
fill much of a portrait photo, and the small pyramid levels of a 20-px minimum would only
add time and false positives. Every face with probability >= ``min_prob`` counts in ``n_faces``; the
most probable one is kept. Each of ``workers`` threads takes whole batches (decode → detect →
crop) with torch's intra-op threads split between them.

Crop: the box is widened by ``margin`` × its width/height on each side, made square around
its centre (side = the longer edge), shifted to lie inside the photo where it fits and
padded with black where it cannot, then resized to size×size (INTER_AREA when shrinking,
INTER_LINEAR when enlarging). No face → ``fallback``: ``"center"`` = the centred square of
side min(w, h); ``"full"`` = the whole photo padded to a square.

Resuming: crops, boxes and a done mask are memory-mapped files committed after every batch
(crops and boxes flushed before the done mask), so an interrupted run redoes only the
batches that were in flight. ``key.json`` holds what the crops depend on (manifest paths, margin, size, fallback,
detector settings); a different key moves finished work aside to ``faces.stale-<time>/``
and starts afresh — old and new crops are never mixed. A complete run with the same key
returns its stored summary at once. The dataset itself is only read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .imageio import read_rgb
from .mtcnn import detect_faces, make_detector
from .prepared import Prepared, load_prepared

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

FACES_DIR = "faces"
FACES_FORMAT = 1
FALLBACKS = ("center", "full")
_BOX_COLS = ["x1", "y1", "x2", "y2", "prob", "n_faces", "fallback"]


@dataclass(frozen=True)
class FaceSettings:
    """Everything the crops depend on besides the manifest."""
    margin: float = 0.2
    size: int = 256
    fallback: str = "center"
    detect_size: int = 320
    min_face: float = 0.15
    min_prob: float = 0.9

    def check(self) -> None:
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"faces fallback must be one of {', '.join(FALLBACKS)}, not {self.fallback!r}")
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"faces margin must be in [0, 2] (fraction of the box per side), not {self.margin}")
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"faces size must be in [16, 1024] pixels, not {self.size}")
        if not 64 <= self.detect_size <= 4096:
            raise ConfigError(f"faces detect_size must be in [64, 4096] pixels, not {self.detect_size}")
        if not 0 < self.min_face < 1 or not 0 < self.min_prob <= 1:
            raise ConfigError(f"faces min_face must be in (0, 1) and min_prob in (0, 1], not "
                              f"{self.min_face} and {self.min_prob}")


# ---------------------------------------------------------------- geometry
def square_region(box, width: int, height: int, margin: float) -> tuple[int, int, int]:
    """(x0, y0, side) of the square crop around ``box`` = (x1, y1, x2, y2) widened by ``margin``.

    The square is shifted to lie inside the image along each axis where it fits; where it
    does not (side > that image extent) it stays centred and :func:`crop_square` pads.
    """
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    bw, bh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    side = max(1, int(round(max(bw, bh) * (1 + 2 * margin))))
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    if side <= width:
        x0 = min(max(x0, 0), width - side)
    if side <= height:
        y0 = min(max(y0, 0), height - side)
    return x0, y0, side


def fallback_region(width: int, height: int, mode: str) -> tuple[int, int, int]:
    """(x0, y0, side): ``center`` = centred square of side min(w, h); ``full`` = padded whole image."""
    side = min(width, height) if mode == "center" else max(width, height)
    return (width - side) // 2, (height - side) // 2, side


def crop_square(img: np.ndarray, x0: int, y0: int, side: int, size: int) -> np.ndarray:
    """Cut [x0, x0+side) × [y0, y0+side) out of ``img`` (black outside it), resize to size×size."""
    h, w = img.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    patch = img[cy0:cy1, cx0:cx1]
    pads = (cy0 - y0, y0 + side - cy1, cx0 - x0, x0 + side - cx1)
    if patch.size == 0:  # degenerate box entirely outside the image
        patch = np.zeros((side, side, 3), np.uint8)
    elif any(pads):
        patch = cv2.copyMakeBorder(patch, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interp = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


# ---------------------------------------------------------------- detection
def _load(path: str, fast: bool, detect_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Decode ``path``; return (full image, detection copy, detection scale)."""
    img = read_rgb(path, fast=fast)
    h, w = img.shape[:2]
    scale = min(1.0, detect_size / max(h, w))
    if scale == 1.0:
        return img, img, 1.0
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return img, small, scale


def _process_batch(detector, paths: list[str], fast: list[bool], cfg: FaceSettings):
    """Decode, detect and crop one batch: (rows of _BOX_COLS in original pixels, crops B×S×S×3)."""
    loaded = [_load(p, f, cfg.detect_size) for p, f in zip(paths, fast)]
    boxes = np.zeros((len(loaded), len(_BOX_COLS)), np.float64)
    groups: dict[tuple, list[int]] = {}
    for i, (_, small, _) in enumerate(loaded):
        groups.setdefault(small.shape, []).append(i)
    for idx in groups.values():
        found = detect_faces(detector, [loaded[i][1] for i in idx], min_face=cfg.min_face, min_prob=cfg.min_prob)
        for i, (box, prob, n) in zip(idx, found):
            img, _, scale = loaded[i]
            if box is None:
                x0, y0, side = fallback_region(img.shape[1], img.shape[0], cfg.fallback)
                boxes[i] = (x0, y0, x0 + side, y0 + side, math.nan, 0, 1)
            else:
                boxes[i] = (*(box / scale), prob, n, 0)
    crops = np.stack([_crop_row(img, row, cfg) for (img, _, _), row in zip(loaded, boxes)])
    return boxes, crops


def _crop_row(img: np.ndarray, row: np.ndarray, cfg: FaceSettings) -> np.ndarray:
    h, w = img.shape[:2]
    if row[6]:  # fallback region is already the square
        x0, y0 = int(row[0]), int(row[1])
        return crop_square(img, x0, y0, int(row[2]) - x0, cfg.size)
    return crop_square(img, *square_region(row[:4], w, h, cfg.margin), cfg.size)


# ---------------------------------------------------------------- on-disk state
def faces_key(prep: Prepared, cfg: FaceSettings) -> dict:
    """What the crops depend on: the manifest's image paths (in order) and the settings."""
    digest = hashlib.sha256("\n".join(prep.manifest["path"].astype(str)).encode()).hexdigest()
    return {"format": FACES_FORMAT, "manifest_sha256": digest, "images": int(len(prep.manifest)),
            **asdict(cfg)}


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@dataclass
class _State:
    crops: np.ndarray   # memmap N×S×S×3 uint8
    boxes: np.ndarray   # memmap N×7 float64 (_BOX_COLS)
    done: np.ndarray    # memmap N bool

    def commit(self, rows: np.ndarray, crops: np.ndarray, boxes: np.ndarray) -> None:
        """Write one batch; the done mask is flushed last so it never claims unwritten crops."""
        self.crops[rows] = crops
        self.boxes[rows] = boxes
        self.crops.flush()
        self.boxes.flush()
        self.done[rows] = True
        self.done.flush()


def _open_state(fdir: Path, key: dict) -> _State | None:
    """Memmaps of an existing faces dir built with ``key``; None when there is nothing usable."""
    if _read_json(fdir / "key.json") != key:
        return None
    n, s = key["images"], key["size"]
    try:
        st = _State(np.lib.format.open_memmap(fdir / "crops.npy", mode="r+"),
                    np.lib.format.open_memmap(fdir / "_boxes.npy", mode="r+"),
                    np.lib.format.open_memmap(fdir / "_done.npy", mode="r+"))
    except (OSError, ValueError):
        return None
    if st.crops.shape != (n, s, s, 3) or st.boxes.shape != (n, len(_BOX_COLS)) or st.done.shape != (n,):
        return None
    return st


def _new_state(fdir: Path, key: dict) -> _State:
    fdir.mkdir(parents=True)
    n, s = key["images"], key["size"]
    mm = np.lib.format.open_memmap
    st = _State(mm(fdir / "crops.npy", mode="w+", dtype=np.uint8, shape=(n, s, s, 3)),
                mm(fdir / "_boxes.npy", mode="w+", dtype=np.float64, shape=(n, len(_BOX_COLS))),
                mm(fdir / "_done.npy", mode="w+", dtype=np.bool_, shape=(n,)))
    st.crops.flush(), st.boxes.flush(), st.done.flush()
    _write_json(fdir / "key.json", key)  # last: a dir without key.json holds nothing finished
    return st


def _set_aside(fdir: Path) -> str | None:
    """Move a faces dir built with other inputs out of the way (delete it if it holds no work)."""
    done = fdir / "_done.npy"
    try:
        has_work = (fdir / "faces.json").is_file() or bool(np.load(done, mmap_mode="r").any())
    except (OSError, ValueError):
        has_work = False
    if not has_work:
        shutil.rmtree(fdir)
        return None
    dest = fdir.with_name(f"{fdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    k = 1
    while dest.exists():
        dest, k = dest.with_name(f"{fdir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}-{k}"), k + 1
    os.replace(fdir, dest)
    log.warning("%s was built from other inputs (manifest or settings changed); moved it to %s "
                "(delete it to free the space)", fdir, dest)
    return str(dest)


class _Lock:
    """An advisory lock on DIR/.faces.lock so two runs never write the same crops."""

    def __init__(self, directory: Path):
        self.path, self.fh = directory / ".faces.lock", None

    def __enter__(self):
        self.fh = open(self.path, "a")
        if fcntl is not None:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.fh.close()
                raise DataError(f"another `maskcls faces` is running on {self.path.parent}; "
                                "wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        self.fh.close()  # closing releases the lock


# ---------------------------------------------------------------- the build
def _plan(prep: Prepared, pending: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Batches of pending rows, equally sized images together (by manifest size, then row).

    The plan depends only on the manifest and ``batch_size``, so a resumed run meets the same
    batches as an uninterrupted one (batches are committed whole).
    """
    man = prep.manifest
    order = np.lexsort((np.arange(len(man)), man["width"].to_numpy(), man["height"].to_numpy()))
    batches, cur, shape = [], [], None
    for r in order:
        sh = (man["height"].iat[r], man["width"].iat[r])
        if cur and (len(cur) == batch_size or sh != shape):
            batches.append(np.array(cur))
            cur = []
        cur.append(r)
        shape = sh
    if cur:
        batches.append(np.array(cur))
    return [b[pending[b]] for b in batches if pending[b].any()]


def _summary(prep: Prepared, cfg: FaceSettings, key: dict, boxes: np.ndarray, seconds: float,
             processed: int, moved: str | None) -> dict:
    fb = boxes[:, 6] > 0
    return {
        "complete": True, "key": key, "margin": cfg.margin, "size": cfg.size, "fallback": cfg.fallback,
        "counts": {"images": int(len(boxes)), "detected": int((~fb).sum()), "fallback": int(fb.sum()),
                   "multi_face": int((boxes[:, 5] > 1).sum())},
        "fallback_paths": [str(p) for p in prep.manifest["path"].to_numpy()[fb]],
        "processed": processed, "seconds": round(seconds, 3),
        "images_per_s": round(processed / seconds, 2) if seconds > 0 and processed else None,
        "crops": "crops.npy", "boxes": "boxes.csv", "moved_aside": moved,
    }


def _write_boxes_csv(path: Path, prep: Prepared, boxes: np.ndarray) -> None:
    df = pd.DataFrame(boxes[:, :5], columns=_BOX_COLS[:5]).round({c: 2 for c in _BOX_COLS[:4]})
    df.insert(0, "path", prep.manifest["path"].to_numpy())
    df.insert(0, "row", np.arange(len(boxes)))
    df["n_faces"] = boxes[:, 5].astype(int)
    df["fallback"] = boxes[:, 6] > 0
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def build_face_crops(prepared_dir: str | Path, *, margin: float = 0.2, size: int = 256,
                     fallback: str = "center", batch_size: int = 16, workers: int = 2,
                     device: str | None = None, progress: bool = True, detect_size: int = 320,
                     min_face: float = 0.15, min_prob: float = 0.9,
                     on_batch: Callable[[np.ndarray], None] | None = None) -> dict:
    """Detect, crop and store the face of every manifest image into ``prepared_dir/faces/``.

    Args:
        prepared_dir: a directory written by ``maskcls prepare`` (ours; the dataset is only read).
        margin: widening of the face box per side, as a fraction of its width/height.
        size: side of the stored square crops in pixels.
        fallback: crop used when no face is found: "center" or "full" (see module docstring).
        batch_size: images per MTCNN call (and per committed chunk of progress).
        workers: threads, each taking whole batches (decode, detect, crop); torch's intra-op
            threads are split between them.
        device: torch device for MTCNN (default: CUDA when available, else CPU).
        progress: show a tqdm bar.
        detect_size: longer side of the copy MTCNN sees (boxes are scaled back).
        min_face: smallest face searched for, as a fraction of the image's shorter side.
        min_prob: faces below this MTCNN probability are ignored.
        on_batch: called with the manifest rows of every committed batch (progress hooks, tests).

    Returns the summary also stored in ``faces/faces.json``.
    """
    cfg = FaceSettings(margin=float(margin), size=int(size), fallback=fallback,
                       detect_size=int(detect_size), min_face=float(min_face), min_prob=float(min_prob))
    cfg.check()
    if batch_size < 1 or workers < 1:
        raise ConfigError(f"faces batch_size and workers must be >= 1, not {batch_size} and {workers}")
    prep = load_prepared(prepared_dir)
    if len(prep.manifest) == 0:
        raise DataError(f"{prep.dir}/manifest.csv has no images")
    key, fdir = faces_key(prep, cfg), prep.dir / FACES_DIR
    with _Lock(prep.dir):
        info = _read_json(fdir / "faces.json")
        if info and info.get("complete") and info.get("key") == key and (fdir / "crops.npy").is_file():
            log.info("%s is complete for these settings; nothing to do", fdir)
            return info
        moved, st = None, _open_state(fdir, key) if fdir.is_dir() else None
        if st is None:
            moved = _set_aside(fdir) if fdir.exists() else None
            st = _new_state(fdir, key)
        processed, seconds = _run(prep, cfg, st, batch_size, workers, device, progress, on_batch)
        boxes = np.array(st.boxes)
        summary = _summary(prep, cfg, key, boxes, seconds, processed, moved)
        _write_boxes_csv(fdir / "boxes.csv", prep, boxes)
        _write_json(fdir / "faces.json", summary)  # last: marks the crops complete
    c = summary["counts"]
    log.info("faces: %d images, %d detected, %d fallback, %d with several faces (%s img/s)",
             c["images"], c["detected"], c["fallback"], c["multi_face"], summary["images_per_s"])
    return summary


def _run(prep: Prepared, cfg: FaceSettings, st: _State, batch_size: int, workers: int,
         device: str | None, progress: bool, on_batch) -> tuple[int, float]:
    """Process every image not yet done; returns (how many, seconds after loading MTCNN).

    Each of ``workers`` threads takes a whole batch (decode → MTCNN → crop) with torch's
    intra-op threads split between them: torch releases the GIL in its kernels, and on a few
    cores this beats one batch with multi-threaded kernels, whose many small ops mostly wait
    on each other. Batches are committed in plan order by this thread alone.
    """
    import torch
    from tqdm.auto import tqdm

    pending = ~np.asarray(st.done)
    batches = _plan(prep, pending, batch_size)
    if not batches:
        return 0, 0.0
    paths, fast = prep.abs_paths(), prep.manifest["fast"].to_numpy()
    detector = make_detector(device)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, _cpu_count() // workers))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faces")
    bar = tqdm(total=len(paths), initial=int((~pending).sum()), unit="img", desc="faces", disable=not progress)
    processed, inflight, todo = 0, deque(), iter(batches)
    t0 = time.perf_counter()
    try:
        for rows in todo:
            inflight.append((rows, pool.submit(_process_batch, detector, paths[rows].tolist(),
                                               fast[rows].tolist(), cfg)))
            if len(inflight) <= workers:  # keep every worker busy plus one batch queued
                continue
            processed += _commit(st, *inflight.popleft(), bar, on_batch)
        while inflight:
            processed += _commit(st, *inflight.popleft(), bar, on_batch)
    finally:
        for _, fut in inflight:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        torch.set_num_threads(threads)
    return processed, time.perf_counter() - t0


def _commit(st: _State, rows: np.ndarray, fut, bar, on_batch) -> int:
    boxes, crops = fut.result()  # re-raises DataError for an unreadable image
    st.commit(rows, crops, boxes)
    bar.update(len(rows))
    if on_batch is not None:
        on_batch(rows)
    return len(rows)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def load_face_crops(prepared_dir: str | Path) -> tuple[np.ndarray, dict]:
    """The stored crops (read-only memmap, manifest row order) and their faces.json summary."""
    prep = load_prepared(prepared_dir)
    fdir = prep.dir / FACES_DIR
    info = _read_json(fdir / "faces.json")
    if not info or not info.get("complete") or not (fdir / "crops.npy").is_file():
        raise DataError(f"no complete face crops in {fdir}; run `maskcls faces {prep.dir}` first")
    try:
        cfg = FaceSettings(**{k: info["key"][k] for k in FaceSettings.__dataclass_fields__})
    except (KeyError, TypeError):
        raise DataError(f"{fdir}/faces.json is from another maskcls version; "
                        f"run `maskcls faces {prep.dir}` again") from None
    if faces_key(prep, cfg) != info["key"]:
        raise DataError(f"{fdir} was built for a different manifest (prepare was re-run since); "
                        f"run `maskcls faces {prep.dir}` again")
    crops = np.load(fdir / "crops.npy", mmap_mode="r")
    if crops.shape != (len(prep.manifest), cfg.size, cfg.size, 3) or crops.dtype != np.uint8:
        raise DataError(f"{fdir}/crops.npy has shape {crops.shape}, expected "
                        f"{(len(prep.manifest), cfg.size, cfg.size, 3)}; run `maskcls faces {prep.dir}` again")
    return crops, info


def face_settings(info: dict) -> dict:
    """The detection settings recorded in a faces.json (what predict must repeat)."""
    return {k: info["key"][k] for k in FaceSettings.__dataclass_fields__}


def crop_files(paths: list[str], settings: dict, *, batch_size: int = 16, device: str | None = None) -> np.ndarray:
    """Face crops (N×S×S×3 uint8) of arbitrary image files with the settings a run trained with."""
    cfg = FaceSettings(**settings)
    cfg.check()
    detector = make_detector(device)
    parts = [_process_batch(detector, paths[i:i + batch_size], [True] * len(paths[i:i + batch_size]), cfg)[1]
             for i in range(0, len(paths), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, cfg.size, cfg.size, 3), np.uint8)
