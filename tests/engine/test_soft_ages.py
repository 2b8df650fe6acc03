"""Soft age-group targets (loss.age_sigma): the age target spread by N(age + 0.5, sigma^2), training only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import tiny, train
from maskcls.engine.extensions.soft_ages import age_soft_targets, check_age_sigma, group_shares
from maskcls.engine.fold_data import fold_rows
from maskcls.engine.trainer import losses
from maskcls.errors import ConfigError
from maskcls.prep.prepared import load_prepared
from maskcls.task import Task, age_group


def test_shares_sum_to_one_and_are_hard_far_from_a_threshold():
    years = np.arange(18, 81)
    for sigma in (0.5, 2.0, 4.0):
        s = group_shares(years, sigma, (30, 60))
        assert s.shape == (len(years), 3) and np.allclose(s.sum(1), 1.0) and (s >= 0).all()
        far = (np.abs(years + 0.5 - 30) > 6 * sigma) & (np.abs(years + 0.5 - 60) > 6 * sigma)
        assert np.allclose(s[far], np.eye(3)[age_group(years[far])], atol=1e-6)
        assert (s.argmax(1) == age_group(years)).all()  # the labelled group keeps the largest share
    assert (group_shares(years, 0.0, (30, 60)).argmax(1) == age_group(years)).all()
    assert np.allclose(group_shares(years, 0.0, (30, 60)).max(1), 1.0)


def test_shares_follow_the_normal_distribution_at_the_threshold():
    s = group_shares(np.array([29, 30, 58]), 2.0, (30, 60))
    phi = 0.5 * (1 + torch.erf(torch.tensor(0.25) / 2 ** 0.5)).item()  # Phi((30 - 29.5) / 2)
    assert s[0] == pytest.approx([phi, 1 - phi, 0.0], abs=1e-6)
    assert s[1] == pytest.approx([1 - phi, phi, 0.0], abs=1e-6)  # 29 and 30 mirror each other
    assert s[2, 2] == pytest.approx(1 - 0.5 * (1 + torch.erf(torch.tensor(0.75) / 2 ** 0.5)).item(), abs=1e-6)
    wider = group_shares(np.array([27]), 4.0, (30, 60))
    assert wider[0, 1] > group_shares(np.array([27]), 2.0, (30, 60))[0, 1] > 0  # a larger sigma spreads further


def test_targets_spread_only_the_age_attribute():
    task = Task.competition()  # mask x gender x age, 18 classes
    rows = pd.DataFrame({"age_years": [29, 45, 59, -1], "split": ["train", "train", "train", "pseudo"]})
    labels = task.encode(np.array([1, 2, 0, 2]), np.array([1, 0, 1, 0]), age_group(np.array([29, 45, 59, 40])))
    t = age_soft_targets(rows, labels, task, 2.0, 60)
    assert t.shape == (4, 18) and np.allclose(t.sum(1), 1.0)
    m = task.marginals(t)
    assert np.allclose(m["mask"], np.eye(3)[[1, 2, 0, 2]]) and np.allclose(m["gender"], np.eye(2)[[1, 0, 1, 0]])
    assert np.allclose(m["age"][:3], group_shares(np.array([29, 45, 59]), 2.0, (30, 60)), atol=1e-6)
    assert np.allclose(t[3], np.eye(18)[labels[3]])  # no raw age (pseudo-labelled): one-hot
    # the training threshold (train.old_age) is the one spread across
    t58 = age_soft_targets(rows.iloc[[2]], task.encode(0, 1, 2)[None], task, 2.0, 58)
    assert task.marginals(t58)["age"][0] == pytest.approx(group_shares(np.array([59]), 2.0, (30, 58))[0], abs=1e-6)


def _cfg(**loss):
    return tiny(loss=loss)


def test_refused_without_raw_ages_or_with_what_also_sets_the_target():
    rows = pd.DataFrame({"age_years": [40, 20], "split": ["train", "train"]})
    flat = Task.flat(["a", "b"])
    with pytest.raises(ConfigError, match=r"loss\.age_sigma=2 needs raw ages in years, but this task has no age"):
        check_age_sigma(_cfg(age_sigma=2.0), flat, rows)
    check_age_sigma(_cfg(age_sigma=0.0), flat, rows)  # off: nothing is checked
    groups_only = pd.DataFrame({"age_years": [-1, 20], "split": ["train", "train"]})
    with pytest.raises(ConfigError, match="1 training rows have only an age group"):
        check_age_sigma(_cfg(age_sigma=2.0), Task.competition(), groups_only)
    mixed = tiny(loss={"age_sigma": 2.0}, data={"mixup": 0.2})
    with pytest.raises(ConfigError, match="MixUp/CutMix"):
        check_age_sigma(mixed, Task.competition(), rows)
    student = tiny(loss={"age_sigma": 2.0}, distill={"teachers": ["runs/a"]})
    with pytest.raises(ConfigError, match="distill.teachers"):
        check_age_sigma(student, Task.competition(), rows)


@pytest.mark.slow
def test_training_sees_soft_age_targets_and_validation_the_hard_labels(prepared_dir, tmp_path, monkeypatch):
    prep = load_prepared(prepared_dir)
    tr, va = fold_rows(prep, 0)
    seen = []
    forward = losses.MultiHeadLoss.forward

    def spy(self, logits, target):
        seen.append(target.detach().clone())
        return forward(self, logits, target)
    monkeypatch.setattr(losses.MultiHeadLoss, "forward", spy)
    s = train(prepared_dir, tmp_path / "r", tiny(train={"epochs": 1, "accum_steps": 1}, loss={"age_sigma": 4.0}))
    soft = torch.cat([t for t in seen if t.dim() == 2])
    hard = torch.cat([t for t in seen if t.dim() == 1])
    assert len(soft) == len(tr)  # every training image got its soft target
    expected = age_soft_targets(tr, tr["label"].to_numpy(), prep.task, 4.0, 60)
    assert sorted(map(tuple, soft.numpy().round(5))) == sorted(map(tuple, expected.round(5)))
    assert ((soft > 0.01) & (soft < 0.99)).any()  # some synthetic ages lie near a threshold
    assert len(hard) == len(va)  # validation's loss is on the hard labels
    oof = pd.read_csv(Path(s["run_dir"]) / "fold0" / "oof.csv")
    assert list(oof["label"]) == list(va["label"])


def test_a_refused_run_fails_before_its_directory_exists(prepared_dir, tmp_path):
    cfg = tiny(train={"epochs": 1}, loss={"age_sigma": 2.0}, data={"cutmix": 1.0})
    with pytest.raises(ConfigError, match="loss.age_sigma gives each training image its own soft target"):
        train(prepared_dir, tmp_path / "r", cfg)
    assert not (tmp_path / "r").exists()
