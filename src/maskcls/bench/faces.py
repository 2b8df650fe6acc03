"""Benchmark of ``maskcls faces`` on competition-sized photos that contain a real face.

The face is scikit-image's ``astronaut()`` (Eileen Collins, public domain) — head and
shoulders cut from it, scaled and placed differently on each 384×512 photo over a varied
background — so MTCNN has a genuine face to find and the true box is known. The reference
is what a participant would write: PIL decode, ``MTCNN(keep_all=True).detect`` on the
full-resolution photo one image at a time, crop and resize; it is timed in the same run on
a subset. Both are timed after the model is loaded; ``img_per_cpu_s`` (images per CPU-second
of all threads) is the figure to compare when other work shares the machine. Needs
scikit-image (a dev dependency) for the picture.
"""
from __future__ import annotations

import json
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..prep.prepared import FORMAT_VERSION, MANIFEST_COLUMNS

# Head-and-shoulders region of astronaut() (rows, cols) and MTCNN's face box inside it.
_HEAD_Y, _HEAD_X = (0, 330), (95, 355)
_FACE_IN_HEAD = np.array([181.0 - 95, 62.0, 268.0 - 95, 172.0])


@lru_cache(maxsize=1)
def _head() -> np.ndarray:
    try:
        from skimage import data
    except ImportError:
        raise ImportError("the faces benchmark draws scikit-image's astronaut photo; "
                          "pip install scikit-image") from None
    return np.ascontiguousarray(data.astronaut()[slice(*_HEAD_Y), slice(*_HEAD_X)])


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A flat colour with a random linear gradient and mild noise (uint8 HWC)."""
    base = rng.uniform(40, 215, 3)
    tilt = rng.uniform(-60, 60, (2, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = base + (yy[..., None] / height) * tilt[0] + (xx[..., None] / width) * tilt[1]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def paste_astronaut(canvas: np.ndarray, scale: float, x: int, y: int) -> np.ndarray:
    """Paste the astronaut's head scaled by ``scale`` with its top-left at (x, y); returns the face box."""
    head = _head()
    h, w = head.shape[:2]
    sw, sh = round(w * scale), round(h * scale)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    patch = cv2.resize(head, (sw, sh), interpolation=interp)
    ch, cw = canvas.shape[:2]
    x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + sw, cw), min(y + sh, ch)
    canvas[y1:y2, x1:x2] = patch[y1 - y:y2 - y, x1 - x:x2 - x]
    return _FACE_IN_HEAD * scale + np.array([x, y, x, y], np.float64)


