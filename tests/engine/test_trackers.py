"""Trackers: one TCP probe shared with the hub check, MLflow's switch unset when the run ends."""
from __future__ import annotations

import os

import pytest


def test_one_tcp_probe_for_trackers_and_the_hub(monkeypatch):
    import socket

    from maskcls.engine.extensions.tracker_plan import reachable
    from maskcls.models.weights import hub_reachable
    calls = []

    def refuse(address, timeout=None, *a, **k):
        calls.append((address, timeout))
        raise OSError("refused")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not reachable("http://tracker.invalid:5000", 1.0) and not hub_reachable("hub.invalid", timeout=2.0)
    assert calls == [(("tracker.invalid", 5000), 1.0), (("hub.invalid", 443), 2.0)]


def test_mlflow_file_store_switch_is_unset_when_the_run_ends(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from maskcls.engine.extensions.tracker_plan import TrackerPlan
    from maskcls.engine.extensions.trackers import RunTrackers
    for var in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    run = tmp_path / "r-1"
    run.mkdir()
    t = RunTrackers(TrackerPlan(names=["mlflow"], mlflow_uri=(tmp_path / "mlruns").as_uri()), run)
    t.start(config={"a": 1}, resolved={})
    assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true"
    t.finish(summary=None, files=[])
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
