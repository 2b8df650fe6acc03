"""Logs a person can read anywhere, the start banner, experiment trackers (offline, into tmp_path)."""
from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import TINY_SETS, tiny
from helpers import train as train_run
from maskcls import progress
from maskcls.config_io import load_config, read_config
from maskcls.errors import ConfigError

LEGACY = Path(__file__).parents[1] / "fixtures" / "legacy_run_0.1.0"


@pytest.fixture(autouse=True)
def _progress_defaults():
    progress.reset()
    yield
    progress.reset()


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "maskcls.progress"]


# ---------------------------------------------------------------------------------------- progress lines
def test_plain_lines_every_n_updates_with_rate_eta_and_metrics(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="maskcls.progress")
    p = progress.PlainProgress(total=10, desc="fold 0 epoch 1/3 train", unit="batch", every=4, clock=clock)
    for i in range(10):
        clock.t += 2.0  # 0.5 batch/s
        p.update(1, loss=f"{1.0 / (i + 1):.4f}", acc=0.5)
    p.close()
    lines = _lines(caplog)
    assert len(lines) == 3  # after updates 4 and 8, and the last one at close
    assert lines[0] == ("fold 0 epoch 1/3 train: 4/10 batches (40%), 0.50 batch/s, elapsed 0:08, ETA 0:12 | "
                        "loss 0.2500 acc 0.5")
    assert lines[1].startswith("fold 0 epoch 1/3 train: 8/10 batches (80%)") and "ETA 0:04" in lines[1]
    assert "10/10 batches (100%)" in lines[2] and "ETA 0:00" in lines[2] and "loss 0.1000" in lines[2]


def test_plain_lines_by_time_and_silent_short_steps(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="maskcls.progress")
    short = progress.PlainProgress(total=5, desc="valid", unit="batch", clock=clock)
    for _ in range(5):
        clock.t += 1.0
        short.update(1)
    short.close()
    assert _lines(caplog) == []  # a 5-second step leaves no progress line (its summary line follows)
    slow = progress.PlainProgress(total=100, desc="faces", unit="img", seconds=30, clock=clock)
    for _ in range(100):
        clock.t += 1.0
        slow.update(1)
    slow.close()
    lines = _lines(caplog)
    assert [ln.split(":")[1].split(" (")[0].strip() for ln in lines] == ["30/100 images", "60/100 images",
                                                                         "90/100 images", "100/100 images"]
    assert "1.00 img/s" in lines[0] and "ETA 1:10" in lines[0]


def test_slow_rates_read_as_seconds_per_unit_and_long_times_as_hours(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="maskcls.progress")
    p = progress.PlainProgress(total=1000, desc="train", unit="batch", every=1, clock=clock)
    clock.t += 20.0
    p.update(1)
    assert "20.0 s/batch" in _lines(caplog)[0] and "ETA 5:33:00" in _lines(caplog)[0]


