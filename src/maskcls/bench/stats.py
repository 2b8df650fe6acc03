"""``maskcls bench stats``: the reference mean/std routine versus ours, side by side."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .common import make_jpegs, ratio_line


def reference_stats(paths) -> dict:
    """The reference recipe: per-image mean and std via ToTensor, averaged over images."""
    import torchvision.transforms as T
    from PIL import Image
    to_tensor = T.ToTensor()
    means, stds = [], []
    for p in paths:
        x = to_tensor(Image.open(p).convert("RGB"))
        means.append(x.mean(dim=(1, 2)).numpy())
        stds.append(x.std(dim=(1, 2)).numpy())
    return {"mean": np.mean(means, 0).tolist(), "std": np.mean(stds, 0).tolist()}


def bench_stats(*, images: int = 300, workers: int = 2, workdir: Path | None = None) -> dict:
    """Time both routines on the same generated 384×512 JPEGs; return rows and printable text."""
    from ..data.imageio import read_rgb
    from ..prep.stats import pooled_stats
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        paths = make_jpegs(Path(tmp), images)
        t0 = time.perf_counter()
        ref = reference_stats(paths)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = pooled_stats(len(paths), lambda i: read_rgb(paths[i]), workers=workers)
        t_ours = time.perf_counter() - t0
        pix = np.concatenate([read_rgb(p).reshape(-1, 3) for p in paths[: min(40, images)]]).astype(np.float64)
    speed = t_ref / t_ours
    lines = [
        f"images: {images} (384x512 JPEG), workers: {workers}",
        f"{'routine':<34}{'img/s':>10}{'std R':>10}{'std G':>10}{'std B':>10}",
        f"{'reference (mean of per-image std)':<34}{images / t_ref:>10.1f}"
        + "".join(f"{s:>10.4f}" for s in ref["std"]),
        f"{'maskcls (exact pooled std)':<34}{images / t_ours:>10.1f}" + "".join(f"{s:>10.4f}" for s in ours["std"]),
        f"means agree: max |diff| = {np.max(np.abs(np.array(ref['mean']) - ours['mean'])):.2e}",
        f"reference std is biased low by {100 * (1 - np.mean(ref['std']) / np.mean(ours['std'])):.1f}% on average",
        f"(check on {min(40, images)} images: numpy pooled std {np.round(pix.std(0) / 255, 4).tolist()})",
        ratio_line("stats", speed),
    ]
    return {"reference_img_s": images / t_ref, "ours_img_s": images / t_ours, "speedup": speed,
            "reference": ref, "ours": ours, "text": "\n".join(lines)}
