"""``maskcls tune``: hyperparameter search on Optuna; every worker runs the same command."""
from __future__ import annotations

import os
import shlex
import sys

from ..errors import ConfigError
from .common import add_config_args, check_prepared_dir, float_range, int_range, sub


def register(subs) -> None:
    s = sub(subs, "tune", "search hyperparameters with Optuna (each trial a run directory; many workers, one study)",
            "maskcls tune prepared --space space.yaml --trials 20 --study-dir tune1 --set train.epochs=3\n"
            "maskcls tune prepared --space space.yaml --trials 20 --study-dir tune1 --storage journal   # + workers\n"
            "CUDA_VISIBLE_DEVICES=0 maskcls tune prepared --space space.yaml --trials 40 --study-dir tune1 \\\n"
            "    --study s1 --storage postgresql://user:pass@dbhost/optuna       # every GPU, every machine\n"
            "maskcls train prepared -c tune1/best.yaml --folds all             # the best config, all folds")
    s.add_argument("dir", metavar="PREPARED", help="prepared directory (maskcls prepare SOURCE --out DIR)")
    s.add_argument("--space", required=True, help="YAML search space: one config key per entry, e.g. "
                   "'optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}'")
    s.add_argument("--trials", type=int_range(1), required=True,
                   help="the study's total of finished (complete or pruned) trials, over all workers")
    s.add_argument("--study-dir", required=True, help="where trials/, trials.csv, best.yaml and study.html go")
    s.add_argument("--storage", help="default: SQLite DIR/study.db; 'journal' (DIR/study.journal, many processes "
                   "on one machine) or journal:PATH; a database URL (postgresql://…) for many machines")
    s.add_argument("--study", help="study name (default: the study directory's name)")
    add_config_args(s)
    s.add_argument("--folds", default="0", help="folds each trial trains; the objective is their mean best F1 "
                   "(default 0)")
    s.add_argument("--timeout", type=float_range(1), help="seconds after which this worker starts no new trial")
    s.add_argument("--worker-trials", type=int_range(1), help="this worker runs at most K trials, then exits "
                   "(rerun to go on; the study still stops at --trials)")
    s.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    s.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    s.add_argument("--seed", type=int_range(0), help="the sampler's seed (one worker: a repeatable search)")
    s.add_argument("--heartbeat", type=int_range(1), default=30, help="seconds between a worker's heartbeats in "
                   "a database storage; a trial silent for twice as long is marked failed (default 30)")
    s.set_defaults(handler=cmd_tune)


def _check_fixed_keys(overrides: list[str], params) -> None:
    from ..config_io import parse_override
    fixed = {parse_override(o)[0] for o in overrides}
    both = sorted(fixed & {p.key for p in params})
    if both:
        raise ConfigError(f"{', '.join(both)}: both fixed with --set and searched in --space; drop one of them")


def trial_line(study, trial, target: int) -> str:
    """One line per trial: k/N, params, value or state, best so far."""
    from optuna.trial import TrialState

    from ..tune.study import finished
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    if trial.state == TrialState.COMPLETE:
        result = f"F1 {trial.value:.4f}"
    elif trial.state == TrialState.PRUNED:
        steps = sorted(trial.intermediate_values)
        last = f" after {len(steps)} epoch(s), F1 {trial.intermediate_values[steps[-1]]:.4f}" if steps else ""
        result = f"pruned{last}"
    else:
        result = trial.state.name.lower()
    try:
        best = f" | best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = ""
    return f"trial {trial.number} ({finished(study)}/{target}): {params} -> {result}{best}"


def cmd_tune(args) -> int:
    import optuna

    from ..config_io import load_config
    from ..prep.prepared import load_prepared
    from ..tune.space import load_space
    from ..tune.study import FINISHED, TuneSettings, run_study
    from .train_cmds import parse_folds
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("maskcls tune trains each trial in one process: start one worker per GPU "
                          "(CUDA_VISIBLE_DEVICES=0 maskcls tune …), not accelerate launch / torchrun")
    check_prepared_dir(args.dir, "tune")
    params = load_space(args.space)  # every check before anything trains
    _check_fixed_keys(args.overrides, params)
    cfg = load_config(args.config, args.overrides)
    prep = load_prepared(args.dir)
    folds = parse_folds(args.folds, prep.num_folds)
    settings = TuneSettings(args.study_dir, args.trials, folds=folds, storage=args.storage, study_name=args.study,
                            timeout=args.timeout, sampler=args.sampler, pruner=args.pruner, seed=args.seed,
                            worker_trials=args.worker_trials,
                            heartbeat=args.heartbeat)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead of Optuna's
    on_trial = lambda study, trial: print(trial_line(study, trial, args.trials), flush=True)  # noqa: E731
    try:
        study = run_study(cfg, prep, params, settings, on_trial=on_trial)
    except KeyboardInterrupt:
        print(f"interrupted: the running trial is marked failed; rerun the same command to continue the study "
              f"to {args.trials}", file=sys.stderr)
        return 130
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in FINISHED]
    pruned = sum(t.state.name == "PRUNED" for t in trials)
    failed = sum(t.state.name == "FAIL" and not t.user_attrs.get("surplus") for t in trials)
    print(f"study {study.study_name}: {len(done)} finished trial(s) ({pruned} pruned), {failed} failed")
    try:
        print(f"best: trial {study.best_trial.number}, validation macro F1 {study.best_value:.4f}, "
              + ", ".join(f"{k}={v}" for k, v in study.best_params.items()))
        print(f"wrote {args.study_dir}/trials.csv, best.yaml, study.html; train the best config with\n"
              f"  maskcls train {shlex.quote(args.dir)} -c {shlex.quote(args.study_dir)}/best.yaml --folds all")
    except ValueError:
        print(f"no trial completed yet; wrote {args.study_dir}/trials.csv and study.html")
    return 0
