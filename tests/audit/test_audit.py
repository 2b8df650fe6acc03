"""``maskcls audit`` and ``synth --label-noise``: known noise in, ranked findings and fixes out.

Out-of-fold predictions come from a stand-in model that knows the true labels (written with
the trainer's own ``write_oof``), so these tests check the audit's logic and files without
training; how a real model fares is measured in docs/audit.md.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskcls.audit.findings import FINDING_COLUMNS
from maskcls.audit.outputs import nearest_age
from maskcls.audit.pipeline import audit_run
from maskcls.cli import main
from maskcls.errors import CheckpointError, ConfigError, DataError
from maskcls.prep.competition import read_fixes
from maskcls.prep.prepare import prepare
from maskcls.prep.prepared import load_prepared
from maskcls.rundir.oof import write_oof
from maskcls.synth.dataset import synthesize
from maskcls.task import age_group

PEOPLE, SEED, RATE, FOLDS = 30, 5, 0.2, 3
SIZE = (64, 80)


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """A noisy synthetic set, the clean set of the same seed, the noisy prepared dir, and the truth."""
    root = tmp_path_factory.mktemp("audit")
    noisy, clean = root / "noisy", root / "clean"
    synthesize(noisy, people=PEOPLE, eval_people=3, seed=SEED, image_size=SIZE, workers=1, label_noise=RATE)
    synthesize(clean, people=PEOPLE, eval_people=3, seed=SEED, image_size=SIZE, workers=1)
    prepare(noisy, root / "prep", folds=FOLDS, seed=1)
    prepare(noisy, root / "truth", folds=FOLDS, seed=1, fixes=str(noisy / "train" / "noise.csv"))
    truth = load_prepared(root / "truth").manifest
    return {"root": root, "noisy": noisy, "clean": clean, "prep": root / "prep",
            "truth": dict(zip(truth["image_id"], truth["label"])),
            "noise": pd.read_csv(noisy / "train" / "noise.csv", dtype=str, keep_default_na=False)}


def fake_run(run: Path, prep_dir: Path, truth: dict, *, folds=range(FOLDS), sha: bool = True, seed: int = 0) -> Path:
    """A run directory whose out-of-fold probabilities favour the TRUE label of every image."""
    prep = load_prepared(prep_dir)
    run.mkdir(parents=True)
    info = {"prepared": str(prep.dir.resolve()), "folds": list(folds)}
    if sha:
        info["manifest_sha1"] = prep.meta["manifest_sha1"]
    (run / "run.json").write_text(json.dumps(info))
    rng = np.random.default_rng(seed)
    train = prep.train_rows()
    for f in folds:
        rows = train[train["fold"] == f]
        logits = rng.normal(0, 0.5, (len(rows), prep.num_classes))
        logits[np.arange(len(rows)), [truth[i] for i in rows["image_id"]]] += 6
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        (run / f"fold{f}").mkdir()
        write_oof(run / f"fold{f}" / "oof.csv", rows, prep.abs_paths(rows), probs)
    return run


def _sha(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, tuple]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size, _sha(p)) for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- synth --label-noise

def test_label_noise_injects_the_three_kinds_and_keeps_true_pictures(data):
    noise, noisy, clean = data["noise"], data["noisy"], data["clean"]
    assert list(noise.columns) == ["folder", "field", "value", "noisy_value"]
    assert len(noise) == round(RATE * PEOPLE) == 6
    assert noise["field"].value_counts().to_dict() == {"gender": 2, "age": 2, "swap_incorrect_normal": 2}
    assert noise["folder"].is_unique
    train_n = pd.read_csv(noisy / "train/train.csv", dtype=str)
    train_c = pd.read_csv(clean / "train/train.csv", dtype=str)
    changed = train_n["path"] != train_c["path"]  # gender and age errors rename the folder, swaps do not
    assert set(train_n.loc[changed, "path"]) == set(noise.loc[noise["field"] != "swap_incorrect_normal", "folder"])
    for r in noise.itertuples():
        row = train_n[train_n["path"] == r.folder].iloc[0]
        if r.field == "gender":
            assert row["gender"] == r.noisy_value != r.value
        elif r.field == "age":
            assert row["age"] == r.noisy_value and age_group(int(r.value)) != age_group(int(r.noisy_value))
    # The same pictures, bit for bit: only names differ (folders of flipped persons, swapped stems).
    def images(root):
        return {p.relative_to(root / "train/images"): _sha(p) for p in (root / "train/images").rglob("*")
                if p.is_file() and not p.name.startswith(".")}
    imgs_n, imgs_c = images(noisy), images(clean)
    assert sorted(imgs_n.values()) == sorted(imgs_c.values())
    by_folder = dict(zip(train_n["path"], train_c["path"]))
    for rel, digest in imgs_n.items():
        folder, name = rel.parts[0], rel.name
        stem, ext = name.rsplit(".", 1)
        swapped = folder in set(noise.loc[noise["field"] == "swap_incorrect_normal", "folder"])
        true_stem = {"normal": "incorrect_mask", "incorrect_mask": "normal"}.get(stem, stem) if swapped else stem
        assert imgs_c[Path(by_folder[folder]) / f"{true_stem}.{ext}"] == digest, rel


def test_noise_csv_is_a_fixes_file_that_restores_the_truth(data, tmp_path):
    """prepare --fixes noise.csv gives every image the label of the clean set's identical picture."""
    read_fixes(data["noisy"] / "train/noise.csv")
    prepare(data["clean"], tmp_path / "clean", folds=FOLDS, seed=1)
    clean = load_prepared(tmp_path / "clean").train_rows()
    label_of_picture = {_sha(data["clean"] / p): lab for p, lab in zip(clean["path"], clean["label"])}
    noisy = load_prepared(data["prep"]).train_rows()
    truth = np.array([data["truth"][i] for i in noisy["image_id"]])
    expected = np.array([label_of_picture[_sha(data["noisy"] / p)] for p in noisy["path"]])
    assert (truth == expected).all()
    assert (noisy["label"].to_numpy() != expected).sum() == 2 * 7 + 2 * 7 + 2 * 2  # gender, age: 7 photos; swap: 2


