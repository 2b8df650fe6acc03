"""The learning-rate range test (Smith 2015; fastai's ``lr_find``, Lightning's ``Tuner.lr_find``) on a
run's real set-up: the model, optimiser (param groups, head lr multiplier, weight decay), loss,
loader, augmentation, mixing and precision that ``maskcls train`` would build for the fold — built by
the same :class:`~.fold.FoldTrainer` and stepped by the same :func:`~.loop.train_step`.

The learning rate grows exponentially from ``start`` to ``end`` over at most ``steps`` optimizer steps
(every param group scaled together, so the head keeps its multiple of the backbone's lr); the sweep stops
early once the smoothed loss exceeds 4× its minimum or the loss is not finite. Two rules read the curve:
the steepest descent of the smoothed loss, and the lr at its minimum divided by 10 (see
:func:`suggest`). The weights are thrown away: no checkpoint is written, and nothing is written into the
prepared directory (the crop cache is used only when it is already built).
"""
from __future__ import annotations

import copy
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..config_io import dump_yaml, validate
from ..data.loader import set_epoch
from ..errors import ConfigError
from ..fsutil import atomic_path, atomic_write_json, atomic_write_text
from ..prep.prepared import Prepared
from ..progress import progress
from ..rundir.files import create_run_dir, next_run_dir
from .accel import process_state_restored
from .run import scratch_trainer
from .trainer.loop import EpochSetup, TrainingDiverged, train_step

log = logging.getLogger(__name__)

DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum (fastai, Lightning)
BETA = 0.98       # the loss EMA's factor (fastai, Lightning); bias-corrected, so early points are not pulled to 0


