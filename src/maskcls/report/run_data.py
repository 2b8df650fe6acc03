"""What a run directory holds, read for the report — also while training still writes to it.

Reads what the trainer writes through the run layer (config.yaml through the one config reader, summary.json
strictly, the fold list) and, itself, fold<k>/{metrics,lr,oof}.csv and a checkpoint's meta when the summary is not
written yet, and says what is missing. The per-epoch CSVs of a training that is still running are read as far as
they parse.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import Config
from ..errors import CheckpointError, ConfigError, DataError
from ..rundir.files import fold_numbers, read_run_config, read_run_info
from ..rundir.summary import read_summary
from ..task import Task

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("epoch", "train_loss", "train_f1", "valid_loss", "valid_f1", "valid_acc")
VIEW_NAMES = {"hflip": "flip TTA", "none": "one view"}  # train.valid_tta / predict --tta, in a score's line


def view_words(tta: str, precision: str | None) -> str:
    """How a score was computed, as its printed line names it: ``flip TTA, fp32``, ``one view, bf16``."""
    return ", ".join([VIEW_NAMES.get(tta, tta)] + ([precision] if precision else []))


def validation_precision(info: dict) -> str | None:
    """The precision a run's validation scored in ('fp32' or 'bf16'; None when run.json does not say where it
    trained): :func:`~maskcls.engine.accel.inference_precision` of the device and mixed precision run.json records.
    Read off a GPU, a CUDA run trained in bf16 was validated in bf16, one in fp16 (auto picks fp16 only where bf16
    is not supported) in fp32."""
    if info.get("valid_precision") in ("fp32", "bf16"):  # recorded where the run trained (since 2026-12-07)
        return info["valid_precision"]
    device, trained = info.get("device"), info.get("mixed_precision")
    if not isinstance(device, str) or not isinstance(trained, str):
        return None
    if not device.startswith("cuda"):
        return "fp32"
    import torch

    from ..engine.accel import inference_precision
    if torch.cuda.is_available():
        return inference_precision(device, trained)
    return "bf16" if trained == "bf16" else "fp32"


def validation_view(run_dir: str | Path) -> tuple[str, str | None]:
    """(the view, the precision) a run's validation scores, oof.csv and summary.json were computed in: its
    ``train.valid_tta`` ('none' for a run from before the key) and :func:`validation_precision`."""
    run_dir = Path(run_dir)
    tta = read_run_config(run_dir).train.valid_tta
    try:
        precision = validation_precision(read_run_info(run_dir))
    except (CheckpointError, DataError):
        precision = None
    return tta, precision


@dataclass
class FoldFiles:
    metrics: pd.DataFrame  # one row per finished epoch (may be empty)
    lr: pd.DataFrame  # one row per optimizer step (may be empty)
    oof: pd.DataFrame | None  # best-epoch validation rows, None until written


@dataclass
class RunData:
    run_dir: Path
    name: str
    config_text: str
    config: Config | None  # None when config.yaml is missing or does not match the schema
    summary: dict | None
    task: Task
    meta: dict = field(default_factory=dict)  # a checkpoint's meta (preprocessing actually used), if any
    folds: dict[int, FoldFiles] = field(default_factory=dict)
    view: str | None = None  # how its validation scored, e.g. "flip TTA, fp32" (view_words); None when unknown

    @property
    def class_names(self) -> list[str]:
        return list(self.task.class_names)

    def oof(self) -> pd.DataFrame | None:
        """All out-of-fold rows written so far, with a ``fold`` column."""
        parts = [f.oof.assign(fold=k) for k, f in self.folds.items() if f.oof is not None]
        return pd.concat(parts, ignore_index=True) if parts else None

    @property
    def image_size(self) -> int | None:
        """The input size the run used: the resolved config, else a checkpoint's preprocessing."""
        size = self.config.data.image_size if self.config is not None else None
        return size or (self.meta.get("preprocessing") or {}).get("image_size")


def _read_csv(path: Path, numeric: bool = True) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, on_bad_lines="skip")  # a trainer may be mid-write
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as exc:
        log.warning("report: %s is empty or unreadable (%s)", path, exc)
        return pd.DataFrame()
    return df.apply(pd.to_numeric, errors="coerce") if numeric else df