def test_label_noise_rate_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="label noise rate"):
        synthesize(tmp_path / "x", people=12, label_noise=0.9)
    with pytest.raises(SystemExit) as e:  # a flag's range is argparse's usage error
        main(["synth", str(tmp_path / "y"), "--people", "12", "--label-noise", "-0.1"])
    assert e.value.code == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------- findings and files

@pytest.fixture(scope="module")
def audited(data) -> dict:
    run = fake_run(data["root"] / "run-full", data["prep"], data["truth"])
    summary = audit_run(run, top=50, workers=1)
    return {"run": run, "summary": summary, "out": Path(summary["out_dir"]),
            "findings": pd.read_csv(Path(summary["out_dir"]) / "audit.csv", dtype={"group": str})}


def test_audit_finds_every_injected_person_with_the_right_kind_first(data, audited):
    f, noise = audited["findings"], data["noise"]
    assert list(f.columns) == FINDING_COLUMNS
    assert f["rank"].tolist() == list(range(1, len(f) + 1))
    assert f["score"].between(0, 1).all() and f["confident"].is_monotonic_decreasing
    for _, part in f.groupby("confident"):  # confident learning's flags first, each part by score
        assert (np.diff(part["score"]) <= 1e-9).all()
    kinds = {"gender": "person_gender", "age": "person_age", "swap_incorrect_normal": "swap_incorrect_normal"}
    expected = {(r.folder, kinds[r.field]) for r in noise.itertuples()}
    top = set(zip(f["group"].head(len(noise)), f["kind"].head(len(noise))))
    assert top == expected  # every injected error, as its own kind, ranks above everything else
    for r in f.itertuples():
        ev = json.loads(r.evidence)
        assert ev and r.images == len(r.files.split(";"))
        if r.kind == "swap_incorrect_normal":  # one finding for the pair, not two image findings
            assert sorted(Path(p).stem for p in r.files.split(";")) == ["incorrect_mask", "normal"]
            assert not ((f["kind"] == "image_mask") & f["files"].isin(r.files.split(";"))).any()
        if r.kind == "person_gender":
            assert set(ev["pooled"]) == {"male", "female"} and r.suggested == max(ev["pooled"], key=ev["pooled"].get)


