"""The teachers of distillation (:mod:`.distill`): their fold-f checkpoints (checked to come from the
student's split), their class probabilities of manifest rows (offline) or of the student's augmented batches
(``distill.online``), and the student's starting weights from theirs (``distill.init``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ...config import Config
from ...config_io import config_from_dict
from ...data.loader import build_loader
from ...data.preprocessing import Preprocessing
from ...errors import CheckpointError, ConfigError
from ...models.heads import probabilities, tta_views
from ...prep.prepared import Prepared
from ...progress import track
from ...rundir.checkpoint import load_checkpoint
from ...rundir.files import fold_dir, read_run_info
from ...rundir.models import model_from_checkpoint
from ...rundir.oof import read_oof_file
from ...task import Task
from ..fold_data import make_dataset, resolve_loader
from .averaging import average_state_dicts


def _same_task(a: Task, b: Task) -> bool:
    return list(a.class_names) == list(b.class_names) and [x.name for x in a.attributes] == [
        x.name for x in b.attributes]


def teacher_checkpoint(run: str | Path, fold: int, *, valid_ids: pd.Series, task: Task) -> Path:
    """The fold-``fold`` best.pt of teacher ``run``, after checking that it was validated on exactly the
    student's validation images (``valid_ids``: their manifest image ids) and predicts the same classes.

    Raises:
        CheckpointError: not a run, no such fold, another split or another label space (the message says which).
    """
    run = Path(run)
    read_run_info(run)  # a clear error when it is not a run directory
    d = fold_dir(run, fold)
    best = d / "best.pt"
    if not best.is_file() or not (d / "oof.csv").is_file():
        raise CheckpointError(f"teacher {run} has no trained fold {fold} ({best}); the student's fold {fold} needs "
                              f"the teachers' fold {fold}: train it (maskcls train --folds {fold}) or distill other "
                              "folds with --folds")
    meta = load_checkpoint(best, fallback=False)["meta"]  # the label space first: another task is the real cause
    if not _same_task(Task.from_meta(meta), task):
        raise CheckpointError(f"teacher {run} predicts {meta['num_classes']} other classes "
                              f"({', '.join(meta['class_names'][:4])}, …) than the student's task of "
                              f"{task.num_classes} ({', '.join(task.class_names[:4])}, …); use teachers trained on the "
                              "student's prepared directory")
    theirs = set(read_oof_file(d / "oof.csv")["image_id"].astype(str))
    ours = set(valid_ids.astype(str))
    if theirs != ours:
        raise CheckpointError(f"teacher {run} was validated on other images in fold {fold} ({len(theirs ^ ours)} "
                              "differ): it was trained on another split, so it may have seen the student's "
                              "validation images; use teachers trained on the same prepared directory and folds")
    return best


def _load_teacher(path: Path, device: torch.device) -> tuple[nn.Module, dict, dict]:
    """A teacher checkpoint's model (on ``device``, in eval mode), its meta and its config dict."""
    ck = load_checkpoint(path, fallback=False)
    return model_from_checkpoint(ck).to(device).eval(), ck["meta"], ck["config"]


def _require_like_student(path: Path, meta: dict, ours: dict, what: str, fix: str) -> None:
    """ConfigError unless teacher ``path``'s ``meta`` matches ``ours`` (keys: model, heads, preprocessing)."""
    theirs = {"model": meta["model_name"], "heads": meta["heads"], "preprocessing": meta["preprocessing"]}
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        raise ConfigError(f"{what}: teacher {path.parent.parent} has another {' and '.join(differ)} than the student "
                          f"({'; '.join(f'{k}: {theirs[k]} vs {ours[k]}' for k in differ)}); train the student with "
                          f"the teachers' config (--config TEACHER/config.yaml) or {fix}")


def _views_probs(model: nn.Module, x: torch.Tensor, task: Task, heads: str, tta: str,
                 temperature: float) -> torch.Tensor:
    """``model``'s K-class probabilities of batch ``x`` at ``temperature``, averaged over ``tta``'s views."""
    views = tta_views(x, tta)
    return sum(probabilities(model(v).float() / temperature, task, heads) for v in views) / len(views)


