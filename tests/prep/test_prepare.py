"""prepare: layouts, folds, fixes, and every bad input named in the foundation issue."""
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskcls.errors import DataError
from maskcls.prep.prepare import prepare
from maskcls.prep.prepared import load_prepared


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_prepare_competition_layout(synth_root, tmp_path):
    before = tree_hash(synth_root)
    meta = prepare(synth_root, tmp_path / "p", folds=3, seed=5)
    assert tree_hash(synth_root) == before, "prepare wrote into the dataset"
    prep = load_prepared(tmp_path / "p")
    man = prep.manifest
    tr = prep.train_rows()
    assert len(tr) == 15 * 7 and len(prep.eval_rows()) == 6 * 7
    assert set(tr["fold"]) == {0, 1, 2}
    assert (prep.eval_rows()["fold"] == -1).all()
    # labels follow the folder names: class = mask*6 + gender*3 + age
    for r in tr.itertuples():
        gender = 1 if "_female_" in r.group else 0
        age = int(r.group.rsplit("_", 1)[1])
        stem = Path(r.path).name.rsplit(".", 1)[0]
        mask = 0 if stem.startswith("mask") else (1 if stem == "incorrect_mask" else 2)
        assert r.label == mask * 6 + gender * 3 + (0 if age < 30 else 1 if age < 60 else 2)
    assert not man["path"].str.contains("/\\._|DS_Store").any(), "junk files must be skipped"
    assert meta["counts"]["groups"] == 15
    info = pd.read_csv(synth_root / "eval" / "info.csv", dtype=str)
    assert list(prep.eval_rows()["image_id"]) == list(info["ImageID"])
    ids = pd.read_csv(synth_root / "train" / "train.csv", dtype=str)["id"]
    assert ids.str.match(r"^\d{6}").all()


def test_folds_group_disjoint_and_stratified(prepared_dir):
    from maskcls.prep.folds import assign_folds
    prep = load_prepared(prepared_dir)
    tr = prep.train_rows()
    assert (tr.groupby("group")["fold"].nunique() == 1).all(), "a person straddles folds"
    # stratification on a bigger synthetic table: each fold's class mix within a few points of the whole
    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(600), 7)
    pclass = rng.choice(6, 600, p=[.25, .2, .04, .25, .2, .06])
    mask = np.tile([0, 0, 0, 0, 0, 1, 2], 600)
    labels = mask * 6 + pclass[persons]
    fold, _ = assign_folds(persons, labels, k=5, seed=719)
    whole = np.bincount(labels, minlength=18) / len(labels)
    for f in range(5):
        part = np.bincount(labels[fold == f], minlength=18) / (fold == f).sum()
        assert np.abs(part - whole).max() < 0.03
        assert not set(persons[fold == f]) & set(persons[fold != f])
    again, _ = assign_folds(persons, labels, k=5, seed=719)
    assert (again == fold).all(), "folds must be deterministic for a seed"


