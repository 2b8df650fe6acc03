"""Helpers shared by the benchmarks: generated photos and the closing ratio line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, n: int, *, seed: int = 0, size: tuple[int, int] = (384, 512)) -> list[str]:
    """Write ``n`` smooth random ``w×h`` JPEGs (quality 90): realistic file sizes, not noise."""
    import cv2
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        low = rng.integers(0, 256, (rng.integers(6, 20), rng.integers(5, 15), 3), dtype=np.uint8)
        img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        img += 20 * np.sin(xx / rng.uniform(3, 12))[..., None] * np.cos(yy / rng.uniform(3, 12))[..., None]
        img += rng.normal(0, 4, img.shape).astype(np.float32)  # sensor-like grain
        path = folder / f"img{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def ratio_line(name: str, ratio: float) -> str:
    return f"{name} speedup vs reference: {ratio:.2f}"
