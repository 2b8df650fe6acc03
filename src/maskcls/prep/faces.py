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

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, DataError
from ..fsutil import atomic_write_json, cpu_count, read_json
from ..progress import progress as step_progress
from .face_crop import BOX_COLS, FaceSettings, process_batch
from .face_store import (
    FACES_DIR,
    FacesLock,
    FaceState,
    faces_key,
    faces_summary,
    new_state,
    open_state,
    set_aside,
    write_boxes_csv,
)
from .mtcnn import make_detector
from .prepared import Prepared, load_prepared

log = logging.getLogger(__name__)


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
        progress: report progress (a bar on a terminal, plain lines otherwise; :mod:`maskcls.progress`).
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
    with FacesLock(prep.dir):
        info = read_json(fdir / "faces.json")
        if info and info.get("complete") and info.get("key") == key and (fdir / "crops.npy").is_file():
            log.info("%s is complete for these settings; nothing to do", fdir)
            return info
        moved, st = None, open_state(fdir, key) if fdir.is_dir() else None
        if st is None:
            moved = set_aside(fdir) if fdir.exists() else None
            st = new_state(fdir, key)
        processed, seconds = _run(prep, cfg, st, batch_size, workers, device, progress, on_batch)
        boxes = np.array(st.boxes)
        summary = faces_summary(prep, cfg, key, boxes, seconds, processed, moved)
        write_boxes_csv(fdir / "boxes.csv", prep, boxes)
        atomic_write_json(fdir / "faces.json", summary)  # last: marks the crops complete
    c = summary["counts"]
    log.info("faces: %d images, %d detected, %d fallback, %d with several faces (%s img/s)",
             c["images"], c["detected"], c["fallback"], c["multi_face"], summary["images_per_s"])
    return summary


def _run(prep: Prepared, cfg: FaceSettings, st: FaceState, batch_size: int, workers: int,
         device: str | None, progress: bool, on_batch) -> tuple[int, float]:
    """Process every image not yet done; returns (how many, seconds after loading MTCNN).

    Each of ``workers`` threads takes a whole batch (decode → MTCNN → crop) with torch's
    intra-op threads split between them: torch releases the GIL in its kernels, and on a few
    cores this beats one batch with multi-threaded kernels, whose many small ops mostly wait
    on each other. Batches are committed in plan order by this thread alone.
    """
    import torch

    pending = ~np.asarray(st.done)
    batches = _plan(prep, pending, batch_size)
    if not batches:
        return 0, 0.0
    paths, fast = prep.abs_paths(), prep.manifest["fast"].to_numpy()
    detector = make_detector(device)
    threads = torch.get_num_threads()  # process-wide: set for the workers, restored however this ends
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="faces")
    bar = step_progress(total=len(paths), initial=int((~pending).sum()), unit="img", desc="faces", enabled=progress)
    processed, inflight, todo = 0, deque(), iter(batches)
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(max(1, cpu_count() // workers))
        for rows in todo:
            inflight.append((rows, pool.submit(process_batch, detector, paths[rows].tolist(),
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


def _commit(st: FaceState, rows: np.ndarray, fut, bar, on_batch) -> int:
    boxes, crops = fut.result()  # re-raises DataError for an unreadable image
    st.commit(rows, crops, boxes)
    bar.update(len(rows))
    if on_batch is not None:
        on_batch(rows)
    return len(rows)


def load_face_crops(prepared_dir: str | Path) -> tuple[np.ndarray, dict]:
    """The stored crops (read-only memmap, manifest row order) and their faces.json summary."""
    prep = load_prepared(prepared_dir)
    fdir = prep.dir / FACES_DIR
    info = read_json(fdir / "faces.json")
    if not info or not info.get("complete") or not (fdir / "crops.npy").is_file():
        raise DataError(f"no complete face crops in {fdir}; run `maskcls faces {prep.dir}` first")
    try:
        cfg = face_settings(info)
    except ConfigError:
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


def face_settings(info: dict) -> FaceSettings:
    """The detection settings recorded in a faces.json (what predict must repeat)."""
    return FaceSettings.from_dict(info.get("key") or {}, source="faces.json's settings")


def crop_files(paths: list[str], settings: FaceSettings | dict, *, batch_size: int = 16,
               device: str | None = None) -> np.ndarray:
    """Face crops (N×S×S×3 uint8) of arbitrary image files with the settings a run trained with."""
    return crop_with_boxes(paths, settings, batch_size=batch_size, device=device)[1]


def crop_with_boxes(sources: list, settings: FaceSettings | dict, *, batch_size: int = 16, device: str | None = None,
                    detector=None) -> tuple[np.ndarray, np.ndarray]:
    """Face boxes and crops of arbitrary images with the settings a run trained with (what serving shows).

    Args:
        sources: image files, or binary file objects holding an image (uploads). All are decoded
            by PIL with their EXIF rotation applied (the fast JPEG path ignores EXIF, and an
            arbitrary photo has not been probed as a prepared one has).
        settings: the run's face settings (a checkpoint records them as a dict: ``FaceSettings.to_dict``).
        batch_size: images per MTCNN call.
        device: torch device of a new detector (default: CUDA when available, else CPU).
        detector: an MTCNN from :func:`~.mtcnn.make_detector` to reuse (a server keeps one).

    Returns (boxes N×7 in the images' pixels after EXIF rotation, columns ``face_crop.BOX_COLS``;
    crops N×S×S×3 uint8). Raises DataError naming an unreadable image.
    """
    cfg = settings if isinstance(settings, FaceSettings) else FaceSettings.from_dict(settings)
    detector = detector if detector is not None else make_detector(device)
    boxes, crops = [], []
    for i in range(0, len(sources), batch_size):
        part = list(sources[i:i + batch_size])
        b, c = process_batch(detector, part, [False] * len(part), cfg)
        boxes.append(b)
        crops.append(c)
    if not crops:
        return np.zeros((0, len(BOX_COLS)), np.float64), np.zeros((0, cfg.size, cfg.size, 3), np.uint8)
    return np.concatenate(boxes), np.concatenate(crops)
