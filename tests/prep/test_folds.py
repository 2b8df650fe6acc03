"""Fold lists: one parser for train and predict."""
from __future__ import annotations

import pytest

from maskcls.errors import ConfigError


# --------------------------------------------------------------------------- one copy of each
def test_one_fold_list_parser_for_train_and_predict(tmp_path):
    from maskcls.cli.train_cmds import parse_folds
    from maskcls.prep.folds import parse_fold_list
    from maskcls.rundir.models import select_folds
    assert parse_fold_list("2,0,2") == [0, 2] and parse_folds("2,0", 3) == [0, 2] and parse_folds("all", 2) == [0, 1]
    for d in ("fold0", "fold2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "best.pt").write_bytes(b"")
    assert list(select_folds(tmp_path, "2,0")) == [0, 2]
    for call in (lambda: parse_folds("0;1", 3), lambda: select_folds(tmp_path, "0;1")):
        with pytest.raises(ConfigError, match=r"--folds '0;1': use all.*a list like 0,2"):
            call()
