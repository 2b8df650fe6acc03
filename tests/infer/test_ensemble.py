"""Ensembles across runs: options checked before any run is read."""
from __future__ import annotations

import pytest

from maskcls.errors import ConfigError


def test_ensemble_options_are_checked_before_any_run_is_read(tmp_path):
    from maskcls.infer.ensemble import predict_runs
    with pytest.raises(ConfigError, match=r"--ensemble-weights 'ofo'.*did you mean 'oof'"):
        predict_runs([tmp_path / "missing-a", tmp_path / "missing-b"], weights="ofo")
    with pytest.raises(ConfigError, match="--tune-bias"):
        predict_runs([tmp_path / "missing-a"], tune_bias="of")
