"""Validation's flip TTA (train.valid_tta) and predict's --tta auto, which follows it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator

from helpers import tiny, train
from maskcls.config import Config
from maskcls.config_io import config_from_dict
from maskcls.data.loader import build_loader
from maskcls.engine.fold_data import fold_rows, make_dataset
from maskcls.engine.trainer.loop import Scoring, predict_probs
from maskcls.errors import ConfigError
from maskcls.infer.loading import ensemble_probs, resolve_tta
from maskcls.models.heads import probabilities
from maskcls.prep.prepared import load_prepared
from maskcls.rundir.files import KEYS_OLD_DEFAULTS
from maskcls.rundir.models import LoadedFold, load_folds
from maskcls.task import Task


class _Lopsided(torch.nn.Module):
    """Logits that depend on where the light is (left or right half), so a mirror image gives others."""

    def __init__(self, k: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(k, 2, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        w = x.shape[-1] // 2
        halves = torch.stack([x[..., :w].mean((1, 2, 3)), x[..., w:].mean((1, 2, 3))], 1)
        return halves @ self.w.T


def test_hflip_is_the_mean_of_the_photo_and_its_mirror():
    task = Task.competition(names=("gender", "age"))
    model = _Lopsided(5)  # 2 gender + 3 age logits side by side
    x = torch.rand(6, 3, 8, 8)
    x[:3, ..., :4] += 2.0  # light on the left of half of the photos
    loader = [(x, torch.zeros(6, dtype=torch.long), torch.arange(6))]
    acc = Accelerator(cpu=True)  # the precision is Scoring's (fp32 here), whatever Accelerate's state holds
    _, one, _ = predict_probs(Scoring(model, acc, task, "multi", channels_last=False), loader)
    _, both, _ = predict_probs(Scoring(model, acc, task, "multi", channels_last=False, tta="hflip"), loader)
    mirror = probabilities(model(torch.flip(x, dims=[3])), task, "multi").detach().numpy()
    assert not np.allclose(one, mirror, atol=1e-4)  # the mirror image really is scored differently
    assert np.allclose(both, (one + mirror) / 2, atol=1e-6)


def _fold(valid_tta: str) -> LoadedFold:
    cfg = Config()
    cfg.train.valid_tta = valid_tta
    return LoadedFold(0, None, {}, cfg)


def test_auto_follows_the_run_and_old_runs_get_one_view():
    assert resolve_tta("auto", [_fold("hflip")]) == "hflip"
    assert resolve_tta("auto", [_fold("none")]) == "none"
    assert resolve_tta("none", [_fold("hflip")]) == "none" and resolve_tta("hflip", [_fold("none")]) == "hflip"
    with pytest.raises(ConfigError, match="tta='flip' is not a valid choice; choose one of auto, none, hflip"):
        resolve_tta("flip", [_fold("none")])
    old = Config().to_dict()
    del old["train"]["valid_tta"]  # a checkpoint written before the key existed validated one view
    assert config_from_dict(old, missing=KEYS_OLD_DEFAULTS).train.valid_tta == "none"
    assert config_from_dict(old).train.valid_tta == "hflip"  # today's default, where no old value is asked for


@pytest.mark.slow
@pytest.mark.parametrize("valid_tta", ["hflip", "none"])
def test_oof_probabilities_are_predicts_with_the_same_views(prepared_dir, tmp_path, valid_tta):
    cfg = tiny(train={"epochs": 1, "mixed_precision": "no", "valid_tta": valid_tta})
    s = train(prepared_dir, tmp_path / "r", cfg)
    run = Path(s["run_dir"])
    prep = load_prepared(prepared_dir)
    _, va = fold_rows(prep, 0)
    loaded = load_folds(run, "0")
    ds = make_dataset(prep, va, loaded[0].cfg.data, loaded[0].preprocessing, training=False, seed=0)
    loader = build_loader(ds, batch_size=16, sampler=range(len(ds)), workers=0)
    oof = pd.read_csv(run / "fold0" / "oof.csv")
    got = oof[[f"prob_{i}" for i in range(18)]].to_numpy()
    auto = ensemble_probs(loaded, loader, tta=resolve_tta("auto", loaded), progress=False)
    other = ensemble_probs(loaded, loader, tta="none" if valid_tta == "hflip" else "hflip", progress=False)
    assert np.allclose(got, auto, atol=2e-5)  # oof.csv is what predict --tta auto gives
    assert not np.allclose(got, other, atol=2e-5)