def astronaut_photo(rng: np.random.Generator, *, width: int = 384, height: int = 512,
                    scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A width×height RGB photo with the astronaut's face somewhere on it, and the face box."""
    img = background(rng, width, height)
    s = rng.uniform(1.0, 1.4) if scale is None else scale
    hw, hh = round((_HEAD_X[1] - _HEAD_X[0]) * s), round((_HEAD_Y[1] - _HEAD_Y[0]) * s)
    x = int(rng.integers(0, max(width - hw, 0) + 1))
    y = int(rng.integers(0, max(height - hh, 0) + 1))
    return img, paste_astronaut(img, s, x, y)


def iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def write_prepared(out_dir: Path, root: Path, rel_paths: list[str], sizes: list[tuple[int, int]],
                   fast: list[bool] | None = None) -> Path:
    """A minimal prepared directory (manifest.csv + prepare.json) for images under ``root``.

    ``sizes`` are (width, height). Labels are placeholders: only faces reads this directory.
    """
    import pandas as pd
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(rel_paths)
    fast = [p.lower().endswith((".jpg", ".jpeg")) for p in rel_paths] if fast is None else fast
    man = pd.DataFrame({
        "path": rel_paths, "group": [f"p{i:05d}" for i in range(n)], "label": 0, "mask": 0, "gender": 0,
        "age": 0, "age_years": 25, "split": "train", "fold": [i % 5 for i in range(n)],
        "image_id": [Path(p).name for p in rel_paths], "width": [s[0] for s in sizes],
        "height": [s[1] for s in sizes], "fast": fast, "fix": "",
    })[MANIFEST_COLUMNS]
    man.to_csv(out_dir / "manifest.csv", index=False)
    meta = {"format_version": FORMAT_VERSION, "root": str(root), "num_classes": 1, "class_names": ["face"],
            "task": "generic", "folds": 5}
    (out_dir / "prepare.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def _make_photos(root: Path, n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names, truth = [], []
    for i in range(n):
        img, box = astronaut_photo(rng)
        names.append(f"img{i:05d}.jpg")
        Image.fromarray(img).save(root / names[-1], quality=90)
        truth.append(box)
    return names, np.array(truth)


def _reference(paths: list[Path], size: int = 256) -> tuple[float, float, list]:
    """The naive way: PIL decode, MTCNN on the full photo one at a time, crop the first face."""
    from facenet_pytorch import MTCNN
    mtcnn = MTCNN(keep_all=True)
    boxes = []
    t0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        img = Image.open(p).convert("RGB")
        b, _ = mtcnn.detect(img)
        boxes.append(None if b is None else b[0])
        crop = img.crop(tuple(int(v) for v in b[0])) if b is not None else img
        crop.resize((size, size))
    return time.perf_counter() - t0, time.process_time() - c0, boxes


def bench_faces(*, images: int = 200, workdir: Path | None = None, reference_images: int = 40,
                batch_size: int = 16, workers: int = 2) -> dict:
    """Time ``build_face_crops`` on ``images`` astronaut photos against the naive reference."""
    import facenet_pytorch  # noqa: F401  - imported once, outside both timings

    from ..prep.faces import build_face_crops
    with tempfile.TemporaryDirectory(prefix="maskcls-bench-faces-", dir=workdir) as tmp:
        root, prep = Path(tmp) / "dataset", Path(tmp) / "prepared"
        names, truth = _make_photos(root, images)
        write_prepared(prep, root, names, [(384, 512)] * images)
        c0 = time.process_time()  # CPU seconds of all threads: less sensitive to other load
        s = build_face_crops(prep, batch_size=batch_size, workers=workers, progress=False)
        cpu = time.process_time() - c0
        ours = np.genfromtxt(prep / "faces" / "boxes.csv", delimiter=",", names=True, dtype=None, encoding=None)
        ok = sum(not fb and iou((a, b, c, d), t) > 0.5 for a, b, c, d, fb, t in
                 zip(ours["x1"], ours["y1"], ours["x2"], ours["y2"], ours["fallback"], truth))
        m = min(reference_images, images)
        ref_s, ref_cpu, ref_boxes = _reference([root / n for n in names[:m]])
    ref_ok = sum(b is not None and iou(b, t) > 0.5 for b, t in zip(ref_boxes, truth))
    rows = [
        {"method": "maskcls faces (batched, downscaled)", "images": images, "seconds": s["seconds"],
         "images_per_s": s["images_per_s"], "detected": s["counts"]["detected"],
         "fallback": s["counts"]["fallback"], "iou>0.5": int(ok), "img_per_cpu_s": round(images / cpu, 2)},
        {"method": "reference (1 at a time, full res)", "images": m, "seconds": round(ref_s, 3),
         "images_per_s": round(m / ref_s, 2), "detected": sum(b is not None for b in ref_boxes),
         "fallback": sum(b is None for b in ref_boxes), "iou>0.5": int(ref_ok),
         "img_per_cpu_s": round(m / ref_cpu, 2)},
    ]
    speedup = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    cols = ["method", "images", "seconds", "images_per_s", "img_per_cpu_s", "detected", "fallback", "iou>0.5"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    line = lambda vals: "  ".join(str(v).ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    text = "\n".join([line(cols)] + [line([r[c] for c in cols]) for r in rows]
                     + [f"faces speedup vs reference: {speedup:.2f}"])
    return {"rows": rows, "speedup": round(speedup, 2), "text": text}
