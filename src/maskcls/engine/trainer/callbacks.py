"""The hook points of a fold's training, for features that plug in from outside the trainer.

Keras and Lightning callbacks, cut down to what maskcls' features use. A callback overrides what it needs; the
fold trainer calls every callback of its list at each point, in order, and imports none of them (``run.py``
composes the list from the config)::

    on_fold_start(trainer)           the fold is built (and, when resuming, restored); nothing trained yet
    on_epoch_start(trainer, epoch)   before the epoch's first batch (0-based epoch)
    on_step_end(trainer, step)       after every optimizer step (``step``: optimizer steps of the fold so far)
    on_epoch_end(trainer, epoch, row)  validated, before last.pt is written (``row``: the metrics.csv row)
    on_fold_end(trainer)             after the last epoch, before the final last.pt

A callback may end the current epoch early (``trainer.stop_epoch = True``: the epoch stops after this step and is
validated as usual) or the fold (``trainer.stop_fold = True`` at epoch end). Whatever it must remember across a
resume goes into ``trainer.state.extras`` (a plain dict saved in last.pt).
"""
from __future__ import annotations

from typing import Any, Sequence

# What a hook receives: the fold's trainer (engine.fold.FoldTrainer). Typed loosely on purpose: the trainer imports
# this module, and nothing here imports the trainer back, not even for annotations (tests keep src/ free of circles).
Trainer = Any


class Callback:
    """Base class: every hook does nothing."""

    def on_fold_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        pass

    def on_fold_end(self, trainer: Trainer) -> None:
        pass


class Callbacks(Callback):
    """A list of callbacks called in order."""

    def __init__(self, items: Sequence[Callback] = ()):
        self.items = list(items)

    def on_fold_start(self, trainer: Trainer) -> None:
        for c in self.items:
            c.on_fold_start(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for c in self.items:
            c.on_epoch_start(trainer, epoch)

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        for c in self.items:
            c.on_step_end(trainer, step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        for c in self.items:
            c.on_epoch_end(trainer, epoch, row)

    def on_fold_end(self, trainer: Trainer) -> None:
        for c in self.items:
            c.on_fold_end(trainer)
