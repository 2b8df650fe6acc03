"""Checkpoints as plain dicts (tensors, numbers, strings), written atomically.

``torch.load(weights_only=True)`` reads them: no pickled objects. ``last.pt`` is rotated
to ``last.prev.pt`` before the new one is renamed into place, so a kill at any moment
leaves a loadable checkpoint behind.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import CheckpointError
from ..fsutil import atomic_path
from ..models.factory import unwrap_model

log = logging.getLogger(__name__)


def save_checkpoint(state: dict, path: str | Path, *, keep_previous: bool = False,
                    before_replace: Callable[[], None] | None = None) -> None:
    """Write ``state`` atomically; ``keep_previous`` rotates the current file to ``*.prev.pt`` first;
    ``before_replace`` runs once the new content is on disk, just before it is renamed into place."""
    path = Path(path)

    def rotate() -> None:
        if before_replace is not None:
            before_replace()
        if keep_previous and path.exists():
            os.replace(path, path.with_suffix(".prev.pt"))
    with atomic_path(path, before_replace=rotate) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, *, fallback: bool = True) -> dict:
    """Load a checkpoint; a corrupt one falls back to ``*.prev.pt`` when kept, else a clear error."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        prev = path.with_suffix(".prev.pt")
        if fallback and prev.exists():
            log.warning("%s missing; using the previous checkpoint %s", path, prev)
            return load_checkpoint(prev, fallback=False)
        raise FileNotFoundError(f"checkpoint {path} not found; train first (or check the run directory)") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, disk error
        prev = path.with_suffix(".prev.pt")
        if fallback and prev.exists():
            log.warning("%s is unreadable (%s); falling back to %s", path, e, prev)
            return load_checkpoint(prev, fallback=False)
        foreign = _pickled_objects(path)
        if foreign:  # weights_only refused them: not corruption, a foreign or tampered file
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects ({', '.join(foreign[:3])}), which "
                                  "maskcls never loads (torch.load weights_only=True: loading them could run code); "
                                  "maskcls checkpoints hold only tensors and plain values — use one written by "
                                  "`maskcls train`") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); delete it to "
                              "restart this fold from scratch, or restore it from a backup") from None


def _pickled_objects(path: Path) -> list[str]:
    """The classes/functions a readable checkpoint's pickle names beyond weights_only's safe set (torch scans
    the pickle's opcodes, executing nothing); [] when there are none or the file cannot be read as a checkpoint."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a readable zip checkpoint: corrupt
        return []


def rng_state() -> dict:
    """RNG states as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "python": {"version": py_state[0], "state": list(py_state[1]),
                       "gauss": py_state[2]},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class FoldCheckpoints:
    """A fold's ``last.pt`` (everything to resume) and ``best.pt`` (the weights predict uses): the one place
    their dicts are built and read (after timm's CheckpointSaver).

    Both are plain dicts: ``model`` (state dict), ``epoch``, ``metric`` (best validation macro F1 so far /
    this epoch's), ``config`` (the resolved config as a dict) and ``meta`` (what prediction needs to rebuild
    and feed the model); last.pt adds ``optimizer``, ``scheduler``, ``scaler``, ``state`` (the fold's
    progress), ``rng``, and the state of every extension that keeps one under its key (EMA: ``ema``, the averaged
    weights; weight averaging: ``average``).
    """

    def __init__(self, fold_dir: Path, *, config: dict, meta: dict | None = None):
        self.dir, self.config, self.meta = Path(fold_dir), config, meta or {}

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def can_resume(self) -> bool:
        return self.last.exists() or self.last.with_suffix(".prev.pt").exists()

    def save_last(self, t: Trainable, state: dict, *, rotate: bool = True) -> None:
        """last.pt from the trainable parts ``t`` and the fold's progress ``state`` (a FoldState dict);
        ``rotate`` keeps the previous one as last.prev.pt."""
        ck = {"model": weights_of(t.model), "optimizer": t.optimizer.state_dict(),
              "scheduler": t.scheduler.state_dict(), "scaler": t.scaler.state_dict() if t.scaler is not None else {},
              "state": state, "rng": rng_state(), "epoch": state["epoch"], "metric": state["best_f1"],
              "config": self.config, "meta": self.meta}
        for key, extension in t.extras.items():
            ck[key] = extension.state_dict()
        save_checkpoint(ck, self.last, keep_previous=rotate)

    def save_best(self, model, *, epoch: int, metric: float, with_it: Callable[[], None] | None = None) -> None:
        """best.pt: the validated weights of 1-based ``epoch`` and their validation macro F1.

        ``with_it`` writes what belongs to the same epoch (oof.csv): it runs once best.pt's content is on
        disk, just before best.pt is renamed into place, so only one rename separates the two. last.pt,
        written after both, is the commit point: a fold resumed after a crash in between retrains that
        epoch and writes both again.
        """
        save_checkpoint({"model": weights_of(model), "epoch": epoch, "metric": metric, "config": self.config,
                         "meta": self.meta}, self.best, before_replace=with_it)

    def restore_last(self, t: Trainable) -> dict:
        """Load last.pt (or last.prev.pt) into ``t``, restore the RNG states; returns the fold's ``state`` dict."""
        ck = load_checkpoint(self.last)
        unwrap_model(t.model).load_state_dict(ck["model"])
        t.optimizer.load_state_dict(ck["optimizer"])
        t.scheduler.load_state_dict(ck["scheduler"])
        if t.scaler is not None and ck.get("scaler"):
            t.scaler.load_state_dict(ck["scaler"])
        for key, extension in t.extras.items():
            if ck.get(key) is not None:
                extension.load_state_dict(ck[key])
        set_rng_state(ck["rng"])
        return ck["state"]


@dataclass
class Trainable:
    """The objects whose state last.pt holds (``scaler``: fp16 loss scaling, else None; ``extras``: the extensions
    with a state of their own, by the key last.pt keeps it under, each with ``state_dict`` / ``load_state_dict``)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object | None = None
    extras: dict = field(default_factory=dict)


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, without DDP / torch.compile wrappers in its keys."""
    return {k: v.detach().cpu() for k, v in unwrap_model(model).state_dict().items()}
