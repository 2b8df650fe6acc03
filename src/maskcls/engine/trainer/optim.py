"""Optimizers and per-step learning-rate schedules (stepped once per optimizer step)."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from ...config import SchedConfig
from ...errors import ConfigError


def param_groups(model: torch.nn.Module, *, lr: float, head_lr_mult: float = 1.0) -> list[dict]:
    """Backbone at ``lr``, the new classifier at ``lr × head_lr_mult``.

    The classifier starts from random weights while the backbone is pretrained: a larger
    step for the head shortens the early phase where the random head scrambles gradients.
    """
    from ...models.factory import unwrap_model
    net = unwrap_model(model)
    backbone = getattr(net, "backbone", net)
    head = list(backbone.get_classifier().parameters()) if hasattr(backbone, "get_classifier") else []
    head_ids = {id(p) for p in head}
    body = [p for p in net.parameters() if id(p) not in head_ids]
    groups = [{"params": body, "lr": lr}]
    if head:
        groups.append({"params": head, "lr": lr * head_lr_mult})
    return groups


def build_optimizer(params, *, name: str = "adamw", lr: float = 3e-4, weight_decay: float = 0.0,
                    momentum: float = 0.9, nesterov: bool = True, fused: bool = False) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD (momentum, Nesterov) with weight decay; ``params`` may be param groups.

    ``fused``: torch's fused kernel (one call per parameter group instead of a loop over tensors; CPU and
    CUDA). Its arithmetic is not bit-equal to the loop's, so a fused run does not reproduce a loop run.
    """
    kw = {"fused": True} if fused else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay, **kw)
    raise ConfigError(f"optim.name={name!r}; choose one of adamw, adam, sgd")


class WarmupCosine:
    """The lr factor of step ``s``: a linear warm-up, then a cosine from 1 to ``floor`` at step ``total``.

    A callable object, not a closure, so that LambdaLR's state dict carries its attributes: a run whose length
    was changed while it trained (``train.time``, :meth:`set_total`) resumes with the same schedule.
    """

    def __init__(self, total: int, warmup: int, floor: float):
        self.total, self.floor = max(1, int(total)), float(floor)
        self.warmup_asked = self.warmup = int(warmup)

    def set_total(self, total: int) -> None:
        """A new length, found while training (``train.time``): the warm-up asked for, but never more than a fifth
        of the new length, so that a short budget still spends most of its steps past the warm-up."""
        self.total = max(1, int(total))
        self.warmup = min(self.warmup_asked, self.total // 5)

    def __call__(self, s: int) -> float:
        if s < self.warmup:
            return (s + 1) / self.warmup
        t = (s - self.warmup) / max(1, self.total - self.warmup)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def set_schedule_length(scheduler, total: int) -> bool:
    """Stretch ``scheduler`` to ``total`` optimizer steps, keeping its step count; False when its length is fixed
    (cosine_restarts has periods, not a length; none is flat)."""
    lambdas = getattr(scheduler, "lr_lambdas", [])
    stretchable = [f for f in lambdas if isinstance(f, WarmupCosine)]
    for f in stretchable:
        f.set_total(total)
    if stretchable:  # the current lr follows the new curve at once, not at the next step
        for group, base, f in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, lambdas):
            group["lr"] = base * f(scheduler.last_epoch)
    return bool(stretchable)


def build_scheduler(optimizer, sched: SchedConfig, *, steps_per_epoch: int, epochs: int, base_lr: float):
    """A scheduler whose ``step()`` is called after every optimizer step.

    Args:
        sched: the schedule: name (cosine_warmup | cosine_restarts | onecycle | none), warmup_epochs, T_0,
            T_mult, max_lr, min_lr (see the config reference).
        steps_per_epoch: optimizer steps per epoch (batches / accumulation, rounded up).
        epochs: epochs of the fold.
        base_lr: the optimizer's lr (cosine schedules decay from it to min_lr).
    """
    name, warmup_epochs, T_0, T_mult = sched.name, sched.warmup_epochs, sched.T_0, sched.T_mult
    max_lr, min_lr = sched.max_lr, sched.min_lr
    total = max(1, steps_per_epoch * epochs)
    floor = min_lr / base_lr if base_lr > 0 else 0.0
    if name == "none":
        return LambdaLR(optimizer, lambda s: 1.0)
    if name == "onecycle":
        mult = [g["lr"] / base_lr if base_lr > 0 else 1.0 for g in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=[max_lr * m for m in mult], total_steps=total)
    if name == "cosine_warmup":
        return LambdaLR(optimizer, WarmupCosine(total, int(round(warmup_epochs * steps_per_epoch)), floor))
    if name == "cosine_restarts":
        period0 = max(1, T_0 * steps_per_epoch)

        def g(s: int) -> float:
            period, start = period0, 0
            while s >= start + period:
                start, period = start + period, period * T_mult
            t = (s - start) / period
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return LambdaLR(optimizer, g)
    raise ConfigError(f"sched.name={name!r}; choose one of cosine_warmup, cosine_restarts, onecycle, none")
