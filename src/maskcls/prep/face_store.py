"""The resumable on-disk state of ``maskcls faces``: crops, boxes and a done mask as memory maps
committed batch by batch, the key they depend on, setting stale work aside, a lock against a
second writer, and the final summary and boxes.csv.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..fsutil import atomic_path, atomic_write_json, read_json
from .face_crop import BOX_COLS, FaceSettings
from .prepared import Prepared

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)

FACES_DIR = "faces"
FACES_FORMAT = 1


def faces_key(prep: Prepared, cfg: FaceSettings) -> dict:
    """What the crops depend on: the manifest's image paths (in order) and the settings."""
    digest = hashlib.sha256("\n".join(prep.manifest["path"].astype(str)).encode()).hexdigest()
    return {"format": FACES_FORMAT, "manifest_sha256": digest, "images": int(len(prep.manifest)),
            **asdict(cfg)}


@dataclass
class FaceState:
    crops: np.ndarray   # memmap N×S×S×3 uint8
    boxes: np.ndarray   # memmap N×7 float64 (BOX_COLS)
    done: np.ndarray    # memmap N bool

    def commit(self, rows: np.ndarray, crops: np.ndarray, boxes: np.ndarray) -> None:
        """Write one batch; the done mask is flushed last so it never claims unwritten crops."""
        self.crops[rows] = crops
        self.boxes[rows] = boxes
        self.crops.flush()
        self.boxes.flush()
        self.done[rows] = True
        self.done.flush()


def open_state(fdir: Path, key: dict) -> FaceState | None:
    """Memmaps of an existing faces dir built with ``key``; None when there is nothing usable."""
    if read_json(fdir / "key.json") != key:
        return None
    n, s = key["images"], key["size"]
    try:
        st = FaceState(np.lib.format.open_memmap(fdir / "crops.npy", mode="r+"),
                    np.lib.format.open_memmap(fdir / "_boxes.npy", mode="r+"),
                    np.lib.format.open_memmap(fdir / "_done.npy", mode="r+"))
    except (OSError, ValueError):
        return None
    if st.crops.shape != (n, s, s, 3) or st.boxes.shape != (n, len(BOX_COLS)) or st.done.shape != (n,):
        return None
    return st


def new_state(fdir: Path, key: dict) -> FaceState:
    fdir.mkdir(parents=True)
    n, s = key["images"], key["size"]
    mm = np.lib.format.open_memmap
    st = FaceState(mm(fdir / "crops.npy", mode="w+", dtype=np.uint8, shape=(n, s, s, 3)),
                mm(fdir / "_boxes.npy", mode="w+", dtype=np.float64, shape=(n, len(BOX_COLS))),
                mm(fdir / "_done.npy", mode="w+", dtype=np.bool_, shape=(n,)))
    st.crops.flush(), st.boxes.flush(), st.done.flush()
    atomic_write_json(fdir / "key.json", key)  # last: a dir without key.json holds nothing finished
    return st


def set_aside(fdir: Path) -> str | None:
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


class FacesLock:
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


def faces_summary(prep: Prepared, cfg: FaceSettings, key: dict, boxes: np.ndarray, seconds: float,
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


def write_boxes_csv(path: Path, prep: Prepared, boxes: np.ndarray) -> None:
    df = pd.DataFrame(boxes[:, :5], columns=BOX_COLS[:5]).round({c: 2 for c in BOX_COLS[:4]})
    df.insert(0, "path", prep.manifest["path"].to_numpy())
    df.insert(0, "row", np.arange(len(boxes)))
    df["n_faces"] = boxes[:, 5].astype(int)
    df["fallback"] = boxes[:, 6] > 0
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
