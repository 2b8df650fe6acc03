"""Shared test helpers: a tiny model config built with dataclasses.replace, and a training call."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from maskcls.config import Config
from maskcls.engine.run import run_training
from maskcls.prep.prepared import load_prepared

# test_efficientnet from random init at 64 px: seconds per epoch on a CPU.
TINY = {"model": {"name": "test_efficientnet", "pretrained": "none"},
        "data": {"image_size": 64, "num_workers": 0},
        "train": {"batch_size": 8, "valid_batch_size": 16, "accum_steps": 2},
        "run": {"report": False, "tensorboard": False}}
# The same as command-line overrides, for tests of the CLI itself.
TINY_SETS = [f"{sec}.{k}={v}" for sec, kv in TINY.items() for k, v in kv.items()]


def config(base: Config | None = None, **sections: dict) -> Config:
    """``base`` (default: Config()) with the given section fields replaced, e.g. ``train={"epochs": 2}``."""
    cfg = base or Config()
    return replace(cfg, **{sec: replace(getattr(cfg, sec), **fields) for sec, fields in sections.items()})


def tiny(**sections: dict) -> Config:
    """The tiny config, then ``sections`` on top."""
    return config(config(**TINY), **sections)


def train(prepared: Path, run_dir: Path | None, cfg: Config, folds=(0,)) -> dict:
    """Train ``folds`` of ``prepared`` with ``cfg`` into ``run_dir``; returns the summary dict."""
    return run_training(cfg, load_prepared(prepared), folds=None if folds is None else list(folds),
                        run_dir=run_dir)
