"""Heads: a closed set of choices."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import config
from maskcls.errors import ConfigError
from maskcls.task import Task

COMP = Task.competition()


# --------------------------------------------------------------------------- closed sets
def test_heads_outside_the_closed_set_are_refused_not_multi():
    from maskcls.engine.trainer.losses import build_loss
    from maskcls.models.heads import probabilities
    with pytest.raises(ConfigError, match=r"heads='mutli'.*did you mean 'multi'"):
        probabilities(torch.zeros(2, 8), COMP, "mutli")
    with pytest.raises(ConfigError, match="heads='Single'"):
        build_loss(config().loss, task=COMP, heads="Single", class_counts=np.ones(18))
    assert probabilities(torch.zeros(2, 8), COMP, "multi").shape == (2, 18)