def _read_fold(fold_dir: Path) -> FoldFiles:
    metrics = _read_csv(fold_dir / "metrics.csv")
    if metrics is None or metrics.empty:
        metrics = pd.DataFrame(columns=list(METRIC_COLUMNS))
    elif missing := sorted(set(METRIC_COLUMNS) - set(metrics.columns)):
        raise DataError(f"{fold_dir / 'metrics.csv'} lacks column(s) {missing}; is it from maskcls train?")
    lr = _read_csv(fold_dir / "lr.csv")
    lr = lr.dropna() if lr is not None and {"step", "lr"} <= set(lr.columns) else pd.DataFrame()
    oof = _read_csv(fold_dir / "oof.csv", numeric=False)
    if oof is not None:
        if not {"path", "label", "pred"} <= set(oof.columns):
            raise DataError(f"{fold_dir / 'oof.csv'} lacks path/label/pred; expected path,label,pred,prob_0,…")
        oof[["label", "pred"]] = oof[["label", "pred"]].apply(pd.to_numeric, errors="coerce")
        oof = oof.dropna(subset=["label", "pred"]).astype({"label": int, "pred": int})
    return FoldFiles(metrics=metrics.dropna(subset=["epoch"]), lr=lr, oof=oof)


def _typed_config(run_dir: Path) -> Config | None:
    """The run's config through the one config reader (what train and resume read), or None with a warning when it
    does not match this maskcls's configuration (the report then shows the file as text)."""
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        return read_run_config(run_dir)
    except ConfigError as exc:
        log.warning("report: config.yaml does not match this maskcls's configuration (%s); "
                    "showing it as text only", str(exc).splitlines()[0])
        return None


def _checkpoint_meta(fold_dirs: list[Path]) -> dict:
    from ..rundir.checkpoint import load_checkpoint
    for d in fold_dirs:
        for name in ("best.pt", "last.pt"):
            if (d / name).is_file():
                try:
                    return load_checkpoint(d / name, fallback=False).get("meta") or {}
                except (CheckpointError, OSError):
                    continue
    return {}


def _task(summary: dict | None, meta: dict, folds: dict[int, FoldFiles]) -> Task:
    """The run's label space: from summary.json, else a checkpoint, else the oof probability columns."""
    for src in (summary, meta):
        if src and (src.get("class_names") or src.get("num_classes")):
            return Task.from_meta(src)
    k = 0
    for f in folds.values():
        if f.oof is not None and len(f.oof):
            k = sum(c.startswith("prob_") for c in f.oof.columns) or int(f.oof[["label", "pred"]].max().max()) + 1
            break
    return Task.competition() if k == 18 else Task.flat([str(i) for i in range(k)])


def load_run(run_dir: str | Path) -> RunData:
    """Read everything a (possibly unfinished) run directory holds.

    Raises:
        CheckpointError: when the directory holds no run files at all.
    """
    run_dir = Path(run_dir)
    fold_dirs = list(fold_numbers(run_dir).values()) if run_dir.is_dir() else []
    files = [run_dir / "config.yaml", run_dir / "summary.json"]
    files += [d / f for d in fold_dirs for f in ("metrics.csv", "lr.csv", "oof.csv")]
    if not any(f.is_file() for f in files):
        raise CheckpointError(f"{run_dir} holds no run files (config.yaml, summary.json, fold<k>/metrics.csv); "
                              "train first with `maskcls train`, then report on its run directory")
    text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").is_file() else ""
    summary = read_summary(run_dir, required=False)  # written at the end: a running training has none yet
    folds = {int(d.name[4:]): _read_fold(d) for d in fold_dirs}
    meta = _checkpoint_meta(fold_dirs)
    config = _typed_config(run_dir)
    return RunData(run_dir=run_dir, name=(summary or {}).get("run") or run_dir.resolve().name, config_text=text,
                   config=config, summary=summary, task=_task(summary, meta, folds), meta=meta,
                   folds=folds, view=_view(run_dir, config))


def _view(run_dir: Path, config: Config | None) -> str | None:
    if config is None:
        return None
    try:
        info = read_run_info(run_dir)
    except (CheckpointError, DataError):
        info = {}
    return view_words(config.train.valid_tta, validation_precision(info))


def incomplete_reasons(run: RunData) -> list[str]:
    """Why the run is not finished yet; empty when it is."""
    s = run.summary
    reasons = [] if s else ["summary.json not written yet: training is running or was interrupted"]
    if s and not s.get("finished", False):
        reasons.append("summary.json says the run has not finished")
    for k, st in ((s or {}).get("folds") or {}).items():
        if st.get("status", "done") != "done":
            reasons.append(f"fold {k} is {st['status']}")
    for k, f in run.folds.items():
        if not len(f.metrics):
            reasons.append(f"fold {k}: no epoch finished yet")
        elif f.oof is None:
            reasons.append(f"fold {k}: no oof.csv yet")
    return reasons