def test_out_dir_must_be_new(synth_root, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        prepare(synth_root, tmp_path / "p")
    assert (tmp_path / "p" / "x").read_text() == "keep me"


def test_fixes_applied_and_recorded(dataset_copy, tmp_path):
    folder = sorted(p.name for p in (dataset_copy / "train" / "images").iterdir() if p.is_dir())[0]
    fixes = tmp_path / "fixes.csv"
    new_gender = "female" if "_male_" in folder else "male"
    fixes.write_text(f"folder,field,value\n{folder},gender,{new_gender}\n{folder},swap_incorrect_normal,\n")
    meta = prepare(dataset_copy, tmp_path / "p", folds=3, fixes=str(fixes))
    man = load_prepared(tmp_path / "p").manifest
    rows = man[man["group"] == folder]
    assert (rows["gender"] == (1 if new_gender == "female" else 0)).all()
    inc = rows[rows["path"].str.contains("incorrect_mask")]
    nor = rows[rows["path"].str.contains("/normal")]
    assert (inc["mask"] == 2).all() and (nor["mask"] == 1).all()
    assert (rows["fix"] != "").all() and len(meta["fixes"]) == 2


def _images(root):
    return root / "train" / "images"


def _a_person(root):
    return sorted(p for p in _images(root).iterdir() if p.is_dir())[0]


def _break_missing_csv(root):
    (root / "train" / "train.csv").unlink()


def _break_missing_images(root):
    import shutil
    shutil.rmtree(_images(root))


def _break_six_photos(root):
    next(_a_person(root).glob("mask3.*")).unlink()


def _break_unknown_stem(root):
    (_a_person(root) / "mask9.jpg").write_bytes(next(_a_person(root).glob("mask1.*")).read_bytes())


def _break_row_without_folder(root):
    import shutil
    shutil.rmtree(_a_person(root))


def _break_folder_without_row(root):
    import shutil
    src = _a_person(root)
    shutil.copytree(src, _images(root) / "999999_male_Asian_33")


def _break_age(root):
    df = pd.read_csv(root / "train" / "train.csv", dtype=str)
    df.loc[0, "age"] = "forty"
    df.to_csv(root / "train" / "train.csv", index=False)


def _break_gender(root):
    df = pd.read_csv(root / "train" / "train.csv", dtype=str)
    df.loc[0, "gender"] = "unknown"
    df.to_csv(root / "train" / "train.csv", index=False)


def _break_truncated(root):
    p = next(f for f in _a_person(root).iterdir() if f.suffix in (".jpg", ".jpeg"))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _break_text_as_image(root):
    p = next(_a_person(root).glob("normal.*"))
    p.write_text("this is not an image")


@pytest.mark.parametrize("breaker, fragment", [
    (_break_missing_csv, "train.csv"),
    (_break_missing_images, "train/images"),
    (_break_six_photos, "6 photos instead of 7"),
    (_break_unknown_stem, "unknown file stem 'mask9'"),
    (_break_row_without_folder, "folder is missing"),
    (_break_folder_without_row, "not listed in train/train.csv"),
    (_break_age, "not a whole number"),
    (_break_gender, "neither male nor female"),
    (_break_truncated, "cannot decode|truncated"),
    (_break_text_as_image, "not an image"),
])
def test_bad_inputs_stop_with_file_and_reason(dataset_copy, tmp_path, breaker, fragment):
    breaker(dataset_copy)
    with pytest.raises((DataError, FileNotFoundError), match=fragment):
        prepare(dataset_copy, tmp_path / "p", folds=3)
    assert not (tmp_path / "p" / "manifest.csv").exists()


@pytest.mark.parametrize("breaker", [_break_truncated, _break_text_as_image, _break_unknown_stem, _break_age])
def test_skip_bad_excludes_and_records(dataset_copy, tmp_path, breaker):
    breaker(dataset_copy)
    meta = prepare(dataset_copy, tmp_path / "p", folds=3, skip_bad=True)
    assert meta["excluded"], "excluded entries must be recorded"
    man = load_prepared(tmp_path / "p").manifest
    for e in meta["excluded"]:
        assert not man["path"].apply(lambda p: str(e["file"]).endswith(p)).any()


def test_duplicate_ids_are_keyed_by_folder(synth_root, tmp_path):
    df = pd.read_csv(synth_root / "train" / "train.csv", dtype=str)
    assert df["id"].duplicated().any(), "the synthetic set must contain a duplicated id"
    prepare(synth_root, tmp_path / "p", folds=3)
    man = load_prepared(tmp_path / "p").manifest
    assert man[man["split"] == "train"]["group"].nunique() == len(df)


def _csv_dataset(synth_root, tmp_path, rows_fn):
    man = load_prepared_from(synth_root, tmp_path)
    df = rows_fn(man)
    csv = tmp_path / "faces.csv"
    df.to_csv(csv, index=False)
    return csv


def load_prepared_from(synth_root, tmp_path):
    prepare(synth_root, tmp_path / "ref", folds=3)
    man = load_prepared(tmp_path / "ref").train_rows()
    return pd.DataFrame({"path": [str(synth_root / p) for p in man["path"]], "label": man["label"],
                         "group": man["group"], "mask": man["mask"], "gender": man["gender"],
                         "age_years": man["age_years"]})


def test_csv_manifest_label_column(synth_root, tmp_path):
    man = load_prepared_from(synth_root, tmp_path)
    # a CSV beside the images with relative paths, like the reference recipe's (path,label) input
    rel = man.assign(path=[os.path.relpath(p, synth_root) for p in man["path"]])[["path", "label", "group"]]
    csv = tmp_path / "mine.csv"
    (tmp_path / "imgs").symlink_to(synth_root)
    rel.assign(path="imgs/" + rel["path"]).to_csv(csv, index=False)
    meta = prepare(csv, tmp_path / "p", folds=3)
    prep = load_prepared(tmp_path / "p")
    assert meta["kind"] == "csv" and prep.num_classes == int(man["label"].max()) + 1
    assert (prep.train_rows().groupby("group")["fold"].nunique() == 1).all()


def test_csv_manifest_attribute_columns(synth_root, tmp_path):
    man = load_prepared_from(synth_root, tmp_path)
    names = {0: "wear", 1: "incorrect", 2: "not worn"}
    df = pd.DataFrame({"path": man["path"], "mask": man["mask"].map(names),
                       "gender": man["gender"].map({0: "male", 1: "female"}), "age": man["age_years"],
                       "group": man["group"]})
    csv = tmp_path / "attrs.csv"
    df.to_csv(csv, index=False)
    meta = prepare(csv, tmp_path / "p", folds=3, allow_absolute=True)
    prep = load_prepared(tmp_path / "p")
    assert meta["task"] == "mask_gender_age"
    assert (prep.train_rows()["label"].to_numpy() == man["label"].to_numpy()).all()


def test_csv_refuses_escaping_and_absolute_paths(tmp_path):
    csv = tmp_path / "d" / "m.csv"
    csv.parent.mkdir()
    csv.write_text("path,label\n../outside.jpg,0\n")
    with pytest.raises(DataError, match="escapes"):
        prepare(csv, tmp_path / "p")
    csv.write_text("path,label\n/etc/passwd,0\n")
    with pytest.raises(DataError, match="allow-absolute"):
        prepare(csv, tmp_path / "p")


def test_csv_label_out_of_range(tmp_path, synth_root):
    man = load_prepared_from(synth_root, tmp_path)
    csv = tmp_path / "m.csv"
    man.assign(label=man["label"].where(man.index != 3, -1))[["path", "label", "group"]].to_csv(csv, index=False)
    with pytest.raises(DataError, match="integer >= 0"):
        prepare(csv, tmp_path / "p", allow_absolute=True)
    man[["path", "label", "group"]].to_csv(csv, index=False)
    with pytest.raises(DataError, match="out of range"):
        prepare(csv, tmp_path / "p2", allow_absolute=True, num_classes=2)


def test_csv_without_group_warns(tmp_path, synth_root):
    man = load_prepared_from(synth_root, tmp_path)
    csv = tmp_path / "m.csv"
    man[["path", "label"]].to_csv(csv, index=False)
    meta = prepare(csv, tmp_path / "p", allow_absolute=True, folds=3)
    (warning,) = [w for w in meta["warnings"] if w.startswith("no 'group' column")]
    assert "every image is its own group" in warning and "may land" in warning
    rows = load_prepared(tmp_path / "p").train_rows()
    assert rows["group"].is_unique and len(rows) == len(man)  # what the warning says: one group per image


def test_stats_exact_pooled(prepared_dir):
    from maskcls.data.imageio import read_rgb
    from maskcls.prep.stats import compute_stats
    s = compute_stats(prepared_dir, workers=2)
    prep = load_prepared(prepared_dir)
    pix = np.concatenate([read_rgb(p).reshape(-1, 3) for p in prep.abs_paths(prep.train_rows())]).astype(np.float64)
    assert np.allclose(s["mean"], pix.mean(0) / 255, atol=1e-6)
    assert np.allclose(s["std"], pix.std(0) / 255, atol=1e-6)
    assert json.loads((prepared_dir / "stats.json").read_text())["std"] == s["std"]
    # the reference's mean of per-image stds is biased low
    per_image = [read_rgb(p).reshape(-1, 3).std(0) / 255 for p in prep.abs_paths(prep.train_rows())]
    assert (np.mean(per_image, 0) < np.array(s["std"])).all()


def test_channel_histograms_both_paths_count_exactly(monkeypatch):
    from maskcls.prep import stats
    img = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)[:, ::2]  # strided too
    expected = np.stack([np.bincount(img[..., c].ravel(), minlength=256) for c in range(3)])
    assert np.array_equal(stats.channel_histograms(img), expected)  # OpenCV's calcHist
    monkeypatch.setattr(stats, "_CALCHIST_MAX_PIXELS", 100)  # as for a > 16 MP image
    assert np.array_equal(stats.channel_histograms(img), expected)  # np.bincount