def exp_lrs(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` learning rates from ``start`` to ``end``, each a constant factor above the one before."""
    if not (0 < start < end and math.isfinite(end)):
        raise ConfigError(f"lr-find needs 0 < --start < --end, not start={start:g}, end={end:g}")
    if not 2 <= steps <= 1000:
        raise ConfigError(f"lr-find --steps {steps}: use 2..1000 (a few hundred at most is plenty)")
    return start * (end / start) ** (np.arange(steps) / (steps - 1))


class ExpLR:
    """A scheduler for :func:`~.loop.train_step`: optimizer step k runs at ``lrs[k]`` (group 0, the backbone);
    every other group keeps its ratio to group 0 (the head's ``optim.head_lr_mult``)."""

    def __init__(self, optimizer, lrs: np.ndarray):
        self.optimizer, self.lrs, self.k = optimizer, lrs, 0
        base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]  # the ratios the config set
        self.ratios = [b / base[0] if base[0] > 0 else 1.0 for b in base]
        self._apply()

    def _apply(self) -> None:
        for g, r in zip(self.optimizer.param_groups, self.ratios):
            g["lr"] = float(self.lrs[min(self.k, len(self.lrs) - 1)]) * r

    def step(self) -> None:
        self.k += 1
        self._apply()


class Smoother:
    """The loss's exponential moving average with bias correction, and the stopping rule."""

    def __init__(self, beta: float = BETA, divergence: float = DIVERGENCE):
        self.beta, self.divergence, self.avg, self.n, self.best = beta, divergence, 0.0, 0, math.inf

    def add(self, loss: float) -> tuple[float, str | None]:
        """(smoothed loss, why to stop or None) after one more step's loss."""
        if not math.isfinite(loss):
            return math.nan, "the loss is not finite"
        self.n += 1
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smoothed = self.avg / (1 - self.beta ** self.n)
        self.best = min(self.best, smoothed)
        if smoothed > self.divergence * self.best:
            return smoothed, f"the smoothed loss exceeds {self.divergence:g}x its minimum"
        return smoothed, None


@dataclass
class Sweep:
    """What the sweep measured: per optimizer step the lr of group 0, every group's lr, the loss
    (mean over the accumulation window) and its smoothed value."""
    lrs: list[float] = field(default_factory=list)
    group_lrs: list[list[float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None  # why it stopped before its last step; None = it ran every step
    seconds: float = 0.0

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"step": np.arange(1, len(self.lrs) + 1), "lr": self.lrs, "loss": self.losses,
                             "smoothed": self.smoothed})


def _batches(loader):
    """The training loader's batches, epoch after epoch (each epoch reshuffled and re-augmented)."""
    epoch = 0
    while True:
        set_epoch(loader, epoch)
        yield from loader
        epoch += 1


def sweep(s: EpochSetup, loader, lrs: np.ndarray, *, smoother: Smoother | None = None) -> Sweep:
    """Train ``s`` one optimizer step per lr of ``lrs`` (``s.accum_steps`` batches each) until the smoother
    says stop; ``s.scheduler`` must be an :class:`ExpLR` over ``lrs``."""
    smoother, out, t0 = smoother or Smoother(), Sweep(), time.perf_counter()
    s.model.train()
    s.optimizer.zero_grad(set_to_none=True)
    batches, bar = _batches(loader), progress(total=len(lrs), desc="lr-find", unit="step")
    for k in range(len(lrs)):
        groups = [g["lr"] for g in s.optimizer.param_groups]
        lr = groups[0]  # what the step runs at (an fp16 step the scaler skipped leaves the lr where it was)
        total = 0.0
        try:
            for j in range(s.accum_steps):
                x, y, _ = next(batches)
                total += train_step(s, x, y, sync=j == s.accum_steps - 1, window=s.accum_steps,
                                    where=f"lr-find step {k + 1}, lr {lr:.3g}")[2].item()
            loss = total / s.accum_steps
        except TrainingDiverged:
            loss = math.nan
        smoothed, stop = smoother.add(loss)
        if math.isfinite(loss):
            out.lrs.append(float(lr))
            out.group_lrs.append(groups)
            out.losses.append(loss)
            out.smoothed.append(smoothed)
        bar.update(1, lr=f"{lr:.2e}", loss=f"{loss:.4f}")
        if stop and k < len(lrs) - 1:  # at the last step it ends anyway
            out.stopped = f"{stop} at step {k + 1} (lr {lr:.2e})"
            break
    bar.close()
    batches.close()  # ends the loader's iterator (and its workers) now, not at garbage collection
    out.seconds = time.perf_counter() - t0
    return out


def suggest(lrs, smoothed, *, skip: float = 0.1) -> dict:
    """Read the curve with two rules and choose one.

    ``steepest``: the lr where the smoothed loss falls fastest against log(lr), among the points before its
    minimum (the minimum itself excluded), after the first ``skip`` share of steps (their EMA has seen few
    losses: noise). ``min_over_10``: the lr of the smoothed loss's minimum, divided by 10 — the minimum
    already sits at the edge of divergence (and the EMA's lag places it late), a decade below is the
    fastest lr that still trains steadily. The suggestion is min/10: on a curve of ~100 noisy steps the
    steepest point jumps with the noise, while the minimum's decade is stable; steepest is the fallback
    when the loss never fell.
    """
    lrs, sm = np.asarray(lrs, float), np.asarray(smoothed, float)
    if len(lrs) < 2:
        raise ConfigError("lr-find recorded fewer than 2 finite losses; lower --start or raise --steps")
    i_min = int(np.argmin(sm))
    lo = max(1, int(round(skip * len(lrs))))
    steepest = None
    if i_min > lo:  # central differences over the whole curve (a one-sided end point would favour the minimum)
        grad = np.gradient(sm, np.log10(lrs))
        steepest = float(lrs[lo + int(np.argmin(grad[lo:i_min]))])
    min_over_10 = float(lrs[i_min] / 10)
    if i_min > 0 and min_over_10 >= lrs[0]:
        chosen, why = min_over_10, ("min/10: a decade below where the loss stops falling; the minimum's decade "
                                    "is stable, the steepest point moves with the noise of single batches")
    elif steepest is not None:
        chosen, why = steepest, "steepest descent: the minimum lies less than a decade above --start"
    else:
        chosen, why = float(lrs[0]), "--start: the smoothed loss never fell; sweep from a lower --start"
    return {"steepest": steepest, "min_lr": float(lrs[i_min]), "min_over_10": min_over_10,
            "suggested": chosen, "rule": why.split(":")[0], "why": why}


def plot_sweep(path: Path, sw: Sweep, sug: dict, *, default_lr: float | None = None) -> None:
    """loss against lr (log x): the raw losses, the smoothed curve and both rules' lrs, the suggestion bold."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(sw.lrs, sw.losses, color="#9ca3af", lw=0.8, alpha=0.8, label="loss (one step)")
    ax.plot(sw.lrs, sw.smoothed, color="#1d4ed8", lw=2, label="smoothed loss")
    lines = [(sug["steepest"], "#059669", "steepest descent"), (sug["min_over_10"], "#d97706", "min/10"),
             (default_lr, "#6b7280", "config optim.lr")]
    for lr, color, name in lines:
        if lr is None:
            continue
        chosen = lr == sug["suggested"] and name != "config optim.lr"
        ax.axvline(lr, color=color, ls="-" if chosen else "--", lw=2.2 if chosen else 1.2,
                   label=f"{name} {lr:.2g}{'  (suggested)' if chosen else ''}")
    # up to 1.5x the starting loss: the descent stays readable, the divergence runs off the top
    low, top = min(min(sw.losses), min(sw.smoothed)), 1.5 * max(sw.smoothed[0], min(sw.smoothed))
    ax.set_ylim(low - 0.05 * abs(low), min(top, max(max(sw.losses), max(sw.smoothed))) + 0.05 * abs(low))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (backbone; other groups keep their ratio)")
    ax.set_ylabel("training loss")
    ax.set_title(f"learning-rate range test: {len(sw.lrs)} steps" + (", stopped early" if sw.stopped else ""))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, facecolor="white")


@dataclass
class LrFind:
    """The result: the sweep, the rules' reading of it, where its files are, and what it ran on."""
    sweep: Sweep
    suggestion: dict
    out: Path
    key: str            # the config key the suggestion is for (optim.lr, or sched.max_lr under onecycle)
    config_lr: float    # that key's value in the config
    facts: dict


def _out_dir(out: str | Path | None, runs_dir: str, prep: Prepared) -> Path:
    """A new directory for the sweep's files: ``<run.runs_dir>/lr-find-<n>`` by default; never inside PREPARED."""
    path = Path(out) if out else next_run_dir(runs_dir, "lr-find")
    inside = path.resolve() == prep.dir.resolve() or prep.dir.resolve() in path.resolve().parents
    if inside:
        raise ConfigError(f"lr-find --out {path} lies inside the prepared directory {prep.dir}; it writes nothing "
                          "there: choose a folder elsewhere (default: <run.runs_dir>/lr-find-<n>)")
    if path.exists():
        raise FileExistsError(f"{path} already exists; lr-find writes into a new directory: choose another --out")
    return path


@process_state_restored()
def lr_find(cfg: Config, prep: Prepared, *, fold: int = 0, start: float = 1e-7, end: float = 1.0,
            steps: int = 100, out: str | Path | None = None) -> LrFind:
    """Run the range test on ``fold``'s training images with ``cfg``'s set-up; write its CSV, plot, JSON and
    config into a new directory. The config is not modified; the trained weights are discarded.

    Args:
        cfg: the run's configuration (``sched`` aside: the sweep replaces the schedule).
        prep: the prepared directory (read only).
        fold: the fold whose training rows feed the sweep.
        start, end: the first and last learning rate of the backbone (the head keeps ``optim.head_lr_mult``).
        steps: optimizer steps at most (``train.accum_steps`` batches each).
        out: a new directory (default ``<run.runs_dir>/lr-find-<n>``).
    """
    cfg = copy.deepcopy(cfg)
    validate(cfg)
    lrs = exp_lrs(start, end, steps)
    if not 0 <= fold < prep.num_folds:
        raise ConfigError(f"--fold {fold} does not exist; {prep.dir} has folds 0..{prep.num_folds - 1}")
    path = _out_dir(out, cfg.run.runs_dir, prep)
    with tempfile.TemporaryDirectory(prefix="maskcls-lr-find-") as scratch:
        trainer = scratch_trainer(cfg, prep, fold, Path(scratch))  # no EMA, averaging or trackers: nothing is
        # validated or logged
        s = trainer.setup
        s.scheduler = ExpLR(s.optimizer, lrs)
        sw = sweep(s, trainer.data.train_loader, lrs)
        facts = {"fold": fold, "model": cfg.model.name, "optimizer": cfg.optim.name,
                 "head_lr_mult": cfg.optim.head_lr_mult, "weight_decay": cfg.optim.weight_decay,
                 "batch_size": cfg.train.batch_size, "accum_steps": cfg.train.accum_steps,
                 "image_size": cfg.data.image_size, "precision": cfg.train.mixed_precision,
                 "train_images": len(trainer.data.train_rows), "device": str(trainer.ctx.acc.device)}
        del trainer, s
    sug = suggest(sw.lrs, sw.smoothed)
    key = "sched.max_lr" if cfg.sched.name == "onecycle" else "optim.lr"
    config_lr = cfg.sched.max_lr if key == "sched.max_lr" else cfg.optim.lr
    run = create_run_dir(path)
    atomic_write_text(run / "lr_find.csv", sw.frame().to_csv(index=False))
    plot_sweep(run / "lr_find.png", sw, sug, default_lr=config_lr)
    atomic_write_json(run / "lr_find.json", {**sug, "key": key, "config_lr": config_lr, "start": start, "end": end,
                                             "steps_run": len(sw.lrs), "stopped": sw.stopped,
                                             "seconds": round(sw.seconds, 1), **facts})
    atomic_write_text(run / "config.yaml", dump_yaml(cfg))
    return LrFind(sw, sug, run, key, config_lr, facts)


def summary_lines(res: LrFind) -> list[str]:
    """What the terminal shows: the sweep, both rules, the suggestion and why, the files."""
    f, sug, sw = res.facts, res.suggestion, res.sweep
    steep = f"{sug['steepest']:.2g}" if sug["steepest"] is not None else "none (the loss fell too little)"
    return [
        f"lr-find: {len(sw.lrs)} steps in {sw.seconds:.0f} s on fold {f['fold']} ({f['train_images']} training "
        f"images; {f['model']}, {f['optimizer']}, batch {f['batch_size']}x{f['accum_steps']}, "
        f"{f['image_size']} px, precision {f['precision']}, head lr x{f['head_lr_mult']:g})",
        f"stopped: {sw.stopped}" if sw.stopped else "stopped: after the last step (--end reached)",
        f"steepest descent of the smoothed loss: {steep}",
        f"minimum of the smoothed loss at {sug['min_lr']:.2g} -> min/10: {sug['min_over_10']:.2g}",
        f"suggested {res.key} = {sug['suggested']:.2g} (config: {res.config_lr:.2g}); rule {sug['why']}",
        f"plot: {res.out / 'lr_find.png'}  curve: {res.out / 'lr_find.csv'}",
    ]