@torch.no_grad()
def teacher_probs(path: Path, prep: Prepared, rows: pd.DataFrame, *, tta: str = "none", temperature: float = 1.0,
                  device: torch.device | None = None, batch_size: int = 64, workers: int = 0) -> np.ndarray:
    """One teacher checkpoint's class probabilities (N×K, fp32) of manifest ``rows`` at ``temperature``, with its
    own preprocessing; ``tta='hflip'`` averages the photo and its mirror."""
    device = device or torch.device("cpu")
    model, meta, config = _load_teacher(path, device)
    cfg, pp, task = config_from_dict(config), Preprocessing(**meta["preprocessing"]), Task.from_meta(meta)
    ds = make_dataset(prep, rows, cfg.data, pp, training=False, seed=0)
    kind = resolve_loader(cfg.data)[1]
    loader = build_loader(ds, batch_size=batch_size, sampler=range(len(ds)), workers=workers, kind=kind)
    out = []
    for x, _, _ in track(loader, desc=f"teacher {path.parent.parent.name}", enabled=True):
        out.append(_views_probs(model, x.to(device), task, meta["heads"], tta, temperature).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, task.num_classes), np.float32)


def teacher_checkpoints(cfg: Config, prep: Prepared, fold: int, valid_rows: pd.DataFrame) -> list[Path]:
    """The fold-``fold`` best.pt of every run in ``cfg.distill.teachers``, checked by :func:`teacher_checkpoint`."""
    if not cfg.distill.teachers:
        raise ConfigError("distill.teachers is empty; give at least one teacher run (maskcls distill --teacher RUN)")
    return [teacher_checkpoint(r, fold, valid_ids=valid_rows["image_id"], task=prep.task) for r in cfg.distill.teachers]


def ensemble_teacher_probs(cfg: Config, prep: Prepared, fold: int, train_rows: pd.DataFrame,
                           valid_rows: pd.DataFrame, *, device: torch.device | None = None,
                           paths: list[Path] | None = None) -> np.ndarray:
    """The teachers' (``cfg.distill``) averaged fold-``fold`` probabilities of ``train_rows``, in their order
    (``paths``: their checkpoints when already resolved by :func:`teacher_checkpoints`)."""
    d = cfg.distill
    paths = paths or teacher_checkpoints(cfg, prep, fold, valid_rows)
    workers = resolve_loader(cfg.data)[0]
    total = None
    for p in paths:
        q = teacher_probs(p, prep, train_rows, tta=d.tta, temperature=d.temperature, device=device,
                          batch_size=cfg.train.valid_batch_size, workers=workers)
        total = q if total is None else total + q
    return total / len(paths)


def student_start(paths: list[Path], how: str, *, model_name: str, heads: str,
                  pp: Preprocessing) -> dict[str, torch.Tensor] | None:
    """The student's starting weights for ``distill.init`` = ``how``: None for ``pretrained`` (keep the fresh
    model's), the first teacher's for ``teacher``, the element-wise mean of all teachers' for ``average``.

    Raises:
        ConfigError: a teacher of another model, heads or preprocessing than the student's (its weights would
            not fit, or would see other inputs than they were trained on).
    """
    if how == "pretrained":
        return None
    chosen = paths[:1] if how == "teacher" else paths

    def states():
        for p in chosen:
            ck = load_checkpoint(p, fallback=False)
            _require_like_student(p, ck["meta"], {"model": model_name, "heads": heads, "preprocessing": pp.to_dict()},
                                  f"distill.init={how}", "set distill.init=pretrained")
            yield ck["model"]
    return average_state_dicts(states())


class OnlineTeachers:
    """``distill.online``: the teachers' averaged probabilities (over teachers and ``tta`` views, at
    ``temperature``, fp32) of a training batch exactly as the student gets it, augmented and preprocessed.
    Teachers must have the student's preprocessing (their architecture may differ)."""

    def __init__(self, paths: list[Path], *, task: Task, pp: Preprocessing, tta: str, temperature: float,
                 device: torch.device, channels_last: bool = False):
        self.task, self.tta, self.t, self.models = task, tta, float(temperature), []
        for p in paths:
            model, meta, _ = _load_teacher(p, device)
            _require_like_student(p, meta, {"preprocessing": pp.to_dict()}, "distill.online",
                                  "set distill.online=false")
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.models.append((model, meta["heads"]))

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        total = sum(_views_probs(m, x, self.task, heads, self.tta, self.t) for m, heads in self.models)
        return total / len(self.models)
