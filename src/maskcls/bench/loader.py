"""Loader benchmark: the reference recipe's loader against ours, side by side, in one run.

Five pipelines, each with ``num_workers=0`` and with ``workers`` workers, all producing
380-px training batches of 30 from the same generated 384×512 JPEGs:

* ``reference`` — exactly what the reference wrote: PIL open + convert("RGB"), torchvision
  v1 CenterCrop(380), RandomHorizontalFlip, RandomChoice of four ColorJitters, ToTensor,
  Normalize, a plain DataLoader (float batches).
* ``ours-jpeg`` — the same augmentation (preset ``reference_fast``: CenterCrop 380, flip,
  one of the four ColorJitters with the recipe's ranges) done our way: ImageDataset +
  FileSource, libjpeg-turbo decode, uint8 OpenCV ops, uint8 batches; then the float
  normalisation the device would do, here on the CPU in the consumer (``+norm`` rows).
  The headline ``loader speedup`` is this row with ``workers`` threads (the thread loader,
  which ``data.loader=auto`` uses when CUDA is present), without ``+norm``.
* ``ours-cache`` — the same from the uint8 crop cache of the 380-px centre windows (its
  build time is reported apart). The headline ``loader cache speedup`` is this row.
* ``default-jpeg`` / ``default-cache`` — our default training preset ``fast`` (random
  resized crop, resampled, + all four colour ops in random order with p 0.8), which does
  more work per image than the recipe; shown for information.

Throughput is measured in steady state (from the arrival of batch max(1, workers) to the
last: worker start-up is paid once per epoch of thousands of batches, and the first W
batches of W workers are built together), over ≥ 2 passes after a warm-up, best pass
kept; the passes of the pipelines are interleaved so that load from other processes on
the machine hits them alike.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..data.cache import build_cache
from ..data.dataset import ArraySource, FileSource, ImageDataset
from ..data.loader import build_loader, set_epoch
from ..data.sampler import EpochSampler
from ..data.transforms import REFERENCE_CROP, create_transform, reference_jitter
from ..errors import ConfigError
from .common import make_jpegs

log = logging.getLogger(__name__)

MEAN, STD = (0.56, 0.52, 0.50), (0.23, 0.24, 0.24)  # "some mean/std", as the recipe's stats pass gives




class ReferenceDataset(Dataset):
    """The reference recipe's dataset and transform, as written (float tensors per image)."""

    def __init__(self, paths: list[str], labels: np.ndarray):
        import torchvision.transforms as T
        self.paths, self.labels = paths, labels
        self.transform = T.Compose([
            T.CenterCrop(380),
            T.RandomHorizontalFlip(0.5),
            reference_jitter(),
            T.ToTensor(),
            T.Normalize(mean=MEAN, std=STD),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = Image.open(self.paths[i]).convert("RGB")
        return self.transform(img), torch.tensor(self.labels[i])


class Normalizer:
    """The device step, on the CPU: uint8 N×3×H×W batch → float32 ``(x/255 − mean)/std``.

    One fused pass per plane (``cv2.addWeighted`` with a float32 output: scale, shift and
    type conversion together) into a reused buffer — what an efficient CPU implementation
    does; a fresh 52 MB tensor per batch costs more in page faults than the arithmetic,
    and torch's copy_/mul_/add_ takes three passes (≈1.8× slower here).
    """

    def __init__(self, mean=MEAN, std=STD):
        self.scale = [1.0 / (255.0 * s) for s in std]
        self.shift = [-m / s for m, s in zip(mean, std)]
        self.buf: np.ndarray | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import cv2
        src = x.contiguous().numpy()
        if self.buf is None or self.buf.shape != src.shape:
            self.buf = np.empty(src.shape, dtype=np.float32)
        for n in range(src.shape[0]):
            for c in range(src.shape[1]):
                cv2.addWeighted(src[n, c], self.scale[c], src[n, c], 0.0, self.shift[c],
                                dst=self.buf[n, c], dtype=cv2.CV_32F)
        return torch.from_numpy(self.buf)


def _pass(loader, consume, skip: int) -> tuple[float, int]:
    """Seconds and images of one pass, from the arrival of batch ``skip`` to the last one.

    With W parallel workers the first W batches are built at the same time and arrive
    together; timing from the first arrival would count W − 1 batches for free (it made a
    pass of 2 batches look 100× faster than it was). ``skip`` = max(1, W) starts the clock
    once the pipeline is full, so every timed batch was built inside the timed window's
    steady state.
    """
    it = iter(loader)
    for _ in range(skip):
        consume(next(it))
    t0, n = time.perf_counter(), 0
    for batch in it:
        consume(batch)
        n += len(batch[0])
    return time.perf_counter() - t0, n


def bench_loader(*, images: int = 300, batch_size: int = 30, workers: int = 2, image_size: int = 380,
                 passes: int = 3, workdir: Path | None = None) -> dict:
    """Measure images/s of the reference loader and ours (from JPEG and from the crop cache).

    Args:
        images: number of generated 384×512 JPEGs.
        batch_size: batch size of every loader (the reference used 30).
        workers: worker count of the multi-process runs (each pipeline also runs with 0).
        image_size: output side of our pipelines (the reference crops 380 and keeps it).
        passes: timed passes per configuration after one warm-up; the best is kept.
        workdir: where to write the JPEGs and the cache (default: a temporary directory).

    Returns:
        ``{"rows": [...], "cache_build_s", "speedup", "cache_speedup", "text"}``; ``text`` is a
        table ending with ``loader speedup vs reference: X.XX`` (ours-jpeg, ``workers``
        threads, against the reference with ``workers`` processes) and ``loader cache
        speedup vs reference: X.XX`` (ours-cache, likewise).
    """
    if images < batch_size * (max(1, workers) + 4):
        raise ConfigError(f"bench loader needs at least {batch_size * (max(1, workers) + 4)} images "
                          f"(batch {batch_size} x (workers + 4)) to time a steady state; got --images {images}")
    threads = torch.get_num_threads()
    # One intra-op thread here, as in DataLoader workers: with more, every torch op of the
    # consumer (and of the reference at num_workers=0) stalls whenever another process holds
    # a core, which measures the machine's load rather than the loaders.
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="maskcls-bench-") as tmp:
            root = Path(workdir) if workdir is not None else Path(tmp)
            return _run(root, images, batch_size, workers, image_size, max(2, passes))
    finally:
        torch.set_num_threads(threads)


def _run(root: Path, images: int, batch_size: int, workers: int, image_size: int, passes: int) -> dict:
    paths = make_jpegs(root / "jpeg", images)
    labels = np.arange(images, dtype=np.int64) % 18
    fast = np.ones(images, dtype=bool)  # generated baseline RGB JPEGs: prepare would say so
    t0 = time.perf_counter()
    cache = build_cache(paths, fast, root / "cache", side=REFERENCE_CROP, workers=max(1, workers), mode="center")
    cache_s = time.perf_counter() - t0
    square = build_cache(paths, fast, root / "cache", side=round(image_size * 1.15), workers=max(1, workers))

    ref_tf = create_transform(preset="reference_fast", is_training=True, image_size=image_size)
    default_tf = create_transform(preset="fast", is_training=True, image_size=image_size)
    datasets = {
        "reference": ReferenceDataset(paths, labels),
        "ours-jpeg": ImageDataset(FileSource(paths, fast), labels, ref_tf, seed=0),
        "ours-cache": ImageDataset(ArraySource(cache), labels, ref_tf, seed=0),
        "default-jpeg": ImageDataset(FileSource(paths, fast), labels, default_tf, seed=0),
        "default-cache": ImageDataset(ArraySource(square), labels, default_tf, seed=0),
    }
    norm = Normalizer()

    def loader(name: str, nw: int, kind: str, epoch: int):
        if name == "reference":  # a plain DataLoader, as the recipe built it
            return DataLoader(datasets[name], batch_size=batch_size, shuffle=True, num_workers=nw)
        ds = datasets[name]  # the training path: an epoch-seeded sampler, then set_epoch
        out = build_loader(ds, batch_size=batch_size, sampler=EpochSampler(len(ds), seed=0), workers=nw,
                           kind="auto" if kind == "-" else kind)
        set_epoch(out, epoch)
        return out

    # (pipeline, workers, loader kind, consumer): ours with threads, as auto runs them with CUDA;
    # the headline rows also run with worker processes and with the float normalisation
    # done here on the CPU ("+norm": what a CPU-only trainer pays; on a GPU it runs there).
    configs = [("reference", 0, "-", "")]
    configs += [(name, 0, "-", c) for name in ("ours-jpeg", "ours-cache") for c in ("", "+norm")]
    if workers > 0:
        configs += [("reference", workers, "processes", "")]
        configs += [(name, workers, "threads", c) for name in ("ours-jpeg", "ours-cache") for c in ("", "+norm")]
        configs += [(name, workers, "processes", "") for name in ("ours-jpeg", "ours-cache")]
        configs += [(name, workers, "threads", "") for name in ("default-jpeg", "default-cache")]
    else:
        configs += [(name, 0, "-", "") for name in ("default-jpeg", "default-cache")]
    consume = {"": lambda b: None, "+norm": lambda b: norm(b[0])}
    best = {c: 0.0 for c in configs}  # images/s
    for rep in range(passes + 1):  # pass 0 warms up (page cache, allocator, imports)
        for c in configs:
            name, nw, kind, how = c
            secs, n = _pass(loader(name, nw, kind, rep), consume[how], skip=max(1, nw))
            log.debug("%s%s workers=%d %s pass %d: %.0f img/s", name, how, nw, kind, rep, n / secs)
            if rep > 0:
                best[c] = max(best[c], n / secs)

    ref = {c[1]: best[c] for c in configs if c[0] == "reference"}
    rows = [{"pipeline": c[0] + c[3], "workers": c[1], "loader": c[2], "img_per_s": round(best[c], 1),
             "vs_reference": round(best[c] / ref[c[1]], 2)} for c in configs]
    head = "threads" if workers > 0 else "-"
    ratio = {(name, how): best[(name, workers, head, how)] / ref[workers]
             for name in ("ours-jpeg", "ours-cache") for how in ("", "+norm")}
    speedup, cache_speedup = ratio[("ours-jpeg", "")], ratio[("ours-cache", "")]
    norm_speedup = (ratio[("ours-jpeg", "+norm")], ratio[("ours-cache", "+norm")])
    lines = [f"loader benchmark: {images} JPEGs 384x512 q90, batch {batch_size}, output {image_size} px, "
             f"best of {passes} passes, steady state",
             f"{'pipeline':<19} {'workers':>7} {'loader':>9} {'img/s':>9} {'vs ref':>7}"]
    lines += [f"{r['pipeline']:<19} {r['workers']:>7} {r['loader']:>9} {r['img_per_s']:>9.1f} {r['vs_reference']:>7.2f}"
              for r in rows]
    lines += [f"with the float normalisation on this CPU: JPEG {norm_speedup[0]:.2f}x, cache {norm_speedup[1]:.2f}x"]
    lines += [f"crop cache build: {cache_s:.2f} s ({images / cache_s:.0f} img/s, {max(1, workers)} threads, "
              "not counted above)",
              f"loader speedup vs reference: {speedup:.2f}",
              f"loader cache speedup vs reference: {cache_speedup:.2f}"]
    return {"rows": rows, "cache_build_s": round(cache_s, 3), "speedup": round(speedup, 2),
            "cache_speedup": round(cache_speedup, 2), "norm_speedup": [round(v, 2) for v in norm_speedup],
            "text": "\n".join(lines)}
