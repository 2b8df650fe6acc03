"""Face-crop geometry and one batch's detection: the settings the crops depend on, the square
around a detected face (widened by a margin, shifted inside the photo, padded where it cannot
be), the fallback region when no face is found, and decode → detect → crop for a batch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from ..data.imageio import read_rgb
from ..errors import ConfigError
from .mtcnn import detect_faces

FALLBACKS = ("center", "full")
BOX_COLS = ["x1", "y1", "x2", "y2", "prob", "n_faces", "fallback"]


@dataclass(frozen=True)
class FaceSettings:
    """Everything the crops depend on besides the manifest."""
    margin: float = 0.2
    size: int = 256
    fallback: str = "center"
    detect_size: int = 320
    min_face: float = 0.15
    min_prob: float = 0.9

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "face settings") -> FaceSettings:
        """The settings a checkpoint's ``meta`` or a faces.json ``key`` records (plain dicts), checked;
        ``source`` names where they came from in the error."""
        try:
            s = cls(**{f.name: d[f.name] for f in fields(cls)})
        except (KeyError, TypeError):
            raise ConfigError(f"{source} lack {', '.join(f.name for f in fields(cls) if f.name not in (d or {}))}; "
                              "they were written by another maskcls version: run `maskcls faces` again") from None
        s.check()
        return s

    def to_dict(self) -> dict:
        """As checkpoints and faces.json record them (plain values)."""
        return asdict(self)

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


def _load(path: str, fast: bool, detect_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Decode ``path``; return (full image, detection copy, detection scale)."""
    img = read_rgb(path, fast=fast)
    h, w = img.shape[:2]
    scale = min(1.0, detect_size / max(h, w))
    if scale == 1.0:
        return img, img, 1.0
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return img, small, scale


def process_batch(detector, paths: list[str], fast: list[bool], cfg: FaceSettings):
    """Decode, detect and crop one batch: (rows of BOX_COLS in original pixels, crops B×S×S×3)."""
    loaded = [_load(p, f, cfg.detect_size) for p, f in zip(paths, fast)]
    boxes = np.zeros((len(loaded), len(BOX_COLS)), np.float64)
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
