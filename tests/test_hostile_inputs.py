"""Bad input, second round (issue 11): what a hostile user still broke, each case from the corpus table.

Every case of ``tests/bad_inputs.py`` with a role below is run here; the table says which test
proves it and ``docs/reliability.md`` is generated from it. Each test also checks that nothing
in the dataset (or an existing run) changed: sha256 + mtime snapshots before and after.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bad_inputs import (
    cases,
    csv_eval_rows_unlabelled,
    delete_eval_image,
    gender_age_csv,
    images_csv,
    move_dataset,
    snapshot,
)
from helpers import TINY_SETS, tiny, train
from maskcls.cli import build_parser, main
from maskcls.data.dataset import FileSource, ImageDataset
from maskcls.data.loader import build_loader
from maskcls.data.transforms import create_transform
from maskcls.errors import ConfigError, DataError
from maskcls.infer.predict import predict_submission
from maskcls.prep.prepare import prepare
from maskcls.prep.prepared import load_prepared
from maskcls.rundir.files import next_run_dir
from maskcls.synth.dataset import synthesize

ROOT = Path(__file__).resolve().parents[1]


def _sets(*extra: str) -> list[str]:
    return [a for s in [*TINY_SETS, "train.epochs=1", *extra] for a in ("--set", s)]


def _one_error_line(err: str, reason: str) -> None:
    """stderr is exactly one line, the CLI's error line, matching ``reason``; no traceback."""
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert re.search(r"^maskcls( \w+)?: error: ", err) and re.search(reason, err), err


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="module")
def comp(synth_root, tmp_path_factory):
    """A private copy of the synthetic competition set, prepared, and a tiny one-epoch run on fold 0."""
    base = tmp_path_factory.mktemp("comp")
    data = _copy(synth_root, base / "data")
    prepare(data, base / "prep", folds=3, seed=1)
    s = train(base / "prep", base / "run", tiny(train={"epochs": 1}))
    return data, base / "prep", Path(s["run_dir"])


# --------------------------------------------------------------------------- competition layout
@pytest.mark.parametrize("case", cases(roles=("competition",)), ids=lambda c: c.name)
def test_competition_case(case, synth_root, tmp_path):
    root = _copy(synth_root, tmp_path / "data")
    kwargs, check = case.make(root)
    before, out = snapshot(root), tmp_path / "p"
    if case.expect == "handled":
        meta = prepare(root, out, folds=3, seed=0, **kwargs)
        check(meta, load_prepared(out).manifest)
    else:
        with pytest.raises(DataError, match=case.reason) as e:
            prepare(root, out, folds=3, seed=0, **kwargs)
        assert not out.exists()
        if case.expect == "reported":
            listed = [ln for ln in str(e.value).splitlines() if ln.startswith("  ")]
            assert len(listed) == 1, f"one culprit, one line:\n{e.value}"
            meta = prepare(root, out, folds=3, seed=0, skip_bad=True, **kwargs)
            (x,) = meta["excluded"]
            assert re.search(case.reason, f"{x['file']}: {x['reason']}") and meta["counts"]["groups"] == 14
        else:   # a wrong option is not skipped around
            with pytest.raises(DataError, match=case.reason):
                prepare(root, out, folds=3, seed=0, skip_bad=True, **kwargs)
    assert snapshot(root) == before


def test_trust_and_group_missing_are_refused_where_they_do_not_apply(synth_root, tmp_path):
    from bad_inputs import csv_base
    csv = tmp_path / "m.csv"
    csv_base(tmp_path).to_csv(csv, index=False)
    with pytest.raises(DataError, match="--trust applies to the competition layout"):
        prepare(csv, tmp_path / "p", folds=2, trust="csv")
    with pytest.raises(DataError, match="--group-missing applies to a CSV"):
        prepare(synth_root, tmp_path / "p", folds=2, group_missing="row")
    with pytest.raises(DataError, match="--old-age 59: .* has no age column"):
        prepare(csv, tmp_path / "p", folds=2, old_age=59)
    assert not (tmp_path / "p").exists()


# --------------------------------------------------------------------------- edited prepared directories
@pytest.mark.parametrize("case", cases(roles=("manifest",)), ids=lambda c: c.name)
def test_edited_manifest_is_refused_naming_its_lines(case, prepared_dir, tmp_path, capsys):
    prep = _copy(prepared_dir, tmp_path / "prep")
    case.make(prep)
    before = snapshot(prep)
    with pytest.raises(DataError, match=case.reason) as e:
        load_prepared(prep)
    assert str(prep / "manifest.csv") in str(e.value) and "re-run `maskcls prepare`" in str(e.value)
    capsys.readouterr()
    runs = tmp_path / "runs"
    assert main(["train", str(prep), "--folds", "0", *_sets(f"run.runs_dir={runs}")]) == 2
    _one_error_line(capsys.readouterr().err, case.reason)
    assert not runs.exists() and snapshot(prep) == before


