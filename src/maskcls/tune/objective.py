"""One trial: the sampled config trained as an ordinary run directory, each epoch's validation macro F1
reported to Optuna, a hopeless trial stopped by the pruner.

The trial's run directory is ``DIR/trials/trial-<number>`` (``report``, ``predict``, ``audit`` and
``export`` work on it as on any run); its ``run.json`` gets a ``tune`` entry (study, trial, params,
state). A pruned trial keeps the epochs it trained (``last.pt``, ``best.pt``, ``metrics.csv``) and
says so in ``pruned.json``; it has no ``summary.json``, as a run that stopped early has none.
"""
from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import optuna

from ..config import Config
from ..engine.run import run_training
from ..fsutil import atomic_write_json
from ..prep.prepared import Prepared
from ..rundir.files import read_run_info
from .space import Param, apply_params
from .storage import worker_identity

log = logging.getLogger(__name__)


def trial_dir(study_dir: Path, number: int) -> Path:
    return Path(study_dir) / "trials" / f"trial-{number:04d}"


class EpochReporter:
    """The per-epoch hook of a trial's run: F1 to Optuna, and ``TrialPruned`` when the pruner says so.

    Steps count epochs across the folds, in order (fold ``folds[i]``'s epoch e is step i·epochs + e), so
    that every trial's step k means the same amount of training.
    """

    def __init__(self, trial: optuna.Trial, folds: list[int], epochs: int):
        self.trial, self.folds, self.epochs = trial, folds, epochs
        self.last: dict | None = None

    def __call__(self, fold: int, row: dict) -> None:
        step = self.folds.index(fold) * self.epochs + int(row["epoch"])
        f1 = float(row["valid_f1"])
        self.trial.report(f1, step)
        self.last = {"fold": fold, "epoch": int(row["epoch"]), "step": step, "valid_f1": f1}
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"fold {fold} epoch {row['epoch']}: valid macro F1 {f1:.4f}")


def _mark_run(run: Path, entry: dict) -> None:
    """``run.json``'s ``tune`` entry (the run directory exists once the first epoch is saved)."""
    if (run / "run.json").is_file():
        atomic_write_json(run / "run.json", {**read_run_info(run), "tune": entry})


def _write_report(run: Path) -> None:
    from ..report.page import write_report
    try:
        write_report(run)
    except Exception as e:  # noqa: BLE001 - a report failure must not lose a finished trial
        log.warning("could not write %s/report.html (%s); run `maskcls report %s` to retry", run, e, run)


class Objective:
    """``study.optimize``'s function: a config from ``params`` over ``cfg``, trained on ``folds`` of ``prep``;
    the value is the mean of the folds' best validation macro F1.

    Args:
        cfg: the fixed part of the config (``-c``/``--set``); each trial sets the searched keys on a copy.
        prep: the prepared directory.
        params: the search space.
        folds: the folds each trial trains (the objective averages them).
        study_dir: trials go to ``study_dir/trials/``.
        storage: the storage as shown to people (no password), recorded in each run.json.
    """

    def __init__(self, cfg: Config, prep: Prepared, params: list[Param], *, folds: list[int], study_dir: Path,
                 storage: str):
        self.cfg, self.prep, self.params, self.folds = cfg, prep, params, list(folds)
        self.study_dir, self.storage = Path(study_dir), storage

    def __call__(self, trial: optuna.Trial) -> float:
        values = {p.key: p.suggest(trial) for p in self.params}
        cfg = apply_params(self.cfg, values)
        run = trial_dir(self.study_dir, trial.number)
        for k, v in {**worker_identity(), "run_dir": str(run.resolve()), "config": cfg.to_dict()}.items():
            trial.set_user_attr(k, v)
        entry = {"study": trial.study.study_name, "storage": self.storage, "trial": trial.number, "params": values}
        reporter = EpochReporter(trial, self.folds, cfg.train.epochs)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v}" for k, v in values.items()))
        start = time.time()
        try:
            summary = run_training(cfg, self.prep, folds=self.folds, run_dir=run, on_epoch_end=reporter,
                                   on_summary=_write_report if cfg.run.report else None)
        except optuna.TrialPruned as e:
            log.info("trial %d pruned at %s", trial.number, e)
            atomic_write_json(run / "pruned.json", {"pruned": True, "trial": trial.number, **(reporter.last or {}),
                                                    "reason": str(e), "seconds": round(time.time() - start, 1)})
            _mark_run(run, {**entry, "state": "PRUNED", "at": reporter.last})
            raise
        finally:
            gc.collect()  # the trial's model and loaders go before the next trial's are built
        value = summary.get("mean_f1")
        if value is None:
            raise RuntimeError(f"trial {trial.number}: {run} finished no epoch, so it has no validation F1")
        _mark_run(run, {**entry, "state": "COMPLETE", "value": value})
        return float(value)
