"""Age-boundary exclusion (train.drop_ages / train.drop_age_margin): left out of training, never of validation."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import tiny, train
from maskcls.engine.fold_data import TrainingAges, fold_data, fold_rows, resolve_preprocessing
from maskcls.errors import ConfigError
from maskcls.prep.prepare import prepare
from maskcls.prep.prepared import load_prepared
from maskcls.task import Task


def _fold0(prep, ages: TrainingAges):
    cfg = tiny()
    pp = resolve_preprocessing(cfg.data, prep, 64, [0.5] * 3, [0.5] * 3)
    return fold_data(prep, 0, cfg.data, pp, batch_size=4, valid_batch_size=16, seed=0, old_age=ages)


def _ages_on_both_sides(prep) -> list[int]:
    """Two ages to drop: one that only fold 0's training rows have, one that its validation rows have too."""
    tr, va = fold_rows(prep, 0)
    tr_years, va_years = set(tr["age_years"]), set(va["age_years"])
    only_train = sorted(tr_years - va_years)
    both = sorted(tr_years & va_years)
    assert only_train and both, "the synthetic set should give fold 0 such ages"
    return [int(only_train[0]), int(both[0])]


def test_dropped_ages_never_reach_the_training_loader_but_are_validated(prepared_dir, caplog):
    prep = load_prepared(prepared_dir)
    drop = _ages_on_both_sides(prep)
    tr, va = fold_rows(prep, 0)
    with caplog.at_level(logging.INFO, logger="maskcls.engine.fold_data"):
        fd = _fold0(prep, TrainingAges(drop=tuple(drop)))
    served = [int(i) for _, _, idx in fd.train_loader for i in idx]  # one epoch of the training loader
    served_years = fd.train_rows["age_years"].to_numpy()[served]
    assert not np.isin(served_years, drop).any()
    n_dropped = int(tr["age_years"].isin(drop).sum())
    assert n_dropped > 0 and len(fd.train_rows) == len(tr) - n_dropped
    assert set(served) == set(range(len(fd.train_rows)))  # everything else is still trained on
    assert (fd.train_labels == fd.train_rows["label"].to_numpy()).all()
    # validation keeps every row of the fold, the dropped ages included
    assert list(fd.valid_rows.index) == list(va.index) and fd.valid_rows["age_years"].isin(drop).any()
    assert (fd.valid_loader.dataset.labels == va["label"].to_numpy()).all()
    assert f"{n_dropped} of {len(tr)} training images left out" in caplog.text


def test_margin_drops_the_ages_just_below_each_threshold():
    comp = Task.competition()
    assert TrainingAges(margin=3).dropped_ages(comp) == [27, 28, 29, 57, 58, 59]
    assert TrainingAges(old_age=58, margin=2).dropped_ages(comp) == [28, 29, 56, 57]  # the training threshold
    assert TrainingAges(drop=(45, 57), margin=1).dropped_ages(comp) == [29, 45, 57, 59]
    assert TrainingAges(old_age=58).dropped_ages(comp) == []


def test_pseudo_labelled_rows_without_raw_ages_are_kept():
    rows = pd.DataFrame({"age_years": [57, 40, -1, 58], "split": ["train", "train", "pseudo", "train"]})
    keep = TrainingAges(drop=(57, 58)).keep(rows, Task.competition())
    assert keep.tolist() == [False, True, True, False]


def _csv_set(root: Path, ages: list[str] | None) -> Path:
    """A prepared 12-image CSV set: flat 2-class labels (``ages`` None) or gender x age with these age cells."""
    (root / "imgs").mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.fromarray(np.full((32, 32, 3), 20 * i, np.uint8)).save(root / "imgs" / f"{i}.jpg")
        row = {"path": f"imgs/{i}.jpg", "group": f"p{i // 2}"}
        row.update({"label": i % 2} if ages is None else {"gender": "female" if i % 4 < 2 else "male",
                                                         "age": ages[i]})
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "m.csv", index=False)
    prepare(root / "m.csv", root / "prepared", folds=2, seed=0)
    return root / "prepared"


@pytest.mark.parametrize("ages,match", [
    (None, r"train\.drop_ages needs raw ages in years, but this task has no age attribute"),
    (["<30", "30-59", ">=60"] * 4, r"train\.drop_ages needs raw ages in years, but 6 training rows have only an age "
                                   "group"),
])
def test_refused_where_the_task_has_no_raw_ages(tmp_path, ages, match):
    prep = load_prepared(_csv_set(tmp_path, ages))
    with pytest.raises(ConfigError, match=match):
        _fold0(prep, TrainingAges(drop=(57,)))
    with pytest.raises(ConfigError, match="train.drop_age_margin"):
        _fold0(prep, TrainingAges(margin=2))
    assert len(_fold0(prep, TrainingAges()).train_rows) == 6  # off: nothing is checked or dropped


def test_csv_with_ages_in_years_is_accepted(tmp_path):
    prep = load_prepared(_csv_set(tmp_path, [str(a) for a in (20, 57, 58, 61, 35, 70) * 2]))
    tr, _ = fold_rows(prep, 0)
    fd = _fold0(prep, TrainingAges(drop=(57, 58)))
    assert len(fd.train_rows) == len(tr) - int(tr["age_years"].isin([57, 58]).sum())
    assert not fd.train_rows["age_years"].isin([57, 58]).any()


@pytest.mark.slow
def test_training_with_dropped_ages_and_vcutmix_validates_every_row(prepared_dir, tmp_path):
    prep = load_prepared(prepared_dir)
    drop = _ages_on_both_sides(prep)
    cfg = tiny(train={"epochs": 1, "drop_ages": drop}, data={"vcutmix": 0.5, "vcutmix_same_mask": True})
    s = train(prepared_dir, tmp_path / "r", cfg)
    oof = pd.read_csv(Path(s["run_dir"]) / "fold0" / "oof.csv")
    man = pd.read_csv(prepared_dir / "manifest.csv")
    assert list(oof["label"]) == list(man.loc[man["fold"] == 0, "label"])  # out-of-fold keeps the dropped ages
    assert man.loc[man["fold"] == 0, "age_years"].isin(drop).any()
    assert np.isfinite(s["folds"]["0"]["best_f1"])
