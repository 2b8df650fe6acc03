"""``train.time``: a wall-clock budget, as Ultralytics' ``time=``: the fold trains for as long as its share of the
budget allows, whatever ``train.epochs`` says, and ends like any other fold (validated, best.pt, oof.csv).

How it fits the budget: the first optimizer steps are timed (``probe_steps``), the validation pass is estimated
from them, and the number of optimizer steps that fit is planned (:func:`plan_total_steps`); the learning-rate
schedule (its cosine, and a warm-up that never takes more than a fifth of the run) and everything else that
follows the run's length (``trainer.set_total_steps``) is stretched to that length. After every epoch the plan
is made again from the measured step and validation times, so a wrong first estimate is corrected as it goes.
The last epoch may be partial: it stops at the planned step and is validated. Should the clock run out before
the plan says (the machine slowed down), the epoch stops at the next step that leaves time for its validation.

Time is read from an injectable ``clock`` (tests drive it by hand, without sleeping). The time spent is kept in
last.pt, so a resumed fold continues with what is left of its budget. With several processes every rank plans
from rank 0's clock (the plan is broadcast), so all stop at the same step.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

from ..trainer.callbacks import Callback, Trainer

log = logging.getLogger(__name__)

# a forward pass of validation costs about a third of a training step per image (no backward, no optimizer):
# the first estimate of a validation pass, before one has been timed
FORWARD_SHARE = 1 / 3


def plan_total_steps(remaining: float, *, step_s: float, valid_s: float, done: int, steps_per_epoch: int) -> int:
    """The most optimizer steps (counted from the fold's start, at least ``done``) whose training and validations
    fit in ``remaining`` seconds from now.

    Args:
        remaining: seconds left of the budget.
        step_s: seconds per optimizer step (training only).
        valid_s: seconds per validation pass (one per epoch, and one after a partial last epoch).
        done: optimizer steps already trained.
        steps_per_epoch: optimizer steps of a whole epoch.
    """
    spe = max(1, steps_per_epoch)

    def cost(total: int) -> float:
        validations = math.ceil(total / spe) - done // spe  # the current epoch's, when it has begun, included
        return (total - done) * step_s + validations * valid_s

    lo, hi = done, done + int(max(0.0, remaining) / max(step_s, 1e-9)) + 1
    while lo < hi:  # the largest total with cost(total) <= remaining (cost grows with total)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= remaining else (lo, mid - 1)
    return lo


def default_clock() -> float:
    """The clock a :class:`TimeBudget` made without one reads (tests replace this function)."""
    return time.monotonic()


class TimeBudget(Callback):
    """Fits a fold's training into ``seconds`` of wall-clock time (see the module's docstring).

    Args:
        seconds: the fold's budget.
        clock: seconds from any fixed origin (default :func:`default_clock`, read at each call).
        probe_steps: optimizer steps timed before the first plan.
    """

    def __init__(self, seconds: float, *, clock: Callable[[], float] | None = None, probe_steps: int = 10):
        self.seconds, self.probe_steps = float(seconds), max(1, probe_steps)
        self.clock = clock or (lambda: default_clock())
        self.step_s: float | None = None
        self.valid_s: float | None = None
        self.started: float | None = None  # the clock when this session's first epoch began

    # ------------------------------------------------------------------ time
    def _spent(self) -> float:
        return self.spent_before + (self.clock() - self.started)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.started is None:  # the first epoch of this session: what a resumed fold had spent
            extras = trainer.state.extras.setdefault("time_budget", {})
            self.spent_before = float(extras.get("spent", 0.0))
            self.step_s, self.valid_s = extras.get("step_s"), extras.get("valid_s")
            self.started = self.clock()
            if extras.get("planned_steps"):  # resumed: keep the plan (and schedule) the fold was following
                trainer.set_total_steps(int(extras["planned_steps"]))
        self.epoch_start, self.epoch_steps, self.last_step = self.clock(), 0, None

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        now = self.clock()
        self.last_step, self.epoch_steps = now, self.epoch_steps + 1
        if self.step_s is None and self.epoch_steps >= self.probe_steps:
            self.step_s = (now - self.epoch_start) / self.epoch_steps
            self.valid_s = self.step_s * FORWARD_SHARE * trainer.valid_views_per_step()
            self._plan(trainer, step)
        planned = trainer.state.extras["time_budget"].get("planned_steps")
        if planned and step >= planned:
            trainer.stop_epoch = True
        elif trainer.single_process and self.valid_s is not None and \
                self._spent() + (self.step_s or 0.0) + self.valid_s > self.seconds:
            trainer.stop_epoch = True  # behind the plan: stop while the validation still fits
            log.info("fold %d: the time budget is nearly spent; this epoch stops after step %d", trainer.fold, step)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict) -> None:
        now, step = self.clock(), trainer.optimizer_steps
        if self.epoch_steps and self.last_step is not None:
            self.step_s = (self.last_step - self.epoch_start) / self.epoch_steps
            self.valid_s = now - self.last_step
        extras = trainer.state.extras["time_budget"]
        extras.update(spent=self._spent(), step_s=self.step_s, valid_s=self.valid_s)
        if self.step_s is None:  # an epoch shorter than the probe: plan from what it measured
            return
        self._plan(trainer, step)
        if extras["planned_steps"] <= step:
            trainer.stop_fold = True

    # ------------------------------------------------------------------ the plan
    def _plan(self, trainer: Trainer, step: int) -> None:
        spe = trainer.steps_per_epoch
        total = plan_total_steps(self.seconds - self._spent(), step_s=self.step_s, valid_s=self.valid_s,
                                 done=step, steps_per_epoch=spe)
        total = trainer.agree(max(total, step))  # rank 0's plan for every rank
        extras = trainer.state.extras["time_budget"]
        before = extras.get("planned_steps")
        extras["planned_steps"] = total
        if total != before:
            trainer.set_total_steps(total)
        if before is None or abs(total - before) > 0.05 * before:
            log.info("fold %d: time budget %.1f min: %d optimizer steps = %.1f epochs (%.3f s/step, about %.1f s per "
                     "validation%s); the schedule, warm-up and EMA follow that length", trainer.fold,
                     self.seconds / 60, total, total / spe, self.step_s, self.valid_s,
                     "" if before is None else f"; was {before} steps")