# --------------------------------------------------------------------------- command-line values
@pytest.mark.parametrize("case", cases(roles=("cli",)), ids=lambda c: c.name)
def test_out_of_range_flag_is_one_line_exit_2(case, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(case.make(tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and re.search(case.reason, err), err
    assert "--help" in err and list(tmp_path.iterdir()) == [], "nothing may be created"


def test_every_numeric_flag_has_a_checked_type():
    """No subcommand takes a bare int/float: each numeric flag has a range (cli.common.int_range/float_range)."""
    subs = next(a for a in build_parser()._actions if a.choices and isinstance(a.choices, dict))
    bare, checked = [], 0
    for name, parser in subs.choices.items():
        for action in parser._actions:
            kind = getattr(action.type, "__qualname__", "")
            if action.type in (int, float) or isinstance(action.default, (int, float)) and not (
                    isinstance(action.default, bool) or kind.startswith(("int_range", "float_range"))):
                bare.append(f"{name} {action.option_strings or action.dest}")
            checked += kind.startswith(("int_range", "float_range"))
    assert not bare, f"numeric flags without a range check: {bare}"
    assert checked >= 15
    with pytest.raises(SystemExit):   # and --old-age's CLI bound, below the library's data check
        build_parser().parse_args(["prepare", "src", "--out", "p", "--old-age", "-5"])


def test_synth_size_is_bounded(tmp_path):
    with pytest.raises(ConfigError, match=r"32\.\.2048"):
        synthesize(tmp_path / "s", people=2, image_size=(20000, 20000))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- training starts that fail
@pytest.mark.parametrize("case", cases(roles=("run",)), ids=lambda c: c.name)
def test_failed_training_start_leaves_no_run_directory(case, synth_root, tmp_path, capsys):
    data = _copy(synth_root, tmp_path / "data")
    prep = tmp_path / "prep"
    prepare(data, prep, folds=3, seed=1)
    sets = case.make(prep, data)
    runs, named = tmp_path / "runs", tmp_path / "named-run"
    before = snapshot(data)
    capsys.readouterr()
    assert main(["train", str(prep), "--folds", "0", *_sets(f"run.runs_dir={runs}", *sets)]) == 2
    _one_error_line(capsys.readouterr().err, case.reason)
    assert not runs.exists() or not any(runs.iterdir()), "a failed start left a run directory"
    assert next_run_dir(runs, "test_efficientnet").name == "test_efficientnet-1", "a run number was used up"
    # the same with --run-dir: it stays free, so the fixed command can reuse it
    assert main(["train", str(prep), "--folds", "0", "--run-dir", str(named), *_sets(*sets)]) == 2
    _one_error_line(capsys.readouterr().err, case.reason)
    assert not named.exists()
    assert main(["train", "--resume", str(named)]) == 2
    err = capsys.readouterr().err
    assert "a run directory written by `maskcls train`" in err and not re.search(case.reason, err), err
    assert snapshot(data) == before


def test_start_failing_after_the_directory_exists_removes_it(prepared_dir, tmp_path, monkeypatch):
    """The safety net under the checks above: a fold that fails before its first epoch leaves nothing."""
    import maskcls.engine.run as run_mod

    class Failing:
        def __init__(self, ctx, fold, callbacks=()):
            assert (ctx.run / "config.yaml").exists(), "the directory exists at this point"
            raise DataError("a failure inside the fold's set-up")
    monkeypatch.setattr(run_mod, "FoldTrainer", Failing)
    with pytest.raises(DataError, match="inside the fold"):
        train(prepared_dir, tmp_path / "r", tiny(train={"epochs": 1}))
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- images that vanish
@pytest.mark.parametrize("kind", ["processes", "threads"])
def test_vanished_image_is_one_line_from_workers_and_threads(kind, tmp_path):
    (case,) = cases(roles=("loader",))
    paths, gone = case.make(tmp_path)
    ds = ImageDataset(FileSource([str(p) for p in paths]), None,
                      create_transform(preset="fast", is_training=False, image_size=32))
    gone.unlink()   # after prepare / after the dataset object was built
    loader = build_loader(ds, batch_size=2, sampler=range(len(ds)), workers=2, kind=kind)
    with pytest.raises(DataError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert "\n" not in msg and str(gone) in msg and re.search(case.reason, msg), msg
    assert "re-run `maskcls prepare`" in msg and "--data" in msg


@pytest.mark.slow
def test_predict_and_train_after_images_vanish(synth_root, tmp_path, capsys):
    data = _copy(synth_root, tmp_path / "data")
    prep, run = tmp_path / "prep", tmp_path / "run"
    prepare(data, prep, folds=3, seed=1)
    train(prep, run, tiny(train={"epochs": 1}))
    reference = pd.read_csv(predict_submission(run, folds="0", num_workers=0)["submission"])
    before_run = snapshot(run)
    (moved_case,) = [c for c in cases(roles=("predict",)) if c.make is move_dataset]
    moved = moved_case.make(data)
    capsys.readouterr()
    # 1. the dataset moved: predict and train say so in one line, and create nothing
    assert main(["predict", str(run)]) == 2
    _one_error_line(capsys.readouterr().err, moved_case.reason + r".*--data")
    assert main(["train", str(prep), "--folds", "0", *_sets(f"run.runs_dir={tmp_path / 'runs'}")]) == 2
    _one_error_line(capsys.readouterr().err, moved_case.reason + r".*re-run `maskcls prepare")
    assert not (tmp_path / "runs").exists() and snapshot(run) == before_run
    # 2. --data NEW_PLACE (the raw folder) works, and gives the same answers
    before_data = snapshot(moved)
    assert main(["predict", str(run), "--data", str(moved), "--folds", "0"]) == 0
    again = pd.read_csv(run / "submission-2.csv")
    pd.testing.assert_frame_equal(reference, again)
    assert snapshot(moved) == before_data
    # 3. an eval image deleted after that prepare: one line naming it and --data
    (case,) = [c for c in cases(roles=("predict",)) if c.make is delete_eval_image]
    gone = case.make(moved)
    before_data = snapshot(moved)
    capsys.readouterr()
    assert main(["predict", str(run), "--data", str(run / "predict-data" / moved.name)]) == 2
    err = capsys.readouterr().err
    _one_error_line(err, case.reason)
    assert str(gone) in err
    assert snapshot(moved) == before_data
    files = {k: v for k, v in before_run.items() if v[0] != "dir"}
    assert {k: v for k, v in snapshot(run).items() if k in files} == files, "an existing run file changed"


# --------------------------------------------------------------------------- prediction of other sources
@pytest.mark.slow
def test_csv_eval_rows_are_predicted_in_manifest_order(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    csv, _ = csv_eval_rows_unlabelled(src)
    before = snapshot(src)
    meta = prepare(csv, tmp_path / "prep", folds=2, seed=0)
    assert meta["counts"]["eval_images"] == 4
    train(tmp_path / "prep", tmp_path / "run", tiny(train={"epochs": 1, "batch_size": 4, "valid_batch_size": 4}))
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run")]) == 0
    assert "submission:" in capsys.readouterr().out
    sub = pd.read_csv(tmp_path / "run" / "submission.csv", dtype=str, keep_default_na=False)
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["path", "ans", "class_name"]
    assert list(sub["path"]) == list(rows.loc[rows["split"] == "eval", "path"]), "manifest paths, manifest order"
    assert sub["ans"].astype(int).between(0, 1).all() and set(sub["class_name"]) <= {"0", "1"}
    probs = pd.read_csv(tmp_path / "run" / "submission.probs.csv")
    assert list(probs["path"]) == list(sub["path"]) and probs.shape[1] == 3
    assert snapshot(src) == before


@pytest.mark.slow
def test_predict_data_accepts_a_raw_source(comp, tmp_path):
    data, prep, run = comp
    before = snapshot(data)
    ref = predict_submission(run, data=prep, out=tmp_path / "ref.csv", num_workers=0)
    ref_sub = pd.read_csv(ref["submission"], dtype=str)
    # a competition folder never prepared: indexed into RUN/predict-data/, the same submission
    s = predict_submission(run, data=data, out=tmp_path / "raw.csv", num_workers=0)
    assert s["prepared_now"] and Path(s["prepared"]).parent == run / "predict-data"
    pd.testing.assert_frame_equal(ref_sub, pd.read_csv(s["submission"], dtype=str))
    assert load_prepared(s["prepared"]).meta["purpose"] == "predict"
    # a new competition-layout folder holding only eval/ (no train/)
    only_eval = tmp_path / "new-eval"
    shutil.copytree(data / "eval", only_eval / "eval")
    s = predict_submission(run, data=only_eval, out=tmp_path / "eval-only.csv", num_workers=0)
    pd.testing.assert_frame_equal(ref_sub, pd.read_csv(s["submission"], dtype=str))
    # a CSV of images (path column only, absolute paths): its rows, in its order
    csv = images_csv(data, tmp_path / "imgs.csv")
    s = predict_submission(run, data=csv, out=tmp_path / "csv.csv", num_workers=0)
    sub = pd.read_csv(s["submission"], dtype=str)
    listed = pd.read_csv(csv, dtype=str)
    assert list(sub["path"]) == list(listed["path"])
    by_id = dict(zip(ref_sub["ImageID"], ref_sub["ans"]))
    assert list(sub["ans"]) == [by_id[Path(p).name] for p in listed["path"]]
    # another task's CSV, and a --data that is nothing
    (case,) = [c for c in cases(roles=("predict",)) if c.make is gender_age_csv]
    with pytest.raises(DataError, match=case.reason):
        predict_submission(run, data=case.make(data, tmp_path / "ga.csv"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="not found; give a prepared directory"):
        predict_submission(run, data=tmp_path / "nothing", num_workers=0)
    assert snapshot(data) == before


@pytest.mark.slow
def test_predict_out_existing_directory(comp, tmp_path):
    _, prep, run = comp
    (case,) = [c for c in cases(roles=("predict",)) if c.name == "predict --out EXISTING_DIR"]
    out = Path(case.make(tmp_path)[1])
    out.mkdir()
    first = predict_submission(run, data=prep, out=out, num_workers=0)
    second = predict_submission(run, data=prep, out=str(out) + "/", num_workers=0)
    assert Path(first["submission"]) == out / "submission.csv"
    assert Path(second["submission"]) == out / "submission-2.csv"
    assert sorted(p.name for p in out.iterdir()) == ["submission-2.csv", "submission-2.probs.csv",
                                                     "submission.csv", "submission.probs.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["outdir"], "nothing written beside the directory"


# --------------------------------------------------------------------------- synth interrupted
def _spawn_synth(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    # restore SIGINT's default: a shell without job control starts children with it ignored
    return subprocess.Popen([sys.executable, "-m", "maskcls", *argv], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_synth_interrupted_leaves_no_partial_directory(sig, tmp_path):
    (case,) = cases(roles=("synth",))
    argv = case.make(tmp_path) + ["--people", "30", "--workers", "2"]
    out = Path(argv[1])
    proc = _spawn_synth(argv)
    t0 = time.time()
    while not list(tmp_path.glob(f".{out.name}.partial-*/train/images/*/*")):   # drawing has begun
        assert proc.poll() is None and time.time() - t0 < 60, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == [], "a partial (or final) folder was left behind"
    # one left by `kill -9` (its process is gone) is removed by the next synth
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".{out.name}.partial-{dead.pid}"
    (stale / "train").mkdir(parents=True)
    synthesize(out, people=2, image_size=(64, 64), workers=1)
    assert not stale.exists() and out.is_dir()


# --------------------------------------------------------------------------- third round (issue 26)
def test_plain_predict_output_escapes_control_characters_in_names(tmp_path, capsys, monkeypatch):
    """One line per image, four tab-separated fields, whatever the file names hold; --json keeps them exact."""
    import json

    import maskcls.infer.predict
    names = ["a\nb.jpg", "c\td.jpg", "e\\f.jpg", "g\x1bh.jpg"]
    paths = [str(tmp_path / n) for n in names]

    def fake(run, images, **kw):
        out = [{"path": p, "label": "wear / male / <30", "class_id": 0, "confidence": 0.5} for p in images[:-1]]
        return out + [{"path": images[-1], "error": f"cannot decode {images[-1]}"}]
    monkeypatch.setattr(maskcls.infer.predict, "predict_images", fake)
    assert main(["predict", str(tmp_path / "run"), *paths]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(len(line.split("\t")) == (4 if i < 3 else 2) for i, line in enumerate(lines))
    assert [line.split("\t")[0] for line in lines] == [str(tmp_path) + e for e in
                                                       ("/a\\nb.jpg", "/c\\td.jpg", "/e\\\\f.jpg", "/g\\x1bh.jpg")]
    assert lines[3].endswith("error: cannot decode " + str(tmp_path) + "/g\\x1bh.jpg")
    assert main(["predict", str(tmp_path / "run"), *paths, "--json"]) == 1
    assert [json.loads(line)["path"] for line in capsys.readouterr().out.splitlines()] == paths
