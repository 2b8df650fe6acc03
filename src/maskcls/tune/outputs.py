"""What a study leaves in its directory, rewritten (atomically) after every trial:

* ``trials.csv`` — one row per trial (not those never run, ``surplus``): number, state, value, duration, params,
  epochs reported, run dir;
* ``best.yaml`` — the best trial's full config, as ``maskcls train -c best.yaml`` takes it;
* ``study.html`` — the page (:mod:`.page`).

Several workers may write them at once: each write is a whole new file renamed into place, so a
reader sees one worker's complete snapshot. A failure here is a warning: it never stops a search.
"""
from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pandas as pd
import yaml

from ..fsutil import atomic_path, atomic_write_text
from .page import write_page

log = logging.getLogger(__name__)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """Optuna's trials dataframe, trimmed to what a person compares (params without their prefix)."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"),
                                multi_index=False)
    if "user_attrs_surplus" in df.columns:  # trials the study had no room for: never run (tune.study.within_total)
        df = df[~df["user_attrs_surplus"].eq(True)]
    if df.empty:
        return pd.DataFrame(columns=["number", "state", "value", "duration_s", "epochs_reported", "run_dir"])
    out = df[["number", "state", "value"]].copy()
    out["duration_s"] = df["duration"].dt.total_seconds().round(1)
    for c in df.columns:
        if c.startswith("params_"):
            out[c.removeprefix("params_")] = df[c]
    steps = {t.number: len(t.intermediate_values) for t in study.get_trials(deepcopy=False)}
    out["epochs_reported"] = out["number"].map(steps)
    for attr in ("run_dir", "host"):
        col = f"user_attrs_{attr}"
        out[attr] = df[col] if col in df.columns else None
    return out.sort_values("number").reset_index(drop=True)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial with the highest value, or None before the first one."""
    try:
        return study.best_trial
    except ValueError:
        return None


def best_yaml(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """The best trial's config (the fixed part and its sampled values) as a commented YAML file."""
    head = (f"# maskcls tune: the best trial of study {study.study_name!r} so far: trial {trial.number}, "
            f"validation macro F1 {trial.value:.4f}\n"
            f"# its run: {trial.user_attrs.get('run_dir')}\n"
            f"# searched: {', '.join(f'{k}={v}' for k, v in trial.params.items())}\n"
            "# train it: maskcls train PREPARED -c best.yaml --folds all\n")
    return head + yaml.safe_dump(trial.user_attrs["config"], sort_keys=False)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_outputs(study: optuna.Study, study_dir: Path) -> None:
    """trials.csv, best.yaml (once a trial completed) and study.html in ``study_dir``."""
    study_dir = Path(study_dir)
    steps = [("trials.csv", lambda: _write_csv(study_dir / "trials.csv", trials_table(study)))]
    best = best_trial(study)
    if best is not None and "config" in best.user_attrs:
        steps.append(("best.yaml", lambda: atomic_write_text(study_dir / "best.yaml", best_yaml(study, best))))
    steps.append(("study.html", lambda: write_page(study, study_dir, trials_table(study), best)))
    for name, write in steps:
        try:
            write()
        except Exception as e:  # noqa: BLE001 - an output failure must not stop a search
            log.warning("could not write %s (%s: %s); it is rewritten after the next trial", study_dir / name,
                        type(e).__name__, e)
