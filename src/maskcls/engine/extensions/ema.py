"""The exponential moving average of the weights (``train.ema``): what is validated and kept in best.pt when on."""
from __future__ import annotations

from ...config import TrainConfig
from ...models.factory import unwrap_model
from ...rundir.checkpoint import weights_of
from ..trainer.callbacks import Callback, Trainer


def make_ema(model, train: TrainConfig):
    """timm's ModelEmaV3 of ``model`` with a warmed-up decay: 1 − (1 + step)^−3/4, capped at ``train.ema_decay``."""
    from timm.utils import ModelEmaV3
    return ModelEmaV3(model, decay=train.ema_decay, use_warmup=True, warmup_power=0.75)


class Ema(Callback):
    """Keeps the EMA of the trained weights (made once the model is on its device), updates it after every optimizer
    step, and has it validated instead of the trained weights; last.pt keeps its weights under ``ema``."""

    state_key = "ema"

    def __init__(self, train: TrainConfig):
        self.train, self.ema = train, None

    def on_fold_start(self, trainer: Trainer) -> None:
        self.ema = make_ema(unwrap_model(trainer.setup.model), self.train)
        trainer.setup.eval_model = self.ema.module

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        self.ema.update(unwrap_model(trainer.setup.model), step=step)

    def state_dict(self) -> dict:
        return weights_of(self.ema.module)

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state)
