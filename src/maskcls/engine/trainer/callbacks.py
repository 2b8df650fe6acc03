"""The hook points of a fold's training, for the features that plug in from outside the trainer.

Keras and Lightning callbacks, cut down to what maskcls' extensions use. A callback overrides what it needs; the
fold trainer calls every callback of its list at each point, in order, and imports none of them (``engine.run``
composes the list from the config)::

    on_fold_build(trainer)           data, model and loss built; optimizer, schedule and device placement not yet:
                                     a callback may add training rows (trainer.data), load starting weights
                                     (trainer.model), wrap the loss (trainer.criterion) or supply per-row targets
                                     (trainer.soft_targets)                      -- distillation, soft ages
    on_fold_start(trainer)           everything built, before last.pt is restored when resuming  -- EMA, averaging
    on_epoch_start(trainer, epoch)   before the epoch's first batch (0-based epoch)             -- time budget
    on_step_end(trainer, step)       after every optimizer step (optimizer steps of the fold so far)
                                                                                                 -- EMA, time budget
    on_epoch_end(trainer, epoch, row)  validated, before last.pt is written (row: the metrics.csv row)
                                                                                      -- averaging, time budget
    on_saved(trainer, final)         last.pt written: after an epoch, or (final) once the fold has ended
                                                                                          -- trackers, averaging
    on_fold_end(trainer)             the epochs are over, before the final last.pt           -- averaging

A callback may end the current epoch after this step (``trainer.stop_epoch = True``; the partial epoch is validated
as usual) or the fold after this epoch (``trainer.stop_fold = True``). Small state that must survive a resume goes
into ``trainer.state.extras`` (a plain dict in last.pt); a callback with large state (weights) names a
``state_key`` and gives ``state_dict()`` / ``load_state_dict()``: last.pt holds it under that key. Hooks run on
every process; a callback that writes files checks ``trainer.is_main``.
"""
from __future__ import annotations

from typing import Any, Sequence

# What a hook receives: the fold's trainer (engine.trainer.fold.FoldTrainer). Typed loosely on purpose: the trainer
# imports this module, and nothing here imports the trainer back, not even for annotations (a test keeps src/ free
# of import circles).
Trainer = Any


class Callback:
    """Base class: every hook does nothing; ``state_key`` None = nothing to keep in last.pt."""

    state_key: str | None = None

    def on_fold_build(self, trainer: Trainer) -> None:
        pass

    def on_fold_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        pass

    def on_saved(self, trainer: Trainer, final: bool) -> None:
        pass

    def on_fold_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass


class Callbacks:
    """A list of callbacks, called in order at each hook point."""

    def __init__(self, items: Sequence[Callback] = ()):
        self.items = list(items)

    def on_fold_build(self, trainer: Trainer) -> None:
        for c in self.items:
            c.on_fold_build(trainer)

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

    def on_saved(self, trainer: Trainer, final: bool) -> None:
        for c in self.items:
            c.on_saved(trainer, final)

    def on_fold_end(self, trainer: Trainer) -> None:
        for c in self.items:
            c.on_fold_end(trainer)

    def stateful(self) -> dict[str, Callback]:
        """The callbacks whose state last.pt keeps, by key."""
        return {c.state_key: c for c in self.items if c.state_key}
