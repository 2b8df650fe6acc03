"""Checkpoints as plain dicts (tensors, numbers, strings), written atomically.

``torch.load(weights_only=True)`` reads them: no pickled objects. ``last.pt`` is rotated
to ``last.prev.pt`` before the new one is renamed into place, so a kill at any moment
leaves a loadable checkpoint behind.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..fsutil import atomic_path

log = logging.getLogger(__name__)


def save_checkpoint(state: dict, path: str | Path, *, keep_previous: bool = False) -> None:
    """Write ``state`` atomically; ``keep_previous`` rotates the current file to ``*.prev.pt`` first."""
    path = Path(path)

    def rotate() -> None:
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
        if "GLOBAL" in str(e):  # weights_only refused a pickled object: not corruption, a foreign/tampered file
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which maskcls never loads "
                                  "(torch.load weights_only=True: loading them could run code); maskcls "
                                  "checkpoints hold only tensors and plain values — use one written by "
                                  "`maskcls train`") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}); delete it to "
                              "restart this fold from scratch, or restore it from a backup") from None


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
