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

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from .. import __version__
from ..config import Config
from ..config_io import validate
from ..errors import ConfigError
from ..models.factory import pretrained_info, size_kwargs
from ..prep.prepared import Prepared, load_prepared
from .accel import make_accelerator
from .fold import FoldTrainer, RunContext
from .fold_data import Preprocessing, resolve_loader, resolve_preprocessing
from .rundir import create_run_dir, next_run_dir, read_run_config, read_run_info, summarize_run, write_run_files

log = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: completed epochs are saved; ``run`` can be resumed."""

    def __init__(self, run: Path, is_main: bool = True):
        super().__init__(str(run))
        self.run, self.is_main = run, is_main


def _resolve(cfg: Config, prep: Prepared, acc: Accelerator) -> Preprocessing:
    """Fill in what the config leaves open (heads, input size, mean/std, loader, precision), in place,
    so that config.yaml records what actually runs. Everything that can fail here fails before the
    run directory exists."""
    task = prep.task
    cfg.model.heads = task.resolve_heads(cfg.model.heads)
    info = pretrained_info(cfg.model.name)
    pp = resolve_preprocessing(cfg.data, prep, info.image_size, info.mean, info.std)
    size_kwargs(info, cfg.model.name, pp.image_size)  # a fixed-size model that cannot take this size
    if cfg.data.faces:
        from ..prep.faces import load_face_crops
        load_face_crops(prep.dir)  # missing or stale crops: say so now
    cfg.data.image_size, cfg.data.mean, cfg.data.std = pp.image_size, pp.mean, pp.std
    cfg.data.num_workers, cfg.data.loader = resolve_loader(cfg.data)
    cfg.train.mixed_precision = acc.mixed_precision
    if cfg.model.heads == "multi" and cfg.loss.head_weights is None:
        cfg.loss.head_weights = [1.0] * len(task.attributes)
    return pp


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
            "preprocessing": pp.to_dict(), "loader": {"kind": cfg.data.loader, "workers": cfg.data.num_workers},
            "effective_batch": cfg.train.batch_size * acc.num_processes * cfg.train.accum_steps})
    broadcast_object_list(path)
    acc.wait_for_everyone()
    return Path(path[0])


def run_training(cfg: Config, prep: Prepared, *, folds: list[int] | None = None, run_dir: str | Path | None = None,
                 resume: bool = False) -> dict:
    """Train ``folds`` (default: all) of ``prep`` and return summary.json's content plus ``run_dir``.

    Args:
        cfg: the run's configuration (checked again here); not modified.
        prep: the prepared directory to train on.
        folds: fold indices; None = every fold.
        run_dir: new run directory (default ``<run.runs_dir>/<name>-<n>``); with ``resume``,
            the existing run to continue.
        resume: continue ``run_dir``'s unfinished folds from their last.pt.
    Raises:
        RunInterrupted: on Ctrl-C, after the summary of what was saved is written.
    """
    cfg = copy.deepcopy(cfg)
    validate(cfg)
    fold_list = list(range(prep.num_folds)) if folds is None else sorted(set(folds))
    bad = [f for f in fold_list if not 0 <= f < prep.num_folds]
    if bad:
        raise ConfigError(f"fold(s) {bad} do not exist; {prep.dir} has folds 0..{prep.num_folds - 1}")
    acc = make_accelerator(cfg.train)
    pp = _resolve(cfg, prep, acc)
    if resume:
        if run_dir is None or not Path(run_dir).is_dir():
            raise FileNotFoundError(f"run directory {run_dir} not found; nothing to resume")
        run = Path(run_dir)
    else:
        run = _start_run(cfg, prep, fold_list, run_dir, acc, pp)
    ctx = RunContext(cfg, prep, prep.task, pp, run, acc, resume=resume)
    try:
        results, interrupted = _train_folds(ctx, fold_list)
    except BaseException:
        if not resume and acc.is_main_process:
            _remove_if_empty(run)
        raise
    summary = None
    if acc.is_main_process:
        finished = not interrupted and all(r["status"] in ("done", "stopped") for r in results.values())
        summary = summarize_run(run, name=run.name, task=ctx.task, heads=cfg.model.heads, folds=results,
                                finished=finished)
    if interrupted:
        raise RunInterrupted(run, acc.is_main_process)
    return {**(summary or {}), "run_dir": str(run), "is_main": acc.is_main_process}


def _train_folds(ctx: RunContext, fold_list: list[int]) -> tuple[dict[int, dict], bool]:
    results: dict[int, dict] = {}
    interrupted = False
    try:
        for f in fold_list:
            results[f] = FoldTrainer(ctx, f).run()
    except KeyboardInterrupt:
        interrupted = True
        if not any((ctx.run / f"fold{f}" / "last.pt").exists() for f in fold_list):
            raise  # nothing saved yet: the directory goes (see run_training)
    for f in fold_list:
        results.setdefault(f, {"best_f1": None, "status": "interrupted" if interrupted else "pending"})
    return results, interrupted


def _remove_if_empty(run: Path) -> None:
    """A run that failed before its first epoch was saved leaves nothing behind (its name stays free)."""
    if run.is_dir() and not any(run.glob("fold*/last.pt")) and not any(run.glob("fold*/last.prev.pt")):
        shutil.rmtree(run, ignore_errors=True)
        log.info("removed %s: the run stopped before its first epoch was saved", run)


def resume_training(run_dir: str | Path, *, prepared: str | Path | None = None) -> dict:
    """Continue the unfinished folds of ``run_dir`` with its recorded config and folds.

    Args:
        run_dir: a run directory written by ``maskcls train``.
        prepared: the prepared directory, when it moved since (default: the one in run.json).
    """
    run = Path(run_dir)
    info = read_run_info(run)
    cfg = read_run_config(run)
    prep = load_prepared(prepared or info["prepared"])
    return run_training(cfg, prep, folds=info["folds"], run_dir=run, resume=True)