def test_fixes_csv_round_trips_through_prepare_fixes(data, audited, tmp_path):
    fixes_path = audited["out"] / "fixes.csv"
    assert fixes_path.read_text().splitlines()[0] == "folder,field,value"
    fixes = read_fixes(fixes_path)
    assert len(fixes) == len(data["noise"])
    prepare(data["noisy"], tmp_path / "fixed", folds=FOLDS, seed=1, fixes=str(fixes_path))
    fixed = load_prepared(tmp_path / "fixed").train_rows()
    truth = np.array([data["truth"][i] for i in fixed["image_id"]])
    assert (fixed["label"].to_numpy() == truth).all()  # every injected error undone, nothing else touched


def test_age_suggestion_is_the_nearest_age_of_the_suggested_group():
    assert nearest_age(45, 0, 60) == 29 and nearest_age(25, 1, 60) == 30 and nearest_age(25, 2, 60) == 60
    assert nearest_age(60, 1, 59) == 58 and nearest_age(33, 1, 60) == 33


def test_audit_html_is_self_contained_and_shows_each_top_finding(audited):
    page = (audited["out"] / "audit.html").read_text()
    assert not re.search(r"https?://", page) and "<link" not in page and "@import" not in page
    assert "src=" not in page.split("<script>")[0]  # no file or URL is loaded: thumbnails are CSS data URIs
    thumbs = dict(re.findall(r"""\.(t\d+)\{background-image:url\("(data:image/jpeg;base64,[A-Za-z0-9+/=]+)"\)\}""",
                             page))
    used = re.findall(r"<i class='th (t\d+)'></i>", page)
    assert thumbs and set(used) == set(thumbs)  # every thumbnail shown is embedded, once
    cards = re.findall(r"<div class=finding data-kind='([^']+)' data-rank='(\d+)'", page)
    f = audited["findings"]
    assert [int(r) for _, r in cards] == f["rank"].head(50).tolist()
    n_person = int((f["kind"].head(50) != "image_mask").sum())
    assert len(used) >= 7 * n_person  # each person finding shows the person's 7 photos
    for group in f["group"].head(50):
        assert group in page
    assert "class=kf" in page and "id=sort" in page  # filter by kind, sort


