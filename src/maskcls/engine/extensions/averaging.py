"""Weight averaging at the end of a fold (``train.average``): the mean of the last k epochs' weights, or of
the k epochs with the best validation macro F1 — timm's ``avg_checkpoints``, done while training.

What is averaged is the validated model (the EMA when ``train.ema`` is on). BatchNorm's running mean and
variance are averaged like every other floating-point tensor (as timm's avg_checkpoints does), not recomputed
on training batches: the averaged epochs come from one run late in its schedule, so their statistics describe
nearly the same network, recomputing them would cost another pass over the training images, and the averaged
model is validated before anything uses it, so statistics that did not fit would show in its F1. Integer
buffers (``num_batches_tracked``) keep the last epoch's value.

Memory: ``last`` keeps one running sum (float64, on the CPU) from epoch ``epochs - k + 1`` on — never k
copies; the sum travels in last.pt so a resumed fold averages the same epochs. ``top`` must keep the k best
epochs' weights until the end; they wait on disk in ``foldN/avg/`` (one file per epoch, deleted at the end),
the state (which epochs, their F1) in last.pt.

At the end the averaged model is validated and written as ``foldN/avg.pt`` (an ordinary best.pt-style
checkpoint); ``train.average_use`` decides whether it also becomes ``best.pt`` (and ``oof.csv``), which
predict, export and serve load; the best epoch's checkpoint is then kept as ``best_epoch.pt``.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Iterable

import torch

from ...config import TrainConfig
from ...errors import ConfigError
from ...models.factory import unwrap_model
from ...rundir.checkpoint import load_checkpoint, save_checkpoint, weights_of
from ...rundir.oof import write_oof
from ..trainer.callbacks import Callback, Trainer
from ..trainer.loop import evaluate

log = logging.getLogger(__name__)

AVG_DIR = "avg"  # foldN/avg/epochN.pt: the top-k epochs' weights while the fold trains


class RunningSum:
    """The element-wise sum of state dicts: floating-point tensors in float64 on the CPU, other tensors (integer
    buffers) the last one added."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, weights: dict[str, torch.Tensor]) -> None:
        if self.sums and set(weights) != set(self.sums):
            raise ValueError("state dicts to average must have the same keys")
        for name, t in weights.items():
            t = t.detach().cpu()
            if t.is_floating_point():
                t = t.to(torch.float64)
                self.sums[name] = self.sums[name] + t if name in self.sums else t.clone()
            else:
                self.sums[name] = t.clone()
        self.count += 1

    def mean(self, like: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The average, each tensor in the dtype of ``like``'s (default float32 for floating-point ones)."""
        if not self.count:
            raise ValueError("nothing to average")
        out = {}
        for name, t in self.sums.items():
            if t.is_floating_point():
                dtype = like[name].dtype if like is not None else torch.float32
                t = (t / self.count).to(dtype)
            out[name] = t
        return out


def average_state_dicts(states: Iterable[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of ``states`` (read one at a time), in the first one's dtypes."""
    acc, first = RunningSum(), None
    for s in states:
        first = first or {k: v.dtype for k, v in s.items()}
        acc.add(s)
    return acc.mean({k: torch.empty(0, dtype=d) for k, d in (first or {}).items()})


class LastK:
    """The mean of the validated weights of epochs ``epochs - k + 1`` … ``epochs`` (1-based)."""

    kind = "last"

    def __init__(self, k: int, epochs: int):
        self.k, self.first = k, max(1, epochs - k + 1)
        self.acc, self.epochs = RunningSum(), []

    def after_epoch(self, model: torch.nn.Module, epoch: int, f1: float) -> None:
        if epoch >= self.first:
            self.acc.add(weights_of(model))
            self.epochs.append(epoch)

    def averaged(self) -> tuple[dict[str, torch.Tensor], list[int]]:
        return self.acc.mean(), list(self.epochs)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "epochs": list(self.epochs), "sums": dict(self.acc.sums)}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = list(state.get("epochs", []))
        self.acc.sums, self.acc.count = dict(state.get("sums", {})), len(self.epochs)

    def cleanup(self) -> None:
        """Nothing on disk."""


class TopK:
    """The mean of the validated weights of the ``k`` epochs with the best validation macro F1 (ties: the
    earlier epoch stays); each kept epoch's weights wait in ``fold_dir/avg/epoch<n>.pt``."""

    kind = "top"

    def __init__(self, k: int, fold_dir: Path):
        self.k, self.dir = k, Path(fold_dir) / AVG_DIR
        self.top: list[list] = []  # [epoch, f1], best first

    def _file(self, epoch: int) -> Path:
        return self.dir / f"epoch{epoch}.pt"

    def after_epoch(self, model: torch.nn.Module, epoch: int, f1: float) -> None:
        ranked = sorted(self.top + [[epoch, float(f1)]], key=lambda e: (-e[1], e[0]))
        keep = ranked[:self.k]
        if [epoch, float(f1)] in keep:
            self.dir.mkdir(exist_ok=True)
            save_checkpoint({"model": weights_of(model), "epoch": epoch, "metric": float(f1)}, self._file(epoch))
        self.top = keep
        wanted = {self._file(e).name for e, _ in keep}
        for p in self.dir.glob("epoch*.pt") if self.dir.is_dir() else []:
            if p.name not in wanted:  # fell out of the top k (or a retrained epoch's stale file)
                p.unlink()

    def averaged(self) -> tuple[dict[str, torch.Tensor], list[int]]:
        epochs = sorted(e for e, _ in self.top)
        return average_state_dicts(load_checkpoint(self._file(e), fallback=False)["model"] for e in epochs), epochs

    def state_dict(self) -> dict:
        return {"kind": self.kind, "top": [list(e) for e in self.top]}

    def load_state_dict(self, state: dict) -> None:
        self.top = [[int(e), float(f)] for e, f in state.get("top", [])]

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def make_averager(train: TrainConfig, fold_dir: Path) -> LastK | TopK | None:
    """The fold's averager for ``train.average`` (None when 'none')."""
    if train.average == "none":
        return None
    if train.average_k > train.epochs:
        raise ConfigError(f"train.average_k={train.average_k} is more than train.epochs={train.epochs}; average at "
                          "most the epochs that run")
    if train.average == "last":
        if train.patience:
            raise ConfigError("train.average=last averages the last train.average_k of train.epochs epochs, but "
                              "train.patience may stop the fold before them; use train.average=top with patience")
        return LastK(train.average_k, train.epochs)
    return TopK(train.average_k, fold_dir)


def _shared_weights(trainer: Trainer, averager: LastK | TopK) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The averaged weights on every process (rank 0 holds the sums; the others read them from avg.pt)."""
    acc, path = trainer.ctx.acc, trainer.dir / "avg.pt"
    weights, epochs = averager.averaged() if acc.is_main_process else (None, None)
    if acc.num_processes > 1:
        if acc.is_main_process:
            save_checkpoint({"model": weights, "epochs": epochs}, path)
        acc.wait_for_everyone()
        if not acc.is_main_process:
            ck = load_checkpoint(path, fallback=False)
            weights, epochs = ck["model"], ck["epochs"]
        acc.wait_for_everyone()
    return weights, epochs


def finish_average(trainer: Trainer, averager: LastK | TopK) -> dict:
    """Validate the fold's averaged weights, write avg.pt (and best.pt + oof.csv when ``train.average_use``
    says so); returns what the fold's summary entry records under ``average``. Runs on every process."""
    ctx, state, setup = trainer.ctx, trainer.state, trainer.setup
    t = ctx.cfg.train
    weights, epochs = _shared_weights(trainer, averager)
    model = copy.deepcopy(unwrap_model(setup.validated))
    model.load_state_dict(weights)
    vm, probs = evaluate(dataclasses.replace(setup, model=model, eval_model=None), trainer.data.valid_loader,
                         trainer.data.valid_rows["label"].to_numpy(), desc=f"fold {trainer.fold} averaged")
    use = t.average_use == "always" or (t.average_use == "better" and vm.f1 >= state.best_f1)
    result = {"kind": t.average, "k": t.average_k, "epochs": epochs, "f1": vm.f1, "acc": vm.acc,
              "used": bool(use), "best_epoch_f1": state.best_f1}
    if ctx.acc.is_main_process:
        ck = trainer.checkpoints
        record = {"model": weights, "epoch": max(epochs), "metric": vm.f1, "config": ck.config,
                  "meta": ck.meta, "average": {"kind": t.average, "epochs": epochs}}
        save_checkpoint(record, trainer.dir / "avg.pt")
        if use:
            kept = trainer.dir / "best_epoch.pt"
            if not kept.exists() and ck.best.exists():  # a rerun after a crash must not keep the average here
                save_checkpoint(load_checkpoint(ck.best, fallback=False), kept)
            rows = trainer.data.valid_rows
            save_checkpoint(record, ck.best, before_replace=lambda: write_oof(
                trainer.dir / "oof.csv", rows, ctx.prep.abs_paths(rows), probs))
    if use:
        state.best_f1, state.best_acc = vm.f1, vm.acc
    log.info("fold %d: %s %d epochs' weights averaged (epochs %s): valid f1 %.4f acc %.3f against the best "
             "epoch's %.4f; %s", trainer.fold, t.average, len(epochs), ",".join(map(str, epochs)), vm.f1, vm.acc,
             result["best_epoch_f1"], "it is the fold's model now (best.pt)" if use else "written to avg.pt only")
    return result


class Averaging(Callback):
    """``train.average``: the validated weights of the chosen epochs kept (LastK / TopK) after every epoch, their
    average validated and written when the fold ends (:func:`finish_average`); last.pt keeps the averager's state
    under ``average``, and the top-k epochs' files go once the fold's final last.pt records the result."""

    state_key = "average"

    def __init__(self, train: TrainConfig):
        self.train, self.averager = train, None

    def on_fold_start(self, trainer: Trainer) -> None:
        self.averager = make_averager(self.train, trainer.dir)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        if trainer.is_main:  # before last.pt, which records what it holds
            self.averager.after_epoch(trainer.setup.validated, epoch + 1, row["valid_f1"])

    def on_fold_end(self, trainer: Trainer) -> None:
        if trainer.state.status in ("done", "stopped") and not trainer.state.average:
            trainer.state.average = finish_average(trainer, self.averager)

    def on_saved(self, trainer: Trainer, final: bool) -> None:
        if final and trainer.is_main and trainer.state.average:
            self.averager.cleanup()

    def state_dict(self) -> dict:
        return self.averager.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averager.load_state_dict(state)

