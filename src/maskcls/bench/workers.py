"""``maskcls bench workers``: whole training epochs with 1 loader worker against 2 (and 0).

The case behind issue 10's "performance cliff": training on stored crops at 128 px ran at
5.7 img/s with ``data.num_workers=1`` against 42 img/s with 2 on an idle machine. Loader
benchmarks alone cannot show such a cliff, since it comes from the loader and the training
step sharing the cores; so this benchmark runs ``maskcls train`` itself: one fold, one epoch,
on a generated dataset whose photos are cut once into the memory-mapped crop cache
(``data.cache=true``, the same uint8 memory-map path as ``maskcls faces``' crop store), at
128 px. Each worker count trains ``passes`` times, interleaved (0, 1, 2, 0, 1, 2, …), and keeps
its best epoch's training images/s as the trainer itself measures it; the closing line is
the ratio of 1 worker to 2 (target: at least 0.5).
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from ..config import Config


def bench_workers(*, images: int = 700, image_size: int = 128, passes: int = 2, counts: tuple[int, ...] = (0, 1, 2),
                  model_name: str = "tf_efficientnet_lite0", work: str | Path | None = None) -> dict:
    """Training images/s of one epoch per worker count in ``counts`` (best of ``passes``).

    Args:
        images: training photos generated (7 per person; fold 0 of 5 is held out).
        image_size: training input side.
        passes: interleaved repetitions per worker count.
        counts: the ``data.num_workers`` values compared (1 and 2 must be among them).
        model_name: timm architecture (its packaged ImageNet weights when available).
        work: folder for the dataset and runs (default: a temporary folder, removed after).

    Returns:
        ``{"img_s": {workers: best img/s}, "ratio_1_to_2", "text"}``.
    """
    from ..engine.run import run_training
    from ..prep.prepare import prepare
    from ..prep.prepared import load_prepared
    from ..synth.dataset import synthesize
    if 1 not in counts or 2 not in counts:
        raise ValueError("counts must include 1 and 2")
    with tempfile.TemporaryDirectory(prefix="maskcls-bench-workers-") as tmp:
        root = Path(work) if work else Path(tmp)
        synthesize(root / "data", people=max(10, -(-images // 7)), eval_people=0, seed=0)
        prepare(root / "data", root / "prepared", folds=5, seed=719)
        prep = load_prepared(root / "prepared")
        base = Config()
        rates: dict[int, list[float]] = {w: [] for w in counts}
        for rep in range(passes):
            for w in counts:
                cfg = replace(base, model=replace(base.model, name=model_name),
                              data=replace(base.data, image_size=image_size, num_workers=w, cache=True),
                              train=replace(base.train, epochs=1),
                              run=replace(base.run, report=False, trackers=[]))
                run_dir = root / "runs" / f"w{w}-{rep}"
                run_training(cfg, prep, folds=[0], run_dir=run_dir)
                metrics = pd.read_csv(run_dir / "fold0" / "metrics.csv")
                rates[w].append(float(metrics["images_per_s"].max()))
        n_train = int(((prep.manifest["split"] == "train") & (prep.manifest["fold"] != 0)).sum())
    best = {w: max(r) for w, r in rates.items()}
    ratio = best[1] / best[2]
    lines = [f"one training epoch of fold 0: {model_name} at {image_size}px, {n_train} training images from the "
             f"crop cache (uint8 memory map), best of {passes} interleaved passes",
             f"{'data.num_workers':<20}{'img/s':>8}{'vs 2':>8}   passes"]
    for w in counts:
        lines.append(f"{w:<20}{best[w]:>8.1f}{best[w] / best[2]:>8.2f}   " + ", ".join(f"{r:.1f}" for r in rates[w]))
    lines.append(f"workers 1 vs 2: {ratio:.2f} (target >= 0.5)")
    return {"img_s": best, "ratio_1_to_2": ratio, "text": "\n".join(lines)}