def test_prepared_version_mismatch(prepared_dir, tmp_path):
    import shutil
    d = tmp_path / "old"
    shutil.copytree(prepared_dir, d)
    meta = json.loads((d / "prepare.json").read_text())
    meta["format_version"] = 0
    (d / "prepare.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="incompatible"):
        load_prepared(d)


@pytest.mark.slow
def test_set_too_small_for_its_folds_is_one_warning_and_lr_find_runs(tmp_path, capsys):
    """One image per class and --folds 2 was scikit-learn's n_splits ValueError (and so no lr-find either): now the
    folds are made by person alone and one warning line names the classes with too few persons and the way out;
    with two persons per class and --folds 3 the line says --folds 2 would put every class in every fold."""
    from bad_inputs import csv_base, csv_one_image_per_class
    from helpers import TINY_SETS
    from maskcls.cli import main
    (tmp_path / "one").mkdir()
    csv, _ = csv_one_image_per_class(tmp_path / "one")
    assert main(["prepare", str(csv), "--out", str(tmp_path / "p"), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    (line,) = [w for w in out.splitlines() if "fewer groups" in w]
    assert line.startswith("warning: 12 of 12 classes have fewer groups (persons) than the 2 folds") and \
        "'0' (1), '1' (1), '2' (1) and 9 more" in line and "add groups (persons) to it" in line, line
    rows = load_prepared(tmp_path / "p").train_rows()
    assert sorted(rows["fold"].value_counts()) == [6, 6]  # still person-disjoint folds of even size
    sets = [a for s in TINY_SETS + ["train.batch_size=2", "train.accum_steps=1"] for a in ("--set", s)]
    assert main(["lr-find", str(tmp_path / "p"), "--steps", "3", "--out", str(tmp_path / "lr"), *sets]) == 0
    assert "use it: maskcls train" in capsys.readouterr().out
    (tmp_path / "two").mkdir()
    two = csv_base(tmp_path / "two").assign(label=[i // 4 for i in range(12)])  # 3 classes of 2 persons each
    two.to_csv(tmp_path / "two" / "m.csv", index=False)
    assert main(["prepare", str(tmp_path / "two" / "m.csv"), "--out", str(tmp_path / "p3"), "--folds", "3"]) == 0
    (line,) = [w for w in capsys.readouterr().out.splitlines() if "fewer groups" in w]
    assert "3 of 3 classes have fewer groups (persons) than the 3 folds" in line and \
        line.endswith("--folds 2 would put every class in every fold"), line


def test_a_raw_dataset_given_as_prepared_is_told_to_prepare_beside_itself(synth_root, tmp_path):
    """load_prepared (the library, not only the CLI) never suggests preparing into the raw dataset itself."""
    from maskcls.prep.prepared import load_prepared
    with pytest.raises(FileNotFoundError, match=rf"maskcls prepare {re.escape(str(synth_root))} --out "
                                                rf"{re.escape(str(synth_root))}-prepared"):
        load_prepared(synth_root)
    with pytest.raises(FileNotFoundError, match=r"maskcls prepare SOURCE --out"):
        load_prepared(tmp_path)
