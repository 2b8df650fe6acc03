"""``maskcls bench gpu``: the training step rate of the whole pipeline against the model alone, side by side.

The figure to steer the data path by (issue 37). Both sides are the same fold trainer as ``maskcls train`` builds
it (model, size, batch, precision, channels-last, optimizer and its schedule, EMA), taking the same optimizer
steps through the same ``train_step``:

* **model alone** — random uint8 batches already on the device: what the device can do when nothing waits;
* **pipeline** — the fold's training loader over real photos (decoding, augmentation, the hand-off to the device).

They run in alternating rounds (so machine load hits both alike), after warm-up steps that pay for start-up
(cuDNN autotuning, allocator, loader workers); the device is synchronised before each clock reading. The closing
line is ``pipeline vs model alone: X.XX``: 1.00 means the data path keeps the device busy. On a CPU the step is
compute-bound and the loader's workers share the cores with it, so the ratio says how much the loader takes away.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..engine.banner import device_label

log = logging.getLogger(__name__)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Steps:
    """Optimizer steps of ``trainer`` on a stream of batches, timed in rounds."""

    def __init__(self, trainer, batches):
        self.trainer, self.batches = trainer, batches
        self.seconds, self.images = [], []

    def run(self, steps: int, *, timed: bool = True) -> None:
        from ..engine.trainer.loop import train_step
        s, device = self.trainer.setup, self.trainer.ctx.acc.device
        s.model.train()
        _sync(device)
        t0, n = time.perf_counter(), 0
        for _ in range(steps):
            x, y, idx = next(self.batches)
            train_step(s, x, y, sync=True, window=1, lr_log=self.trainer.state.lrs, idx=idx)
            n += len(y)
        _sync(device)
        if timed:
            self.seconds.append(time.perf_counter() - t0)
            self.images.append(n)

    @property
    def img_s(self) -> float:
        """The median round's images/s."""
        return float(np.median([n / t for n, t in zip(self.images, self.seconds)]))


def _loader_batches(loader):
    while True:  # epochs on end: the sampler's order repeats, which the rate does not care about
        yield from loader


def _device_batches(n: int, size: int, classes: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, classes, (n,), generator=g).to(device)
    idx = torch.arange(n)
    while True:
        yield x, y, idx


def _demo_prepared(tmp: Path, people: int) -> Path:
    from ..prep.prepare import prepare
    from ..synth.dataset import synthesize
    synthesize(tmp / "data", people=people, eval_people=0, seed=0, image_size=(384, 512))
    prepare(tmp / "data", tmp / "prepared", folds=5, seed=0)
    return tmp / "prepared"


def bench_gpu(prepared: str | Path | None = None, *, base: Config | None = None, steps: int = 20, rounds: int = 3,
              warmup: int = 5, fold: int = 0, people: int = 40) -> dict:
    """Images/s of the model alone and of the whole pipeline, and their ratio.

    Args:
        prepared: the prepared directory whose photos feed the pipeline (default: a synthetic one of ``people``
            people at the competition's photo size, made in a temporary folder).
        base: the config (default: the defaults; its batch, size, precision, loader and EMA are the ones timed).
        steps: optimizer steps per side and round.
        rounds: alternating rounds; each side's rate is the median round's.
        warmup: untimed steps per side before the rounds.
        fold: the fold whose training images the pipeline loads.
    """
    from ..engine.run import scratch_trainer
    from ..prep.prepared import load_prepared
    cfg = replace(base or Config(), run=replace((base or Config()).run, trackers=[], report=False))
    with tempfile.TemporaryDirectory(prefix="maskcls-bench-gpu-") as tmp:
        tmp = Path(tmp)
        prep = load_prepared(prepared or _demo_prepared(tmp, people))
        (tmp / "run").mkdir()
        trainer = scratch_trainer(cfg, prep, fold, tmp / "run", ema=True)
        t, acc = trainer.ctx.cfg.train, trainer.ctx.acc
        size = trainer.ctx.pp.image_size
        pipe = _Steps(trainer, _loader_batches(trainer.data.train_loader))
        alone = _Steps(trainer, _device_batches(t.batch_size, size, prep.task.num_classes, acc.device))
        for side in (alone, pipe):
            side.run(warmup, timed=False)
        for _ in range(rounds):
            alone.run(steps)
            pipe.run(steps)
        ratio = pipe.img_s / alone.img_s
        facts = (f"{cfg.model.name} at {size} px, batch {t.batch_size}, {t.mixed_precision} "
                 f"({acc.mixed_precision}), channels_last {t.channels_last}, EMA {t.ema}, loader "
                 f"{trainer.ctx.cfg.data.loader} x {trainer.ctx.cfg.data.num_workers}, on {device_label(acc.device)}")
        lines = [f"bench gpu: {facts}; {rounds} alternating rounds of {steps} optimizer steps per side after "
                 f"{warmup} warm-up steps; images/s = the median round's",
                 f"{'model alone (uint8 batches already on the device)':<52}{alone.img_s:>10.1f} img/s",
                 f"{'pipeline (the fold loader over real photos)':<52}{pipe.img_s:>10.1f} img/s",
                 f"pipeline vs model alone: {ratio:.2f}"]
        return {"model_img_s": alone.img_s, "pipeline_img_s": pipe.img_s, "ratio": ratio, "text": "\n".join(lines),
                "device": str(acc.device)}
