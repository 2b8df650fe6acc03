"""Reliability: the bad-input corpus, interruption, reproducibility, data safety, security.

The corpus and both tables live in ``tests/bad_inputs.py``; ``docs/reliability.md`` is
generated from them by ``scripts/gen_reliability_doc.py`` (a test keeps it current).
Everything is CPU-only, on tiny images, with the tiny test model.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bad_inputs import CASES, GUARANTEES, cases, snapshot
from helpers import TINY_SETS, tiny, train
from maskcls.data.imageio import probe, read_pil, read_rgb
from maskcls.engine.run import resume_training
from maskcls.errors import CheckpointError, ConfigError, DataError
from maskcls.prep.prepare import prepare
from maskcls.prep.prepared import MANIFEST_COLUMNS, load_prepared
from maskcls.rundir.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMING = ["seconds", "images_per_s"]
PHOTO_SLOTS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]


def metrics(run: Path, fold: int = 0) -> pd.DataFrame:
    m = pd.read_csv(run / f"fold{fold}" / "metrics.csv")
    return m.drop(columns=[c for c in TIMING if c in m.columns])


# --------------------------------------------------------------------------- corpus builders
def _person_folders(root: Path) -> list[Path]:
    df = pd.read_csv(root / "train" / "train.csv", dtype=str, keep_default_na=False)
    return [root / "train" / "images" / p for p in df["path"]]


def _put_photos(root: Path, chosen: list) -> dict[str, Path]:
    """Replace persons' photos (from the second person on) with the cases' files, one slot each."""
    folders, made = _person_folders(root)[1:], {}
    for k, case in enumerate(chosen):
        folder, stem = folders[k // 7], PHOTO_SLOTS[k % 7]
        for old in folder.glob(f"{stem}.*"):
            old.unlink()
        made[case.name], _ = case.make(folder, stem)
    return made


def _put_eval(root: Path, chosen: list) -> dict[str, Path]:
    info = pd.read_csv(root / "eval" / "info.csv", dtype=str, keep_default_na=False)
    made = {}
    for case in chosen:
        made[case.name], _ = case.make(root / "eval" / "images", None)
        info.loc[len(info)] = [made[case.name].name, "0"]
    info.to_csv(root / "eval" / "info.csv", index=False)
    return made


@pytest.fixture(scope="module")
def handled_dataset(synth_root, tmp_path_factory):
    """The synthetic set with every handled image case inside it (photos, eval images, a folder)."""
    root = tmp_path_factory.mktemp("handled") / "data"
    shutil.copytree(synth_root, root)
    made = _put_photos(root, cases("handled", ("photo",)))
    made.update(_put_eval(root, cases("handled", ("eval",))))
    for case in cases("handled", ("folder",)):
        made[case.name] = case.make(root / "train" / "images", root / "train" / "train.csv")
    return root, made


@pytest.fixture(scope="module")
def handled_run(handled_dataset, tmp_path_factory):
    root, made = handled_dataset
    base = tmp_path_factory.mktemp("handled_run")
    meta = prepare(root, base / "prep", folds=3, seed=1)   # no --skip-bad: every case must be accepted
    s = train(base / "prep", base / "run", tiny(train={"epochs": 1}))
    return base / "prep", Path(s["run_dir"]), meta, s


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A flat folder holding every image case (handled and reported), for predict RUN FILES."""
    d = tmp_path_factory.mktemp("corpus")
    made = {}
    for i, case in enumerate(cases(roles=("photo", "eval"))):
        made[case.name], _ = case.make(d, f"case{i:02d}")
    return d, made


