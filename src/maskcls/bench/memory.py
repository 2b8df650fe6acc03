"""``maskcls bench memory``: peak memory of one loader pass over a large synthetic set.

Prepares ``images`` synthetic photos, then iterates the training loader once with
``workers`` worker processes at the default small input size, sampling the resident memory
of the whole process tree (main + workers). RSS double-counts pages shared after fork;
PSS splits them fairly, so both are printed.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import psutil


class TreeMemory:
    """Background sampler of the process tree's summed RSS and PSS (bytes)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak_rss, self.peak_pss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            for p in [me] + me.children(recursive=True):
                try:
                    info = p.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
                except psutil.Error:
                    pass
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def bench_memory(*, images: int = 20000, workers: int = 2, image_size: int = 128, batch_size: int = 30,
                 workdir: Path | None = None) -> dict:
    from torch.utils.data import DataLoader

    from ..config import DataConfig
    from ..data.preprocessing import Preprocessing
    from ..engine.fold_data import make_dataset
    from ..prep.prepare import prepare
    from ..prep.prepared import load_prepared
    from ..synth.dataset import synthesize
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.time()
        people = max(2, round(images / 7))
        synthesize(Path(tmp) / "data", people=people, eval_people=1, seed=0)
        t_synth = time.time() - t0
        t0 = time.time()
        prepare(Path(tmp) / "data", Path(tmp) / "prepared", folds=5)
        t_prep = time.time() - t0
        prep = load_prepared(Path(tmp) / "prepared")
        pp = Preprocessing(image_size, [0.5] * 3, [0.5] * 3, False, "fast")
        rows = prep.train_rows()
        ds = make_dataset(prep, rows, DataConfig(), pp, training=True, seed=0)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
        base = psutil.Process().memory_info().rss
        t0 = time.time()
        with TreeMemory() as mem:
            n = sum(len(y) for _, y, _ in loader)
        t_pass = time.time() - t0
    gib = 1024 ** 3
    text = "\n".join([
        f"images: {n} training photos (384x512), loader pass at {image_size}px, batch {batch_size}, "
        f"{workers} workers",
        f"synth {t_synth:.0f}s, prepare {t_prep:.0f}s, loader pass {t_pass:.0f}s ({n / t_pass:.0f} img/s)",
        f"main process RSS before the pass: {base / gib:.2f} GiB",
        "peak RSS of the process tree (main + workers, shared pages counted per process): "
        f"{mem.peak_rss / gib:.2f} GiB",
        f"peak PSS of the process tree (shared pages split): {mem.peak_pss / gib:.2f} GiB",
        f"target < 2 GiB: {'met' if mem.peak_rss < 2 * gib else 'NOT met'}"])
    return {"images": n, "peak_rss": mem.peak_rss, "peak_pss": mem.peak_pss, "text": text}
