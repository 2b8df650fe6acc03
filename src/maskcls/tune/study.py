"""A study: Optuna's sampler, pruner and storage chosen by name, the workers' shared stopping rule, and
the outputs refreshed after every trial.

Every worker, on one machine or many, runs the same command; they share the study through the
storage. ``trials`` counts the study's finished trials (complete or pruned) whoever ran them: each
worker stops once the study has that many (Optuna's ``MaxTrialsCallback``), so rerunning the
command after a crash continues to the same total. Workers that finish at the same moment can
take the study a trial or two past it (each checks after its own trial).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, GridSampler, RandomSampler, TPESampler
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from ..config import Config
from ..errors import ConfigError
from ..fsutil import read_json
from ..prep.prepared import Prepared
from .objective import Objective
from .outputs import write_outputs
from .space import Param
from .storage import fail_dead_local_trials, fail_stale_trials, open_storage, redact, storage_url

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneSettings:
    """How the search runs (the CLI's flags); ``sampler`` and ``pruner`` also take Optuna objects."""
    study_dir: Path
    trials: int
    folds: list[int] = field(default_factory=lambda: [0])
    storage: str | None = None          # None: sqlite DIR/study.db; 'journal'; journal:PATH; a database URL
    study_name: str | None = None       # None: the study directory's name
    timeout: float | None = None        # seconds after which this worker starts no new trial
    sampler: str | BaseSampler = "tpe"
    pruner: str | BasePruner = "median"
    seed: int | None = None             # the sampler's seed (leave unset with several workers)
    heartbeat: int = 30                 # seconds between a database worker's heartbeats
    worker_trials: int | None = None    # this worker runs at most this many trials (None: until the study has N)

    def name(self) -> str:
        return self.study_name or Path(self.study_dir).resolve().name


def make_sampler(choice: str | BaseSampler, params: list[Param], *, trials: int, seed: int | None) -> BaseSampler:
    """``tpe`` (random for the first third of the trials, at most Optuna's default 10; constant liar, so that
    parallel workers do not all try the same point), ``random`` or ``grid`` (every combination)."""
    if isinstance(choice, BaseSampler):
        return choice
    if choice == "tpe":
        return TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)), constant_liar=True)
    if choice == "random":
        return RandomSampler(seed=seed)
    if choice == "grid":
        return GridSampler({p.key: p.grid() for p in params}, seed=seed)
    raise ConfigError(f"--sampler {choice!r}: choose one of {', '.join(SAMPLERS)}")


def make_pruner(choice: str | BasePruner, *, steps: int) -> BasePruner:
    """``median`` (after 5 trials, never on a trial's first epoch: mostly warm-up), ``hyperband`` over the
    trial's ``steps`` epochs, or ``none``."""
    if isinstance(choice, BasePruner):
        return choice
    if choice == "median":
        return MedianPruner(n_startup_trials=5, n_warmup_steps=2)  # steps are 1-based epochs: epoch 1 is never pruned
    if choice == "hyperband":
        return HyperbandPruner(min_resource=1, max_resource=max(steps, 1))
    if choice == "none":
        return NopPruner()
    raise ConfigError(f"--pruner {choice!r}: choose one of {', '.join(PRUNERS)}")


def _check_same_search(study: optuna.Study, params: list[Param], folds: list[int], where: str) -> None:
    """A study keeps its space and folds: another worker (or a rerun) with different ones is refused."""
    mine = {"maskcls_space": {p.key: p.to_dict() for p in params}, "maskcls_folds": list(folds)}
    attrs = study.user_attrs
    for k, v in mine.items():
        if k not in attrs:
            try:
                study.set_user_attr(k, v)
                continue
            except Exception:  # noqa: BLE001 - another worker set it at the same moment: compare with theirs
                attrs = study.user_attrs
                if k not in attrs:
                    raise
        if attrs[k] != v:
            what = "search space" if k == "maskcls_space" else "folds"
            raise ConfigError(f"study {study.study_name!r} in {where} was started with another {what} "
                              f"({attrs[k]}); use the same one, or a new --study name")


def open_study(params: list[Param], settings: TuneSettings, *,
               steps: int) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study, or load it when it exists (another worker, or a rerun); ``steps``: epochs per trial."""
    sampler = make_sampler(settings.sampler, params, trials=settings.trials, seed=settings.seed)
    pruner = make_pruner(settings.pruner, steps=steps)  # both checked before anything is created
    _check_trials_dir(Path(settings.study_dir), settings.name())
    Path(settings.study_dir).mkdir(parents=True, exist_ok=True)
    url = storage_url(settings.storage, Path(settings.study_dir))
    storage = open_storage(url, heartbeat=settings.heartbeat)
    study = optuna.create_study(storage=storage, study_name=settings.name(), sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {study.study_name!r} in {redact(url)} minimises; it was not made by maskcls tune")
    _check_same_search(study, params, settings.folds, redact(url))
    if settings.seed is not None and study.trials and not isinstance(settings.sampler, BaseSampler):
        # A rerun (or a later chunk) of a seeded study must not replay the first run's random draws: the
        # seed moves on by the trials the study already has, so the search stays repeatable and new.
        study.sampler = make_sampler(settings.sampler, params, trials=settings.trials,
                                     seed=settings.seed + len(study.trials))
    return study, storage


def _check_trials_dir(study_dir: Path, name: str) -> None:
    """Trial directories are named by trial number: one study directory holds the trials of one study."""
    for info in sorted((study_dir / "trials").glob("trial-*/run.json")):
        other = (read_json(info) or {}).get("tune", {}).get("study")
        if other is not None and other != name:
            raise ConfigError(f"{study_dir} holds the trials of study {other!r}, not {name!r}; give another "
                              f"--study-dir, or --study {other} to continue that one")


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_study(cfg: Config, prep: Prepared, params: list[Param], settings: TuneSettings, *,
              on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> optuna.Study:
    """Run trials until the study has ``settings.trials`` finished ones (or the timeout passes).

    Args:
        cfg: the fixed config (``-c``/``--set``); the searched keys are set per trial.
        prep: the prepared directory to train on.
        params: the search space (:func:`.space.load_space`).
        settings: storage, study, folds, sampler, pruner, budget.
        on_trial: called after each of this worker's trials (the CLI prints a line).
    Returns:
        the study, with ``DIR/trials.csv``, ``DIR/best.yaml`` and ``DIR/study.html`` written.
    """
    study, storage = open_study(params, settings, steps=cfg.train.epochs * len(settings.folds))
    fail_dead_local_trials(study, storage)
    fail_stale_trials(study)
    objective = Objective(cfg, prep, params, folds=settings.folds, study_dir=Path(settings.study_dir),
                          storage=redact(storage_url(settings.storage, Path(settings.study_dir))))

    written: list = [None]  # the trials' states when the outputs were last written

    def refresh(s: optuna.Study) -> None:
        states = [(t.number, t.state) for t in s.get_trials(deepcopy=False)]
        if states != written[0]:
            write_outputs(s, Path(settings.study_dir))
            written[0] = states

    def after_trial(s: optuna.Study, trial: FrozenTrial) -> None:
        refresh(s)
        if on_trial is not None:
            on_trial(s, trial)

    try:
        if finished(study) < settings.trials:
            study.optimize(objective, n_trials=settings.worker_trials, timeout=settings.timeout, gc_after_trial=True,
                           callbacks=[MaxTrialsCallback(settings.trials, states=FINISHED), after_trial])
        else:
            log.info("study %s already has %d finished trials; nothing to do", study.study_name, finished(study))
    finally:
        fail_stale_trials(study)
        refresh(study)
    return study
