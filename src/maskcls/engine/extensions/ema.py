"""The exponential moving average of the weights (``train.ema``): what is validated and kept in best.pt when on."""
from __future__ import annotations

from ..config import TrainConfig


def make_ema(model, train: TrainConfig):
    """timm's ModelEmaV3 of ``model`` with a warmed-up decay: 1 − (1 + step)^−3/4, capped at ``train.ema_decay``."""
    from timm.utils import ModelEmaV3
    return ModelEmaV3(model, decay=train.ema_decay, use_warmup=True, warmup_power=0.75)
