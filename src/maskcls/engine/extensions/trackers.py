"""Experiment trackers, on Accelerate's tracker classes: TensorBoard per fold, W&B and MLflow per run.

What each one receives:

* ``tensorboard`` — ``RUN/fold<k>/tb/``: the per-epoch scalars of the fold (``train/loss``,
  ``valid/f1``, ``valid/f1_mask``, ``lr``, …) and the resolved config as text.
* ``wandb`` / ``mlflow`` — one tracker run per maskcls run, named after the run directory,
  in project / experiment ``run.project``: the resolved config (plus what the start banner
  reports), per-epoch metrics of every fold as ``fold<k>/train/loss``… (each fold's x-axis is
  ``fold<k>/epoch``), the summary (``summary/mean_f1``, ``summary/oof_f1``, per fold and per
  head), and ``report.html``, ``summary.json``, ``decision.json``, ``config.yaml``, ``run.json``
  as artifacts.
  A resumed run continues the same tracker run (its id is kept in ``run.json``).

The Accelerator is created before the run directory exists, TensorBoard needs a writer per
fold and a W&B / MLflow run spans all folds, so rather than ``Accelerator(log_with=…)`` this
module holds ``accelerate.tracking`` objects itself — on rank 0 only.

What a run uses, and whether it can, is decided before the run directory exists
(:mod:`.tracker_plan`: packages, servers, W&B's mode; never a network wait). A tracker that
fails during training is switched off with a warning — it never costs the training.
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import Callable

import yaml

from ...config_io import flatten
from ...errors import MaskclsError
from ..trainer.callbacks import Callback, Trainer
from .tracker_plan import TrackerPlan

log = logging.getLogger(__name__)


def summary_metrics(summary: dict) -> dict:
    """summary.json's numbers as flat ``summary/…`` metrics (None left out)."""
    flat = {"summary/mean_f1": summary.get("mean_f1"), "summary/oof_f1": summary.get("oof_f1")}
    for h, v in (summary.get("head_f1") or {}).items():
        flat[f"summary/head_f1/{h}"] = v
    decision = summary.get("decision") or {}
    flat["summary/decision/f1_argmax"] = decision.get("f1_argmax")
    flat["summary/decision/f1_tuned_cross_fitted"] = decision.get("f1_tuned_cross_fitted")
    for f, r in (summary.get("folds") or {}).items():
        for k in ("best_f1", "best_acc", "best_epoch"):
            flat[f"summary/fold{f}/{k}"] = r.get(k)
    return {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunTrackers:
    """The trackers of one run on this process; rank 0 holds them, other ranks get an inert set.

    Args:
        plan: from :func:`.tracker_plan.plan_trackers`.
        run: the run directory (W&B writes RUN/wandb/; the default MLflow store lies beside it).
        enabled: False on ranks other than 0.
        on_epoch: called with (fold, metrics row) after every epoch, before the trackers log it.
    """

    def __init__(self, plan: TrackerPlan, run: Path, *, enabled: bool = True,
                 on_epoch: Callable[[int, dict], None] | None = None):
        self.plan, self.run = plan, Path(run)
        self.enabled = enabled and bool(plan.names)
        # a caller's own per-epoch hook (maskcls tune reports to Optuna); rank 0 only, and unlike a
        # tracker it may raise to stop the run (optuna.TrialPruned)
        self.on_epoch = on_epoch if enabled else None
        self.wandb = self.mlflow = None
        self.fold_tb: dict[int, object] = {}
        self.off: set[str] = set()  # trackers switched off after a failure
        self._wandb_folds: set[int] = set()
        self.config_text = ""
        self._env_set: list[str] = []  # environment variables set for a tracker, unset by finish()

    # ------------------------------------------------------------------ run level
    def start(self, *, config: dict, resolved: dict) -> dict:
        """Open the run-level trackers with the config; returns what run.json records about them."""
        if not self.enabled:
            return {}
        self.config_text = yaml.safe_dump(config, sort_keys=False)
        info: dict = {"names": self.plan.names}
        if "tensorboard" in self.plan.names:
            info["tensorboard"] = {"dirs": "fold*/tb"}
        if "wandb" in self.plan.names:
            info["wandb"] = self._start_wandb({**config, "resolved": resolved})
        if "mlflow" in self.plan.names:
            info["mlflow"] = self._start_mlflow(flatten({**config, "resolved": resolved}))
        return info

    def _start_wandb(self, config: dict) -> dict:
        from accelerate.tracking import WandBTracker
        run_id = self.plan.ids.get("wandb", {}).get("id") or uuid.uuid4().hex[:8]
        tracker = WandBTracker(self.plan.project, name=self.run.name, id=run_id, resume="allow", dir=str(self.run),
                               mode=self.plan.wandb_mode, job_type="train")
        try:
            tracker.start()
            tracker.store_init_configuration(config)
        except Exception as e:  # noqa: BLE001 - wandb raises many kinds; the user needs the reason
            raise MaskclsError(f"W&B could not start ({type(e).__name__}: {e}); try run.wandb_mode=offline, or "
                               "leave wandb out of run.trackers") from None
        self.wandb = tracker
        local = Path(tracker.run.dir).parent if self.plan.wandb_mode == "offline" else None
        if local is not None:
            log.info("W&B runs offline into %s; upload it later with: wandb sync %s", local, local)
        return {"id": run_id, "project": self.plan.project, "mode": self.plan.wandb_mode,
                **({"offline_dir": str(local)} if local else {})}

    def _start_mlflow(self, params: dict) -> dict:
        import mlflow
        from accelerate.tracking import MLflowTracker
        uri, artifacts = self.plan.mlflow_store(self.run)
        if uri.startswith("file:") and "MLFLOW_ALLOW_FILE_STORE" not in os.environ:
            # MLflow 3 refuses file stores unless asked; the user asked. Set while the tracker runs only.
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
            self._env_set.append("MLFLOW_ALLOW_FILE_STORE")
        mlflow.set_tracking_uri(uri)
        previous = self.plan.ids.get("mlflow", {}).get("run_id")
        tracker = MLflowTracker(experiment_name=self.plan.project, logging_dir=artifacts, run_id=previous,
                                run_name=self.run.name, tags={"maskcls.run_dir": str(self.run.resolve())})
        try:
            tracker.start()
            if previous is None:  # MLflow params are write-once: a resumed run keeps its own
                tracker.store_init_configuration({k: str(v) for k, v in params.items()})
        except Exception as e:  # noqa: BLE001 - store, schema and server errors of many kinds
            if mlflow.active_run() is not None:
                mlflow.end_run(status="FAILED")
            self._restore_env()
            raise MaskclsError(f"MLflow could not start at {uri} ({type(e).__name__}: {e}); check "
                               "run.mlflow_uri, or leave mlflow out of run.trackers") from None
        self.mlflow = tracker
        return {"run_id": tracker.active_run.info.run_id, "experiment": self.plan.project, "tracking_uri": uri}

    # ------------------------------------------------------------------ folds and epochs
    def start_fold(self, fold: int, directory: Path) -> None:
        """TensorBoard events of ``fold`` in ``directory/tb``, starting with the config as text."""
        if not self.enabled or "tensorboard" not in self.plan.names or "tensorboard" in self.off:
            return
        from accelerate.tracking import TensorBoardTracker

        def start():
            tb = TensorBoardTracker("tb", directory)
            tb.start()
            text = "    " + self.config_text.replace("\n", "\n    ")  # a markdown code block
            tb.writer.add_text("config", text, 0)
            self.fold_tb[fold] = tb
        self._safe("tensorboard", start)

    def log_epoch(self, fold: int, row: dict) -> None:
        """One finished epoch: the metrics.csv ``row`` (epoch, train_loss, valid_f1, lr, …)."""
        if self.on_epoch is not None:
            self.on_epoch(fold, row)
        if not self.enabled:
            return
        epoch = int(row["epoch"])
        scalars = {k.replace("_", "/", 1): float(v) for k, v in row.items() if k != "epoch" and v is not None}
        if fold in self.fold_tb:
            self._safe("tensorboard", lambda: self.fold_tb[fold].log(scalars, step=epoch))
        per_fold = {f"fold{fold}/{k}": v for k, v in scalars.items()}
        if self.wandb is not None:
            self._safe("wandb", lambda: self._wandb_log(fold, epoch, per_fold))
        if self.mlflow is not None:
            self._safe("mlflow", lambda: self.mlflow.log(per_fold, step=epoch))

    def _wandb_log(self, fold: int, epoch: int, values: dict) -> None:
        run = self.wandb.run
        if fold not in self._wandb_folds:  # each fold's curves are drawn against its own epochs
            run.define_metric(f"fold{fold}/epoch")
            run.define_metric(f"fold{fold}/*", step_metric=f"fold{fold}/epoch")
            self._wandb_folds.add(fold)
        self.wandb.log({**values, f"fold{fold}/epoch": epoch})

    def end_fold(self, fold: int) -> None:
        tb = self.fold_tb.pop(fold, None)
        if tb is not None:
            self._safe("tensorboard", tb.finish)

    # ------------------------------------------------------------------ the end
    def finish(self, *, summary: dict | None, files: list[Path], status: str = "finished") -> None:
        """Log the summary and ``files`` (those that exist) as artifacts, then close every tracker.

        ``status``: finished | interrupted | failed (how W&B and MLflow mark the tracker run).
        """
        for fold in list(self.fold_tb):
            self.end_fold(fold)
        metrics = summary_metrics(summary) if summary else {}
        files = [Path(f) for f in files if Path(f).is_file()]
        if self.wandb is not None:
            self._safe("wandb", lambda: self._finish_wandb(metrics, files, status))
            self.wandb = None
        if self.mlflow is not None:
            self._safe("mlflow", lambda: self._finish_mlflow(metrics, files, status))
            self.mlflow = None
        self._restore_env()

    def _restore_env(self) -> None:
        """Unset the environment variables this run set: the process is left as it was found."""
        while self._env_set:
            os.environ.pop(self._env_set.pop(), None)

    def _finish_wandb(self, metrics: dict, files: list[Path], status: str) -> None:
        import wandb
        run = self.wandb.run
        try:
            run.summary.update(metrics)
            if files:
                art = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]", "-", f"{self.run.name}-files"), type="maskcls-run")
                for f in files:
                    art.add_file(str(f))
                run.log_artifact(art)
        finally:
            run.finish(exit_code={"finished": 0, "interrupted": 130}.get(status, 1))

    def _finish_mlflow(self, metrics: dict, files: list[Path], status: str) -> None:
        import mlflow
        try:
            if metrics:
                mlflow.log_metrics(metrics)
            for f in files:
                mlflow.log_artifact(str(f))
        finally:
            mlflow.end_run(status={"finished": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))

    def _safe(self, name: str, fn) -> None:
        """Run ``fn``; a failure switches tracker ``name`` off with a warning instead of stopping training."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a tracker must never cost a training
            log.warning("%s tracking failed (%s: %s); it is off for the rest of this run", name, type(e).__name__, e)
            self.off.add(name)
            if name == "tensorboard":
                self.fold_tb.clear()
            elif name == "wandb":
                self.wandb = None
            elif name == "mlflow":
                self.mlflow = None


class TrackEpochs(Callback):
    """Every saved epoch's metrics.csv row to the run's trackers (and ``run_training``'s ``on_epoch_end``), from
    rank 0, once the epoch's last.pt is written: a tracker callback may stop the run there."""

    def __init__(self, trackers: RunTrackers):
        self.trackers = trackers

    def on_saved(self, trainer: Trainer, final: bool) -> None:
        if not final and trainer.is_main:
            self.trackers.log_epoch(trainer.fold, trainer.state.history[-1])

