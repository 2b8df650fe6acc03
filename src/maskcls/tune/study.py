"""A study: Optuna's sampler, pruner and storage chosen by name, the workers' shared stopping rule, and
the outputs refreshed after every trial.

Every worker, on one machine or many, runs the same command; they share the study through the
storage. ``trials`` counts the study's finished trials (complete or pruned) whoever ran them: a
worker starts no trial once the study has that many finished or running (Optuna's
``MaxTrialsCallback`` over both), so rerunning the command after a crash continues to the same
total. Two workers that start a trial at the same moment could still pass it: a trial numbered
after ``trials`` finished-or-running ones is not run (it is marked failed, ``surplus``, and stops
its worker), so the study ends with exactly ``trials`` finished ones.

A study records what its trials share besides the searched keys: the search space, the folds,
the fixed config (``-c``/``--set``, minus where its files go) and the prepared data. A worker or a
rerun with other fixed settings is refused, since its trials would not compare with the others.
"""
from __future__ import annotations

import json
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
STARTED = (*FINISHED, TrialState.RUNNING)
OPTUNA_TRIAL_LOG = "optuna.study._optimize"  # the logger of Optuna's 'Trial N failed' warnings


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


# Config keys that change where a run's files go or how fast it loads, never its results: a rerun may change them.
NOT_FIXED_SECTIONS = ("run",)
NOT_FIXED_KEYS = ("data.num_workers", "data.loader")


def fixed_settings(cfg: Config, params: list[Param], prep: Prepared | None = None) -> dict:
    """What every trial of a study shares: the config's keys that are not searched (``section.key``: value, as
    JSON would store them) and the prepared data's manifest checksum."""
    searched = {p.key for p in params}
    flat = {f"{section}.{key}": value for section, values in cfg.to_dict().items() if section not in NOT_FIXED_SECTIONS
            for key, value in values.items()}
    fixed = {k: v for k, v in flat.items() if k not in searched and k not in NOT_FIXED_KEYS}
    if prep is not None:
        fixed["prepared data (manifest checksum)"] = prep.meta.get("manifest_sha1")
    return json.loads(json.dumps(fixed))  # lists, not tuples: compared with what the storage gives back


def _fixed_differences(theirs: dict, mine: dict) -> list[str]:
    """'key THEIRS (now MINE)' for the keys both record with other values (a key new in this version is not one)."""
    return [f"{k} {theirs[k]!r} (now {mine[k]!r})" for k in sorted(theirs.keys() & mine.keys()) if theirs[k] != mine[k]]


def _recorded(study: optuna.Study, mine: dict) -> dict:
    """The study's user attrs, after recording each of ``mine`` that it does not have yet (a new study, or one
    started by an older version)."""
    attrs = study.user_attrs
    for k, v in mine.items():
        if k in attrs:
            continue
        try:
            study.set_user_attr(k, v)
        except Exception:  # noqa: BLE001 - another worker set it at the same moment: compare with theirs
            if k not in study.user_attrs:
                raise
        attrs = study.user_attrs
    return attrs


def _check_same_search(study: optuna.Study, params: list[Param], folds: list[int], where: str,
                       fixed: dict | None = None) -> None:
    """A study keeps its space, folds and fixed settings: another worker (or a rerun) with different ones is
    refused, saying what differs."""
    mine = {"maskcls_space": {p.key: p.to_dict() for p in params}, "maskcls_folds": list(folds)}
    if fixed is not None:
        mine["maskcls_fixed"] = fixed
    attrs = _recorded(study, mine)
    for k, v in mine.items():
        if k == "maskcls_fixed":
            differ = _fixed_differences(attrs[k], v)
            if differ:
                raise ConfigError(f"study {study.study_name!r} in {where} was run with other fixed settings: "
                                  f"{'; '.join(differ[:4])}{' …' if len(differ) > 4 else ''}; its trials would not "
                                  "compare with new ones: rerun with its -c/--set values, or give these a new "
                                  "--study-dir (or --study name)")
        elif attrs[k] != v:
            what = "search space" if k == "maskcls_space" else "folds"
            raise ConfigError(f"study {study.study_name!r} in {where} was started with another {what} "
                              f"({attrs[k]}); use the same one, or a new --study name")