@pytest.fixture(scope="module")
def reference_run(prepared_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run (the yardstick of the resume and reproducibility tests)."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(prepared_dir, run, tiny(train={"epochs": 3}))
    return run


# --------------------------------------------------------------------------- the case table
@pytest.mark.parametrize("case", cases("handled", ("photo", "eval")), ids=lambda c: c.name)
def test_handled_image_decodes_to_expected_pixels(case, tmp_path):
    path, expected = case.make(tmp_path, "photo")
    info = probe(path)
    assert (info["height"], info["width"]) == expected.shape[:2], "size after EXIF rotation"
    for fast in {info["fast"], False}:   # the manifest's decoder, and the careful one
        arr = read_rgb(path, fast=fast)
        assert arr.dtype == np.uint8 and arr.shape == expected.shape, (fast, arr.shape)
        err = np.abs(arr.astype(float) - expected).mean()
        assert err <= case.tol + 0.5, f"{case.name}: mean |decoded - expected| = {err:.2f} (fast={fast})"
        if (expected[..., 0] == expected[..., 1]).all() and (expected[..., 1] == expected[..., 2]).all():
            assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    if case.make.__name__ == "make_exif_rotated":
        assert info["orientation"] == 6 and info["fast"] is False
        # the raw stored pixels are landscape; rotating them clockwise gives exactly what we decode
        raw = np.asarray(Image.open(path).convert("RGB"))   # PIL without exif_transpose
        assert raw.shape[:2] == (96, 128)
        assert np.array_equal(read_rgb(path, fast=False), np.rot90(raw, k=-1))
        top, bottom = arr[:40, :60].reshape(-1, 3).mean(0), arr[-40:, :60].reshape(-1, 3).mean(0)
        assert top[0] > 150 and bottom[2] > 150, "red must be on top, blue at the bottom"


@pytest.mark.parametrize("case", cases("reported", ("photo",)), ids=lambda c: c.name)
def test_reported_image_raises_data_error_naming_it(case, tmp_path):
    path, _ = case.make(tmp_path, "photo")
    with pytest.raises(DataError, match=case.reason) as e:
        probe(path)
    assert str(path) in str(e.value)
    with pytest.raises(DataError) as e:
        read_pil(path)
    assert str(path) in str(e.value)


def test_prepare_names_every_bad_file_and_skip_bad_records_it(synth_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    chosen = cases("reported", ("photo",))
    made = _put_photos(root, chosen)
    with pytest.raises(DataError) as e:
        prepare(root, tmp_path / "p", folds=3)
    lines = str(e.value).splitlines()
    for case in chosen:
        hit = [ln for ln in lines if str(made[case.name]) in ln]
        assert hit and re.search(case.reason, hit[0]), f"{case.name} not named with its reason:\n{e.value}"
    assert not (tmp_path / "p").exists()
    meta = prepare(root, tmp_path / "p", folds=3, skip_bad=True)
    on_disk = json.loads((tmp_path / "p" / "prepare.json").read_text())
    assert on_disk["excluded"] == meta["excluded"]
    man = load_prepared(tmp_path / "p").manifest
    kept = {str(root / p) for p in man["path"]}
    for case in chosen:
        rec = [x for x in meta["excluded"] if x["file"] == str(made[case.name])]
        assert rec and re.search(case.reason, rec[0]["reason"]), case.name
        assert str(made[case.name]) not in kept


@pytest.mark.slow  # trains (through its run fixture)
@pytest.mark.timeout(240)   # a hang in a loader or in predict fails here instead of stalling the suite
def test_handled_corpus_prepares_trains_and_predicts(handled_dataset, handled_run):
    from maskcls.infer.predict import predict_submission
    root, made = handled_dataset
    prep_dir, run, meta, summary = handled_run
    assert meta["excluded"] == []
    man = load_prepared(prep_dir).manifest
    stored = {str(root / p) for p in man["path"]}
    for case in cases("handled", ("photo", "eval")):
        assert str(made[case.name]) in stored, f"{case.name} missing from the manifest"
    for case in cases("handled", ("folder",)):
        assert (man["group"] == made[case.name].name).sum() == 7
    exif = man[man["path"].str.contains("mask5|normal") & ~man["fast"]]
    assert len(exif), "EXIF-rotated / PIL-only photos must be marked fast=False"
    assert summary["folds"]["0"]["status"] == "done"
    assert list(pd.read_csv(run / "fold0" / "metrics.csv")["epoch"]) == [1]
    s = predict_submission(run, folds="0", num_workers=0)
    sub = pd.read_csv(s["submission"], dtype=str, keep_default_na=False)
    info = pd.read_csv(root / "eval" / "info.csv", dtype=str, keep_default_na=False)
    assert list(sub["ImageID"]) == list(info["ImageID"])
    for case in cases("handled", ("eval",)):
        assert made[case.name].name in set(sub["ImageID"])
    assert sub["ans"].astype(int).between(0, 17).all()


@pytest.mark.slow  # trains (through its run fixture)
def test_predict_images_over_the_corpus(handled_run, corpus_dir):
    from maskcls.infer.predict import predict_images
    _, run, _, _ = handled_run
    d, made = corpus_dir
    res = {r["path"]: r for r in predict_images(run, [str(d)], folds="0", batch_size=8)}
    for case in cases(roles=("photo", "eval")):
        r = res[str(made[case.name])]
        if case.expect == "handled":
            assert "error" not in r and 0 <= r["class_id"] < 18 and r["label"], (case.name, r)
        else:
            assert "error" in r and re.search(case.reason, r["error"]), (case.name, r)


@pytest.mark.parametrize("case", cases(roles=("csv",)), ids=lambda c: c.name)
def test_csv_manifest_case(case, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    csv, kw = case.make(src)
    out = tmp_path / "p"
    before = snapshot(src)
    if case.expect == "handled":
        meta = prepare(csv, out, folds=2, seed=0, **kw)
        man = load_prepared(out).manifest
        train = man[man["split"] == "train"]
        assert list(man.columns) == MANIFEST_COLUMNS and man["path"].is_unique
        assert len(train) == 12 and set(train["fold"]) == {0, 1}
        assert (man.loc[man["split"] == "eval", "fold"] == -1).all()
        if case.reason:
            assert any(case.reason in w for w in meta["warnings"]), meta["warnings"]
        assert snapshot(src) == before
        return
    with pytest.raises(DataError, match=case.reason) as e:
        prepare(csv, out, folds=2, seed=0, **kw)
    assert str(csv) in str(e.value) or case.expect == "reported"
    assert not out.exists()
    if case.expect == "refused":   # a wrong manifest is never silently skipped
        with pytest.raises(DataError, match=case.reason):
            prepare(csv, out, folds=2, seed=0, skip_bad=True, **kw)
        assert snapshot(src) == before
        return
    meta = prepare(csv, out, folds=2, seed=0, skip_bad=True, **kw)
    assert len(meta["excluded"]) == 1 and re.search(case.reason, meta["excluded"][0]["file"])
    assert len(load_prepared(out).manifest) == 11
    assert snapshot(src) == before


def test_tables_name_existing_tests_and_doc_is_current():
    names = {t for c in CASES for t in c.tests} | {g.test for g in GUARANTEES}
    defined = {m for f in (ROOT / "tests").rglob("test_*.py")
               for m in re.findall(r"^def (test_\w+)\(", f.read_text(encoding="utf-8"), re.M)}
    missing = sorted(names - defined)
    assert not missing, f"the tables name tests that do not exist: {missing}"
    assert all(c.tests for c in CASES), "every case names the test that proves it"
    assert all(c.expect in ("handled", "reported", "refused") for c in CASES)
    assert len({c.name for c in CASES}) == len(CASES)
    spec = importlib.util.spec_from_file_location("gen_reliability_doc", ROOT / "scripts" / "gen_reliability_doc.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    doc = ROOT / "docs" / "reliability.md"
    assert doc.read_text(encoding="utf-8") == gen.render(), \
        "docs/reliability.md is stale: run python scripts/gen_reliability_doc.py"


# --------------------------------------------------------------------------- interruption
def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "maskcls", "train", *args]


def _spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    fh = open(log, "wb")
    # A shell without job control starts background commands with SIGINT ignored, and the
    # child would inherit that (Python then installs no KeyboardInterrupt handler): restore
    # the default so that the Ctrl-C step tests the trainer, not how the suite was launched.
    p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    fh.close()
    return p


def _wait_rows(proc: subprocess.Popen, csv: Path, rows: int, log: Path, limit: float = 150) -> None:
    t0 = time.time()
    while time.time() - t0 < limit:
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before epoch {rows} was saved:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        try:
            if csv.exists() and len(pd.read_csv(csv)) >= rows:
                return
        except (pd.errors.EmptyDataError, OSError):   # atomic writes make this unlikely, but be tolerant
            pass
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no epoch {rows} within {limit:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_kill_and_ctrl_c_then_resume_equal_uninterrupted(prepared_dir, reference_run, tmp_path):
    run = tmp_path / "R"
    sets = [a for s in TINY_SETS + ["train.epochs=3"] for a in ("--set", s)]
    csv = run / "fold0" / "metrics.csv"
    # 1. SIGKILL during epoch 2 (the epoch-1 row is the signal that epoch 2 has started)
    proc = _spawn(_train_cmd(str(prepared_dir), "--folds", "0", "--run-dir", str(run), *sets), tmp_path / "a.log")
    _wait_rows(proc, csv, 1, tmp_path / "a.log")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(60) == -signal.SIGKILL
    assert len(pd.read_csv(csv)) == 1, "killed too late: epoch 2 had finished"
    assert load_checkpoint(run / "fold0" / "last.pt")["epoch"] == 1
    # 2. resume, then Ctrl-C (SIGINT) during epoch 3
    proc = _spawn(_train_cmd("--resume", str(run)), tmp_path / "b.log")
    _wait_rows(proc, csv, 2, tmp_path / "b.log")
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(120)
    out = (tmp_path / "b.log").read_text(errors="replace")
    assert rc == 130, f"exit {rc}:\n{out[-3000:]}"
    assert f"--resume {run}" in out and "Traceback" not in out, out[-3000:]
    ck = load_checkpoint(run / "fold0" / "last.pt")
    assert ck["epoch"] == 2 and torch.load(run / "fold0" / "last.pt", weights_only=True)["epoch"] == 2
    assert json.loads((run / "summary.json").read_text())["finished"] is False
    # 3. resume to the end: identical to the uninterrupted run
    s = resume_training(run)
    assert s["finished"] and s["folds"]["0"]["status"] == "done"
    pd.testing.assert_frame_equal(metrics(reference_run), metrics(run))


def _tiny_state(v: float) -> dict:
    return {"model": {"w": torch.full((4, 4), v)}, "epoch": int(v), "meta": {"note": "x"}}


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    last = tmp_path / "last.pt"
    save_checkpoint(_tiny_state(1), last, keep_previous=True)
    save_checkpoint(_tiny_state(2), last, keep_previous=True)
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):   # a kill while the bytes are going to disk
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_tiny_state(3), last, keep_previous=True)
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(last, fallback=False)["epoch"] == 2
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt", "last.prev.pt"}, "temp file left behind"
    # a kill between the two renames (last.pt already rotated away): the previous one is used
    real_replace, calls = os.replace, []

    def second_rename_dies(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_dies)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_tiny_state(3), last, keep_previous=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not last.exists() and load_checkpoint(last)["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"garbage" * 10],
                         ids=["truncated", "zero-byte", "garbage"])
def test_corrupt_checkpoint_names_file_or_falls_back(tmp_path, damage):
    last = tmp_path / "fold0" / "last.pt"
    last.parent.mkdir()
    save_checkpoint(_tiny_state(1), last)
    last.write_bytes(damage(last.read_bytes()))
    with pytest.raises(CheckpointError, match=re.escape(str(last))):
        load_checkpoint(last)
    save_checkpoint(_tiny_state(7), last.with_suffix(".prev.pt"))
    assert load_checkpoint(last)["epoch"] == 7
    with pytest.raises(CheckpointError, match=re.escape(str(last))):
        load_checkpoint(last, fallback=False)


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_same_folds(synth_root, tmp_path):
    a = prepare(synth_root, tmp_path / "a", folds=3, seed=11)
    b = prepare(synth_root, tmp_path / "b", folds=3, seed=11)
    c = prepare(synth_root, tmp_path / "c", folds=3, seed=12)
    ma, mb, mc = (pd.read_csv(tmp_path / x / "manifest.csv") for x in "abc")
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert a["manifest_sha1"] == b["manifest_sha1"]
    assert not ma["fold"].equals(mc["fold"]), "a different seed should change the folds"
    assert ma["path"].equals(mc["path"]) and c["counts"]["images"] == a["counts"]["images"]


@pytest.mark.slow
def test_same_seed_same_metrics(prepared_dir, reference_run, tmp_path):
    train(prepared_dir, tmp_path / "again", tiny(train={"epochs": 3}))
    pd.testing.assert_frame_equal(metrics(reference_run), metrics(tmp_path / "again"))
    a = pd.read_csv(reference_run / "fold0" / "oof.csv")
    b = pd.read_csv(tmp_path / "again" / "fold0" / "oof.csv")
    pd.testing.assert_frame_equal(a, b)


# --------------------------------------------------------------------------- data safety
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_workflow_leaves_a_read_only_dataset_untouched(tmp_path, capsys):
    from maskcls.cli import main
    from maskcls.infer.predict import predict_submission
    from maskcls.prep.faces import build_face_crops
    from maskcls.prep.stats import compute_stats
    from maskcls.report.page import write_report
    from maskcls.synth.dataset import synthesize
    data = tmp_path / "data"
    synthesize(data, people=8, eval_people=3, seed=5, image_size=(96, 128), workers=1)
    modes = {p: p.stat().st_mode for p in [data, *data.rglob("*")]}
    before = snapshot(data)
    try:
        for p in modes:    # chmod -R a-w (root ignores it, hence the hashes and mtimes below)
            os.chmod(p, stat.S_IMODE(modes[p]) & ~0o222)
        prepare(data, tmp_path / "prep", folds=3, seed=0)
        compute_stats(tmp_path / "prep", workers=1)
        build_face_crops(tmp_path / "prep", size=96, workers=1, progress=False)
        s = train(tmp_path / "prep", tmp_path / "run",
                  tiny(train={"epochs": 1}, data={"faces": True, "normalize": "dataset"}))
        write_report(tmp_path / "run")
        assert s["finished"] and (tmp_path / "run" / "report.html").exists()
        p1 = predict_submission(tmp_path / "run", folds="0", num_workers=0)
        p2 = predict_submission(tmp_path / "run", folds="0", num_workers=0)
        assert Path(p1["submission"]).name == "submission.csv" and Path(p2["submission"]).name == "submission-2.csv"
        assert Path(p1["submission"]).read_text() == Path(p2["submission"]).read_text()
        write_report(tmp_path / "run")
        # an existing run directory is refused (and left as it was) unless --resume
        run_before = snapshot(tmp_path / "run")
        capsys.readouterr()
        rc = main(["train", str(tmp_path / "prep"), "--folds", "0", "--run-dir", str(tmp_path / "run"),
                   *[a for x in TINY_SETS + ["train.epochs=1"] for a in ("--set", x)]])
        err = capsys.readouterr().err
        assert rc == 2 and "already exists" in err and "--resume" in err, err
        assert snapshot(tmp_path / "run") == run_before
    finally:
        for p, m in modes.items():
            os.chmod(p, stat.S_IMODE(m))
    assert snapshot(data) == before, "the dataset was modified"


# --------------------------------------------------------------------------- security
@pytest.mark.slow  # trains (through its run fixture)
def test_checkpoints_load_with_weights_only(reference_run):
    for name in ("best.pt", "last.pt"):
        ck = torch.load(reference_run / "fold0" / name, weights_only=True)
        assert isinstance(ck["model"], dict) and all(isinstance(v, torch.Tensor) for v in ck["model"].values())
        assert isinstance(ck["config"], dict) and isinstance(ck["meta"], dict)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    ck = tmp_path / "last.pt"
    torch.save({"model": {}, "epoch": 1, "payload": _Evil(marker)}, ck)
    with pytest.raises(CheckpointError, match=re.escape(str(ck)) + ".*pickled Python objects"):
        load_checkpoint(ck)
    assert not marker.exists(), "a pickled object in a checkpoint was executed"


@pytest.mark.slow  # trains (through its run fixture)
def test_yaml_python_tags_are_rejected(tmp_path, reference_run):
    from maskcls.config_io import load_config
    marker = tmp_path / "pwned"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"train:\n  epochs: {tag}\n")
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, [f"train.epochs={tag}"])
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference_run / "run.json", run / "run.json")
    (run / "config.yaml").write_text(f"run:\n  name: {tag}\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        resume_training(run)
    assert not marker.exists(), "a YAML python tag was executed"