def test_plain_progress_counts_exactly_from_threads(caplog):
    caplog.set_level(logging.INFO, logger="maskcls.progress")
    p = progress.PlainProgress(total=4000, desc="stats", unit="img", every=500)
    threads = [threading.Thread(target=lambda: [p.update(1) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.close()
    assert p.n == 4000
    assert len(_lines(caplog)) == 8 and "4000/4000 images (100%)" in _lines(caplog)[-1]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_terminal_bars_otherwise_plain_and_overrides(monkeypatch):
    monkeypatch.delenv("MASKCLS_PROGRESS", raising=False)
    assert progress.resolve_mode(FakeTTY()) == "bar"
    assert progress.resolve_mode(io.StringIO()) == "plain"      # a file, a pipe, nohup
    for mode in ("plain", "off", "bar"):
        monkeypatch.setenv("MASKCLS_PROGRESS", mode)
        assert progress.resolve_mode(FakeTTY()) == mode
        assert progress.resolve_mode(io.StringIO()) == mode
    monkeypatch.setenv("MASKCLS_PROGRESS", "bar")
    progress.configure(every=50)                                 # --log-every wins, also on a terminal
    assert progress.resolve_mode(FakeTTY()) == "plain"
    assert isinstance(progress.progress(total=3, desc="x"), progress.PlainProgress)
    assert type(progress.progress(total=3, desc="x", enabled=False)) is progress.Progress  # other ranks


def test_parse_log_every():
    assert progress.parse_log_every("50") == (50, None)
    assert progress.parse_log_every("30s") == (0, 30.0)
    assert progress.parse_log_every("0.5s") == (0, 0.5)
    for bad in ("0", "-3", "fast", "s", "0s"):
        with pytest.raises(ValueError, match="batches"):
            progress.parse_log_every(bad)


def test_cli_rejects_a_bad_log_every(capsys):
    from maskcls.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--log-every", "soon", "config"])
    assert e.value.code == 2 and "number of batches (50) or of seconds (30s)" in capsys.readouterr().err


def test_track_updates_once_per_item_and_closes(caplog):
    caplog.set_level(logging.INFO, logger="maskcls.progress")
    progress.configure(every=2)
    assert list(progress.track(range(5), desc="predict")) == [0, 1, 2, 3, 4]
    assert [ln.split(": ")[1].split(",")[0] for ln in _lines(caplog)] == [
        "2/5 batches (40%)", "4/5 batches (80%)", "5/5 batches (100%)"]


# ---------------------------------------------------------------------------------------- config keys
def test_trackers_key_and_the_legacy_tensorboard_switch():
    assert load_config().run.tracker_list() == ["tensorboard"]
    assert load_config(None, ["run.trackers=wandb"]).run.trackers == ["wandb"]
    assert load_config(None, ["run.trackers=[]"]).run.tracker_list() == []
    assert load_config(None, ["run.trackers=[wandb, mlflow]", "run.tensorboard=true"]).run.tracker_list() == [
        "tensorboard", "wandb", "mlflow"]
    assert load_config(None, ["run.trackers=[mlflow, tensorboard]", "run.tensorboard=false"]).run.tracker_list() \
        == ["mlflow"]
    with pytest.raises(ConfigError, match="did you mean 'wandb'"):
        load_config(None, ["run.trackers=[wandbb]"])
    legacy = read_config(LEGACY / "config.yaml")  # written before run.trackers existed: tensorboard: false
    assert legacy.run.tensorboard is False and legacy.run.tracker_list() == []


def test_missing_tracker_package_names_the_extra_before_any_run_dir(prepared_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'maskcls\[wandb\]'"):
        train_run(prepared_dir, tmp_path / "r", tiny(run={"trackers": ["wandb"]}))
    assert not (tmp_path / "r").exists()


def _record_connections(monkeypatch) -> list:
    """Record every TCP connection attempt (address, timeout) made through socket.create_connection."""
    import socket
    calls, real = [], socket.create_connection

    def spy(address, timeout=None, *args, **kwargs):
        calls.append((address, timeout))
        return real(address, timeout, *args, **kwargs)
    monkeypatch.setattr(socket, "create_connection", spy)
    return calls


def test_unreachable_servers_fail_at_once(prepared_dir, tmp_path, monkeypatch):
    """At once = one connection attempt per server, with a timeout of a few seconds, no retries, and
    no run directory: asserted on what is attempted, not on the clock of a possibly loaded machine."""
    calls = _record_connections(monkeypatch)
    with pytest.raises(ConfigError, match="unreachable"):  # port 9 of localhost: nothing listens
        train_run(prepared_dir, tmp_path / "r", tiny(run={"trackers": ["mlflow"], "mlflow_uri": "http://127.0.0.1:9"}))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="wandb_mode=offline"):
        train_run(prepared_dir, tmp_path / "r", tiny(run={"trackers": ["wandb"], "wandb_mode": "online"}))
    assert [a for a, _ in calls] == [("127.0.0.1", 9), ("127.0.0.1", 9)], calls
    assert all(t is not None and 0 < t <= 5 for _, t in calls), calls
    assert not (tmp_path / "r").exists()


def test_wandb_auto_mode_is_offline_without_a_login(monkeypatch, tmp_path):
    from maskcls.engine.extensions.tracker_plan import resolve_wandb_mode
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    calls = _record_connections(monkeypatch)
    assert resolve_wandb_mode("auto") == "offline"
    assert calls == [], "without a login, auto mode must not wait on the network"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode("auto") == "disabled"
    assert resolve_wandb_mode("offline") == "offline"


def test_tensorboard_tracker_logs_and_a_broken_tracker_only_warns(tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from maskcls.engine.extensions.tracker_plan import TrackerPlan
    from maskcls.engine.extensions.trackers import RunTrackers
    t = RunTrackers(TrackerPlan(["tensorboard"]), tmp_path / "run")
    (tmp_path / "run" / "fold0").mkdir(parents=True)
    t.start(config={"train": {"epochs": 2}}, resolved={})
    t.start_fold(0, tmp_path / "run" / "fold0")
    for epoch, f1 in ((1, 0.25), (2, 0.5)):
        t.log_epoch(0, {"epoch": epoch, "train_loss": 1.0 / epoch, "valid_f1": f1, "valid_f1_age": None})
    t.end_fold(0)
    ev = EventAccumulator(str(tmp_path / "run" / "fold0" / "tb")).Reload()
    assert [(s.step, s.value) for s in ev.Scalars("valid/f1")] == [(1, 0.25), (2, 0.5)]
    assert "valid/f1_age" not in ev.Tags()["scalars"]

    t.start_fold(1, tmp_path / "run" / "fold1")
    t.fold_tb[1].writer = None  # a writer that fails: training goes on, the tracker goes off
    caplog.set_level(logging.WARNING, logger="maskcls.engine.extensions.trackers")
    t.log_epoch(1, {"epoch": 1, "valid_f1": 0.1})
    t.log_epoch(1, {"epoch": 2, "valid_f1": 0.2})
    t.finish(summary=None, files=[])
    warnings = [r.getMessage() for r in caplog.records if "tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("tensorboard tracking failed")


# ---------------------------------------------------------------------------------------- training runs
def _cli(args: list[str], cwd: Path, log: Path, **env) -> int:
    src = Path(__file__).resolve().parents[2] / "src"
    full_env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    full_env.pop("MASKCLS_PROGRESS", None)
    with open(log, "wb") as fh:  # stdout and stderr into one file, as `> log 2>&1` does
        return subprocess.run([sys.executable, "-m", "maskcls", *args], cwd=cwd, env=full_env, stdout=fh,
                              stderr=subprocess.STDOUT, timeout=600).returncode


@pytest.mark.slow
def test_train_into_a_file_reads_as_lines_with_banner_and_progress(prepared_dir, tmp_path):
    sets = [a for s in TINY_SETS + ["train.epochs=2", "run.trackers=[]"] for a in ("--set", s)]
    log = tmp_path / "train.log"
    rc = _cli(["train", str(prepared_dir), "--folds", "0,1", "--run-dir", "run", *sets, "--log-every", "1"],
              tmp_path, log)
    text = log.read_bytes().decode()
    assert rc == 0, text
    assert "\r" not in text
    lines = text.splitlines()
    train_lines = [ln for ln in lines if ln.startswith("fold 0 epoch 1/2 train: ")]
    valid_lines = [ln for ln in lines if ln.startswith("fold 1 epoch 2/2 valid: ")]
    assert train_lines and valid_lines
    assert "batches (100%)" in train_lines[-1] and "batch/s" in train_lines[-1] and "ETA" in train_lines[-1]
    assert "loss " in train_lines[-1] and "acc " in train_lines[-1]
    assert sum(ln.startswith("fold 0 epoch ") and "| valid loss" in ln for ln in lines) == 2  # epoch lines as before

    run = tmp_path / "run"
    info = json.loads((run / "run.json").read_text())
    r = info["resolved"]
    cfg = read_config(run / "config.yaml")
    assert (r["batch_per_process"], r["processes"], r["accum_steps"], r["effective_batch"]) == (8, 1, 2, 16)
    assert r["mean"] == cfg.data.mean and r["std"] == cfg.data.std and r["image_size"] == cfg.data.image_size == 64
    assert r["weights"] == "random init" and r["precision"] in ("fp32", "bf16 autocast")
    assert (r["folds"], r["epochs"], r["loader"], r["workers"]) == ([0, 1], 2, cfg.data.loader, 0)
    for fold in (0, 1):
        s = r["steps_per_epoch"][str(fold)]
        assert s["batches"] == math.ceil(s["train_images"] / 8) and s["optimizer_steps"] == math.ceil(s["batches"] / 2)
        assert len(pd.read_csv(run / f"fold{fold}" / "lr.csv")) == 2 * s["optimizer_steps"]  # one lr per step
    banner = lines[lines.index(next(ln for ln in lines if ln.startswith("maskcls ") and ": training " in ln)):]
    assert banner[4] == "  batch     8 per process x 1 process x 2 accumulation = 16 effective"
    mean = ", ".join(f"{x:.4f}" for x in r["mean"])
    assert banner[3].startswith(f"  input     64 px photos, mean [{mean}]")
    assert banner[6].startswith("  folds     0,1 of 3, 2 epochs; fold 0: ")
    assert banner[8] == f"  run dir   {run.resolve()}"
    assert lines.index(banner[0]) < lines.index(train_lines[0])  # before the first batch

    # predict, no --log-every: stderr is a file, so no bars either
    rc = _cli(["predict", "run", "--out", "sub.csv"], tmp_path, tmp_path / "predict.log")
    assert rc == 0 and "\r" not in (tmp_path / "predict.log").read_text()


def _train_with_report(prepared: Path, run_dir: Path, cfg) -> dict:
    """Train fold 0 the way `maskcls train` does: report.html written before the trackers close."""
    from maskcls.engine.run import run_training
    from maskcls.prep.prepared import load_prepared
    from maskcls.report.page import write_report
    return run_training(cfg, load_prepared(prepared), folds=[0], run_dir=run_dir, on_summary=write_report)


@pytest.mark.slow
def test_mlflow_gets_config_metrics_summary_and_report_and_a_resume_continues(prepared_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    import shutil

    from mlflow.tracking import MlflowClient

    from maskcls.engine.run import resume_training
    s = _train_with_report(prepared_dir, tmp_path / "runs" / "r-1", tiny(train={"epochs": 2}, run={
        "trackers": ["mlflow", "tensorboard"], "tensorboard": None, "project": "masks"}))  # tiny() says false
    run = Path(s["run_dir"])
    info = json.loads((run / "run.json").read_text())["trackers"]["mlflow"]
    assert info["tracking_uri"] == f"sqlite:///{(tmp_path / 'runs').resolve() / 'mlflow.db'}"
    client = MlflowClient(info["tracking_uri"])
    r = client.get_run(info["run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "r-1"
    assert r.data.params["train.batch_size"] == "8" and r.data.params["resolved.effective_batch"] == "16"
    metrics = pd.read_csv(run / "fold0" / "metrics.csv")
    history = client.get_metric_history(info["run_id"], "fold0/valid/f1")
    assert [(h.step, round(h.value, 6)) for h in history] == [(e, round(v, 6)) for e, v in
                                                              zip(metrics["epoch"], metrics["valid_f1"])]
    assert r.data.metrics["summary/mean_f1"] == pytest.approx(s["mean_f1"])
    assert {"report.html", "summary.json", "config.yaml", "run.json"} <= {a.path for a in
                                                                         client.list_artifacts(info["run_id"])}
    assert list((run / "fold0" / "tb").glob("events.out.tfevents.*"))

    shutil.copy(run / "fold0" / "last.prev.pt", run / "fold0" / "last.pt")  # as if killed during epoch 2
    resume_training(run)
    again = json.loads((run / "run.json").read_text())
    assert again["trackers"]["mlflow"]["run_id"] == info["run_id"] and len(again["resumed"]) == 1
    runs = client.search_runs([client.get_experiment_by_name("masks").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [h.step for h in client.get_metric_history(info["run_id"], "fold0/valid/f1")] == [1, 2, 2]


def _wandb_records(run_file: Path) -> list:
    """The protobuf records of an offline W&B run file (LevelDB log format: 32 KiB blocks of
    7-byte-headed chunks: crc32 uint32, length uint16, type uint8 full=1 first=2 middle=3 last=4)."""
    from wandb.proto import wandb_internal_pb2
    data = run_file.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _items(records: list, kind: str, field: str) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for r in records
            if r.WhichOneof("record_type") == kind for i in getattr(getattr(r, kind), field)}


@pytest.mark.slow
def test_wandb_offline_run_holds_config_metrics_summary_and_report(prepared_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("HOME", str(tmp_path))  # no login: auto mode goes offline without asking the network
    monkeypatch.setenv("WANDB_SILENT", "true")
    s = _train_with_report(prepared_dir, tmp_path / "r", tiny(train={"epochs": 2}, run={"trackers": ["wandb"]}))
    run = Path(s["run_dir"])
    info = json.loads((run / "run.json").read_text())["trackers"]["wandb"]
    assert info["mode"] == "offline" and Path(info["offline_dir"]).parent == run / "wandb"
    run_file = next(Path(info["offline_dir"]).glob(f"run-{info['id']}.wandb"))
    deadline = time.monotonic() + 60  # W&B's service process writes the file; wait for its exit record
    while True:
        records = _wandb_records(run_file)
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    fold0 = [h for h in history if "fold0/valid/f1" in h]
    metrics = pd.read_csv(run / "fold0" / "metrics.csv")
    assert [h["fold0/epoch"] for h in fold0] == [1, 2], f"history of fold 0: {fold0}; records: {kinds}"
    assert [round(h["fold0/valid/f1"], 6) for h in fold0] == [round(v, 6) for v in metrics["valid_f1"]]
    config = _items(records, "config", "update")
    assert config["train"]["batch_size"] == 8 and config["resolved"]["effective_batch"] == 16
    assert _items(records, "summary", "update")["summary/mean_f1"] == pytest.approx(s["mean_f1"])
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifacts and {"report.html", "summary.json"} <= {m.path for m in artifacts[-1].manifest.contents}
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0] and "run" in kinds and not (run / "fold0" / "tb").exists()