def open_study(params: list[Param], settings: TuneSettings, *, steps: int,
               fixed: dict | None = None) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study, or load it when it exists (another worker, or a rerun); ``steps``: epochs per trial;
    ``fixed``: the settings its trials share (:func:`fixed_settings`), refused when the study has others."""
    sampler = make_sampler(settings.sampler, params, trials=settings.trials, seed=settings.seed)
    pruner = make_pruner(settings.pruner, steps=steps)  # both checked before anything is created
    _make_study_dir(Path(settings.study_dir))
    _check_trials_dir(Path(settings.study_dir), settings.name())
    url = storage_url(settings.storage, Path(settings.study_dir))
    storage = open_storage(url, heartbeat=settings.heartbeat)
    study = optuna.create_study(storage=storage, study_name=settings.name(), sampler=sampler, pruner=pruner,
                                direction="maximize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {study.study_name!r} in {redact(url)} minimises; it was not made by maskcls tune")
    _check_same_search(study, params, settings.folds, redact(url), fixed)
    if settings.seed is not None and study.trials and not isinstance(settings.sampler, BaseSampler):
        # A rerun (or a later chunk) of a seeded study must not replay the first run's random draws: the
        # seed moves on by the trials the study already has, so the search stays repeatable and new.
        study.sampler = make_sampler(settings.sampler, params, trials=settings.trials,
                                     seed=settings.seed + len(study.trials))
    return study, storage


def _make_study_dir(study_dir: Path) -> None:
    if study_dir.exists() and not study_dir.is_dir():
        raise ConfigError(f"--study-dir {study_dir} is a file, not a folder; give a folder (new, or a study's) for "
                          "trials/, trials.csv and study.db")
    try:
        study_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--study-dir {study_dir}: cannot make the folder ({e.strerror}: {e.filename}); give a "
                          "folder that can be created") from None


def _check_trials_dir(study_dir: Path, name: str) -> None:
    """Trial directories are named by trial number: one study directory holds the trials of one study."""
    for info in sorted((study_dir / "trials").glob("trial-*/run.json")):
        other = (read_json(info) or {}).get("tune", {}).get("study")
        if other is not None and other != name:
            raise ConfigError(f"{study_dir} holds the trials of study {other!r}, not {name!r}; give another "
                              f"--study-dir, or --study {other} to continue that one")


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


class Surplus(Exception):
    """A trial the study had no room for: ``trials`` trials before it were already finished or running."""


def surplus(trial: optuna.Trial, total: int) -> bool:
    """Whether ``total`` trials numbered before ``trial`` are finished or running (so it must not run)."""
    before = trial.study.get_trials(deepcopy=False, states=STARTED)
    return sum(t.number < trial.number for t in before) >= total


def within_total(objective: Callable[[optuna.Trial], float], total: int) -> Callable[[optuna.Trial], float]:
    """``objective``, except for a trial beyond the study's ``total``: marked ``surplus``, it stops its worker
    and fails (not run) instead of training."""
    def run(trial: optuna.Trial) -> float:
        if surplus(trial, total):
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            raise Surplus(f"trial {trial.number} not run: the study already has {total} trials finished or running")
        return objective(trial)
    return run


class QuietStops(logging.Filter):
    """Drops Optuna's 'Trial N failed …' records (a traceback, then the value) for a Ctrl-C or a surplus trial:
    the CLI says those in one line of its own."""

    def __init__(self):
        super().__init__()
        self.quiet: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        number = message.split(" ", 2)[1] if message.startswith("Trial ") else None
        if record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, Surplus)):
            self.quiet.add(number)
            return False
        return not (number in self.quiet and " failed with value " in message)


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
    study, storage = open_study(params, settings, steps=cfg.train.epochs * len(settings.folds),
                                fixed=fixed_settings(cfg, params, prep))
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
        if on_trial is not None and not trial.user_attrs.get("surplus"):
            on_trial(s, trial)

    quiet = QuietStops()
    logging.getLogger(OPTUNA_TRIAL_LOG).addFilter(quiet)
    try:
        if len(study.get_trials(deepcopy=False, states=STARTED)) < settings.trials:
            study.optimize(within_total(objective, settings.trials), n_trials=settings.worker_trials,
                           timeout=settings.timeout, gc_after_trial=True, catch=(Surplus,),
                           callbacks=[MaxTrialsCallback(settings.trials, states=STARTED), after_trial])
        else:
            log.info("study %s already has %d finished or running trials; nothing to do", study.study_name,
                     len(study.get_trials(deepcopy=False, states=STARTED)))
    finally:
        logging.getLogger(OPTUNA_TRIAL_LOG).removeFilter(quiet)
        fail_stale_trials(study)
        refresh(study)
    return study
