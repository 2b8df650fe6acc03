"""A run's trained folds as models ready for inference: which folds (all, the best, a list), each rebuilt from its
checkpoint's own record (architecture, heads, preprocessing, task), never from a guess, and checked against the
run it sits in before anything uses it.

predict, export, serve, audit, soup, distillation's teachers and the bench peers load models here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..config_io import config_from_dict
from ..data.preprocessing import Preprocessing
from ..errors import CheckpointError
from ..models.factory import MaskClsNet, build_model
from ..prep.folds import parse_fold_list
from ..task import Task
from .checkpoint import load_checkpoint
from .files import KEYS_OLD_DEFAULTS, fold_numbers, read_run_config, read_run_info
from .summary import read_summary


@dataclass
class LoadedFold:
    """One fold's model (in eval mode, on the CPU), its checkpoint's meta and config."""
    fold: int
    model: MaskClsNet
    meta: dict
    cfg: Config

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**self.meta["preprocessing"])

    @property
    def task(self) -> Task:
        return Task.from_meta(self.meta)

    @property
    def heads(self) -> str:
        return self.meta["heads"]


def model_from_checkpoint(ck: dict) -> MaskClsNet:
    """The model a checkpoint dict records (its architecture, heads, preprocessing and weights), in eval mode."""
    meta = ck["meta"]
    pp, task = meta["preprocessing"], Task.from_meta(meta)
    model, _ = build_model(meta["model_name"], num_outputs=task.outputs(meta["heads"]), pretrained="none",
                           mean=pp["mean"], std=pp["std"], image_size=pp["image_size"])
    model.load_state_dict(ck["model"])
    return model.eval()


def load_fold(path: Path, fold: int) -> LoadedFold:
    """The model of one checkpoint file (a fold's best.pt), with its meta and config."""
    ck = load_checkpoint(path)
    return LoadedFold(fold, model_from_checkpoint(ck), ck["meta"], config_from_dict(ck["config"],
                                                                                     missing=KEYS_OLD_DEFAULTS))


def select_folds(run: str | Path, spec: str = "all") -> dict[int, Path]:
    """'all' → every fold with a best.pt; 'best' → the fold with the highest validation F1 in summary.json (which
    must be there and readable); '0,2' → those.

    Raises:
        FileNotFoundError: no such directory. CheckpointError: no checkpoint, no summary for 'best', a fold asked for
            that has no best.pt.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} not found")
    found = fold_numbers(run, "best.pt")
    if not found:
        raise CheckpointError(f"{run} has no checkpoints (no fold*/best.pt); train first, or wait until the first "
                              "epoch of a running training has finished")
    if spec == "all":
        return found
    if spec == "best":
        return _best_fold(run, found)
    wanted = parse_fold_list(spec, words=("all", "best"))
    missing = [f for f in wanted if f not in found]
    if missing:
        raise CheckpointError(f"--folds {spec!r}: no best.pt for fold(s) {missing} in {run}; "
                              f"available: {sorted(found)}")
    return {f: found[f] for f in wanted}


def _best_fold(run: Path, found: dict[int, Path]) -> dict[int, Path]:
    summary = read_summary(run, required=False)
    if summary is None:
        raise CheckpointError(f"--folds best: {run / 'summary.json'} is not there (the training was interrupted or "
                              "is still running), so no fold is known to be best; name the folds (--folds "
                              f"{','.join(map(str, sorted(found)))}) or use --folds all")
    scores = {int(f): r["best_f1"] for f, r in summary["folds"].items()
              if int(f) in found and isinstance(r.get("best_f1"), (int, float)) and r["best_f1"] >= 0}
    if not scores:
        raise CheckpointError(f"--folds best: {run / 'summary.json'} records no validation F1 for the folds with a "
                              f"checkpoint ({sorted(found)}); name the folds with --folds or use --folds all")
    best = max(scores, key=scores.get)
    return {best: found[best]}


def check_against_run(run: Path, folds: list[LoadedFold]) -> None:
    """Each fold's checkpoint must be the run's: the model, heads and preprocessing config.yaml and run.json record,
    and one label space for all (a best.pt copied in from another run is named, not used)."""
    cfg, info = read_run_config(run), read_run_info(run)
    ours = {"model": cfg.model.name, "heads": cfg.model.heads,
            "preprocessing": info.get("preprocessing") or (folds[0].meta["preprocessing"] if folds else None)}
    ref = folds[0]
    for f in folds:
        theirs = {"model": f.meta["model_name"], "heads": f.meta["heads"], "preprocessing": f.meta["preprocessing"]}
        differ = [k for k in ours if ours[k] != theirs[k]]
        if not differ and f is not ref:
            differ = [k for k in ("num_classes", "class_names") if f.meta[k] != ref.meta[k]]
        if differ:
            raise CheckpointError(f"{run / f'fold{f.fold}' / 'best.pt'} is not this run's model: its "
                                  f"{' and '.join(differ)} differ from the run's ({run / 'config.yaml'}, "
                                  f"{run / 'run.json'}); it was copied in from another run: restore the fold's own "
                                  "checkpoint, or train the fold again")


def load_folds(run: str | Path, spec: str = "all") -> list[LoadedFold]:
    """The folds of ``run`` chosen by ``spec`` ('all', 'best', '0,2'), each checked to be the run's own."""
    run = Path(run)
    folds = [load_fold(p, f) for f, p in select_folds(run, spec).items()]
    check_against_run(run, folds)
    return folds