def test_audit_json_and_cli(data, audited, capsys):
    s = json.loads((audited["out"] / "audit.json").read_text())
    assert s["partial"] is False and s["folds"] == [0, 1, 2] and s["images"] == PEOPLE * 7
    assert s["findings"] == len(audited["findings"]) and s["top"] == 50
    assert main(["audit", str(audited["run"]), "--top", "4", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{audited['run']}/audit-2" in out and "--fixes" in out
    assert len(read_fixes(audited["run"] / "audit-2" / "fixes.csv")) == 4
    with pytest.raises(SystemExit) as e:
        main(["audit", str(audited["run"]), "--top", "0"])
    assert e.value.code == 2 and "--top: 0 is out of range" in capsys.readouterr().err


def test_audit_writes_only_inside_its_output_directory(data, tmp_path):
    run = fake_run(tmp_path / "run", data["prep"], data["truth"])
    before = {**_snapshot(data["noisy"]), **_snapshot(data["prep"]), **_snapshot(run)}
    assert main(["audit", str(run), "--out", str(tmp_path / "out"), "--workers", "1"]) == 0
    after = {**_snapshot(data["noisy"]), **_snapshot(data["prep"]), **_snapshot(run)}
    assert after == before  # dataset, prepared directory and run untouched
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["audit.csv", "audit.html", "audit.json",
                                                                     "fixes.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
    assert main(["audit", str(run), "--out", str(tmp_path / "out")]) == 2  # never over an earlier audit
    for inside in (data["prep"] / "audit", data["noisy"] / "train" / "audit"):
        with pytest.raises(DataError, match="which an audit only reads"):
            audit_run(run, out=inside)
        assert not inside.exists()


# ----------------------------------------------------------------------------- bad input

def test_missing_folds_are_named_and_partial_audits_the_rest(data, tmp_path, capsys):
    run = fake_run(tmp_path / "run", data["prep"], data["truth"], folds=(0, 2))
    with pytest.raises(CheckpointError, match=r"fold\(s\) \[0, 2\] only: fold\(s\) \[1\]"):
        audit_run(run)
    assert main(["audit", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error:") and "--partial" in err and len(err.strip().splitlines()) == 1
    assert not (run / "audit").exists()
    s = audit_run(run, partial=True, workers=1)
    assert s["partial"] is True and s["missing_folds"] == [1] and s["folds"] == [0, 2]
    prep = load_prepared(data["prep"]).train_rows()
    assert s["images"] == int(prep["fold"].isin([0, 2]).sum())
    assert any("partial audit" in n for n in s["notes"])
    assert "partial audit" in (Path(s["out_dir"]) / "audit.html").read_text()
    empty = tmp_path / "empty"
    (empty).mkdir()
    (empty / "run.json").write_text(json.dumps({"prepared": str(data["prep"]), "folds": [0]}))
    with pytest.raises(CheckpointError, match="no out-of-fold predictions yet"):
        audit_run(empty, partial=True)


def test_moved_prepared_directory_is_an_error_until_named(data, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(data["prep"], prep)
    run = fake_run(tmp_path / "run", prep, data["truth"])
    moved = tmp_path / "prep-moved"
    prep.rename(moved)
    with pytest.raises(CheckpointError, match="is gone .*--data"):
        audit_run(run)
    assert audit_run(run, prepared=moved, workers=1)["findings"] > 0


def test_changed_prepared_directory_is_an_error(data, tmp_path):
    prep = tmp_path / "prep"
    shutil.copytree(data["prep"], prep)
    run = fake_run(tmp_path / "run", prep, data["truth"])
    # Prepared again (here: with fixes) at the same place: the manifest checksum differs.
    shutil.rmtree(prep)
    prepare(data["noisy"], prep, folds=FOLDS, seed=1, fixes=str(data["noisy"] / "train/noise.csv"))
    with pytest.raises(CheckpointError, match="changed since .* checksum"):
        audit_run(run)
    # A hand-edited manifest (prepare.json untouched) is caught by the out-of-fold rows themselves.
    run2 = fake_run(tmp_path / "run2", prep, data["truth"])
    man = pd.read_csv(prep / "manifest.csv", dtype=str, keep_default_na=False)
    i = int(np.flatnonzero(man["split"] == "train")[0])
    man.loc[i, "label"] = str((int(man.loc[i, "label"]) + 1) % 18)
    man.to_csv(prep / "manifest.csv", index=False)
    with pytest.raises(CheckpointError, match="changed since .*label of 1 image"):
        audit_run(run2)
    # An old run without a recorded checksum is checked against its out-of-fold rows, and says so.
    run3 = fake_run(tmp_path / "run3", data["prep"], data["truth"], sha=False)
    assert any("no manifest checksum" in n for n in audit_run(run3, workers=1)["notes"])


# ----------------------------------------------------------------------------- CSV manifests

def _csv_from_synth(noisy: Path, prep_dir: Path, dest: Path, *, attributes: bool) -> Path:
    """A CSV manifest over the noisy synthetic photos: mask/gender/age + group, or a flat label."""
    m = load_prepared(prep_dir).train_rows()
    df = pd.DataFrame({"path": [str(noisy / p) for p in m["path"]], "group": m["group"]})
    if attributes:
        df["mask"] = m["mask"].map({0: "wear", 1: "incorrect", 2: "not worn"})
        df["gender"] = m["gender"].map({0: "male", 1: "female"})
        df["age"] = m["age_years"]
    else:
        df["label"] = m["label"]
    dest.mkdir()
    df.to_csv(dest / "faces.csv", index=False)
    return dest / "faces.csv"


def test_csv_manifest_gets_a_corrected_csv_that_prepare_reads(data, tmp_path, capsys):
    csv = _csv_from_synth(data["noisy"], data["prep"], tmp_path / "csv", attributes=True)
    before = csv.read_bytes()
    prepare(csv, tmp_path / "prep", folds=FOLDS, seed=1, allow_absolute=True)
    man = load_prepared(tmp_path / "prep").train_rows()
    noisy_m = load_prepared(data["prep"]).train_rows()
    truth = {str(data["noisy"] / p): data["truth"][i] for p, i in zip(noisy_m["path"], noisy_m["image_id"])}
    run = fake_run(tmp_path / "run", tmp_path / "prep", {i: truth[i] for i in man["image_id"]})
    assert main(["audit", str(run), "--top", "6", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "corrected.csv" in out and "--allow-absolute" in out and not (run / "audit" / "fixes.csv").exists()
    corrected = pd.read_csv(run / "audit" / "corrected.csv", dtype=str, keep_default_na=False)
    assert list(corrected.columns) == ["path", "group", "mask", "gender", "age", "audit_fix"]
    assert (corrected["audit_fix"] != "").sum() == 2 * 7 + 2 * 7 + 2 * 2
    prepare(run / "audit" / "corrected.csv", tmp_path / "fixed", folds=FOLDS, seed=1, allow_absolute=True)
    fixed = load_prepared(tmp_path / "fixed").train_rows()
    assert (fixed["label"].to_numpy() == np.array([truth[p] for p in fixed["path"]])).all()
    assert csv.read_bytes() == before  # the user's CSV is left as it was


def test_flat_csv_task_audits_single_images(data, tmp_path):
    csv = _csv_from_synth(data["noisy"], data["prep"], tmp_path / "csv", attributes=False)
    src = pd.read_csv(csv)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(src), 8, replace=False)
    truth = dict(zip(src["path"], src["label"]))
    src.loc[flipped, "label"] = (src.loc[flipped, "label"] + 1 + rng.integers(0, 17, 8)) % 18
    src.to_csv(csv, index=False)
    before = csv.read_bytes()
    prepare(csv, tmp_path / "prep", folds=FOLDS, seed=1, allow_absolute=True, num_classes=18)
    run = fake_run(tmp_path / "run", tmp_path / "prep", truth)
    s = audit_run(run, top=8, workers=1)
    f = pd.read_csv(Path(s["out_dir"]) / "audit.csv")
    assert set(f["kind"]) == {"image_label"}
    assert set(f["files"].head(8)) == set(src.loc[flipped, "path"])
    corrected = pd.read_csv(Path(s["out_dir"]) / "corrected.csv")
    assert (corrected["label"].to_numpy() == np.array([truth[p] for p in corrected["path"]])).all()
    assert csv.read_bytes() == before


# ----------------------------------------------------------------------------- broken run files (issue 26)

def _runfile_cases():
    from bad_inputs import cases, no_file
    return [c for c in cases(roles=("runfile",)) if c.make is not no_file]


@pytest.mark.parametrize("case", _runfile_cases(), ids=lambda c: c.name)
def test_broken_run_file_is_one_line_naming_it(case, data, tmp_path, capsys):
    """Each file is checked for its own shape before it is compared with anything: one line naming the file
    and what is wrong with it, exit 2, nothing written."""
    run = fake_run(tmp_path / "run", data["prep"], data["truth"])
    damaged = run / case.make(run)
    before = _snapshot(run)
    assert main(["audit", str(run), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskcls: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(damaged) in err and re.search(case.reason, err), err
    assert _snapshot(run) == before and not (run / "audit").exists()


def test_all_zero_probability_row_is_refused_everywhere(data, tmp_path):
    """Every reader of out-of-fold rows (audit, summaries, the ensemble's weights) reads them through read_oof."""
    from bad_inputs import oof_all_zero_row
    from maskcls.rundir.oof import read_oof
    run = fake_run(tmp_path / "run", data["prep"], data["truth"])
    assert read_oof(run, range(FOLDS), num_classes=18)["fold"].nunique() == FOLDS  # intact: read
    oof_all_zero_row(run)
    for call in (lambda: read_oof(run, range(FOLDS)), lambda: audit_run(run, workers=1)):
        with pytest.raises(CheckpointError, match=r"fold0/oof\.csv: the probabilities of a row must sum to 1, not 0"):
            call()


def test_csv_source_that_lost_rows_is_refused_before_writing(data, tmp_path, capsys):
    csv = _csv_from_synth(data["noisy"], data["prep"], tmp_path / "csv", attributes=True)
    prepare(csv, tmp_path / "prep", folds=FOLDS, seed=1, allow_absolute=True)
    man = load_prepared(tmp_path / "prep").train_rows()
    noisy_m = load_prepared(data["prep"]).train_rows()
    truth = {str(data["noisy"] / p): data["truth"][i] for p, i in zip(noisy_m["path"], noisy_m["image_id"])}
    run = fake_run(tmp_path / "run", tmp_path / "prep", {i: truth[i] for i in man["image_id"]})
    src = pd.read_csv(csv, dtype=str, keep_default_na=False)
    src.drop(index=[0, 5, 9]).to_csv(csv, index=False)  # the user's CSV lost three rows after prepare
    assert main(["audit", str(run), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"the source CSV {csv} lost 3 of the prepared images" in err and src["path"][0] in err
    assert len(err.strip().splitlines()) == 1 and not (run / "audit").exists()
