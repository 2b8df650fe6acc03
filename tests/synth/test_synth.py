"""The synthetic dataset has the competition's exact layout and quirks, and is reproducible."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, UnidentifiedImageError

from maskcls.synth.dataset import synthesize

STEMS = {"mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"}
SIZE = (64, 80)
PEOPLE = 12


def _is_junk(p: Path) -> bool:
    return p.name.startswith(".")


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synthesize(out, people=PEOPLE, seed=3, image_size=SIZE, workers=2)
    return out, summary


def test_layout_and_csv_columns(ds):
    out, summary = ds
    assert sorted(p.name for p in out.iterdir()) == ["eval", "train"]
    train = pd.read_csv(out / "train/train.csv", dtype=str)
    assert list(train.columns) == ["id", "gender", "race", "age", "path"]
    assert list(pd.read_csv(out / "eval/info.csv", dtype=str).columns) == ["ImageID", "ans"]
    assert list(pd.read_csv(out / "eval/truth.csv", dtype=str).columns) == ["ImageID", "ans"]
    assert len(train) == PEOPLE == summary["train_people"]
    assert set(train.gender) <= {"male", "female"}
    assert train.age.astype(int).between(18, 60).all()
    folders = sorted(p.name for p in (out / "train/images").iterdir() if not _is_junk(p))
    assert folders == sorted(train.path)                      # one folder per row, no extras
    for row in train.itertuples():
        assert row.path == f"{row.id}_{row.gender}_{row.race}_{row.age}"


def test_every_person_has_the_seven_photos(ds):
    out, summary = ds
    images = 0
    for folder in (out / "train/images").iterdir():
        if _is_junk(folder):
            continue
        photos = [p for p in folder.iterdir() if not _is_junk(p)]
        assert sorted(p.stem for p in photos) == sorted(STEMS)
        for p in photos:
            with Image.open(p) as im:
                assert (im.size, im.mode) == (SIZE, "RGB")
        images += len(photos)
    assert images == summary["train_images"] == PEOPLE * 7


def test_extensions_are_mixed_even_inside_a_folder(ds):
    out, _ = ds
    folders = [f for f in (out / "train/images").iterdir() if f.is_dir()]
    suffixes = [{p.suffix for p in f.iterdir() if not _is_junk(p)} for f in folders]
    assert set().union(*suffixes) == {".jpg", ".png", ".jpeg"}
    assert any(len(s) > 1 for s in suffixes)
    # The suffix tells the true format (readers may rely on PIL sniffing, not on names).
    for f in folders:
        for p in f.iterdir():
            if not _is_junk(p):
                with Image.open(p) as im:
                    assert im.format == ("PNG" if p.suffix == ".png" else "JPEG")


def test_junk_files_are_present_and_not_images(ds):
    out, _ = ds
    assert (out / "train/images/.DS_Store").is_file()
    apple = list((out / "train/images").glob("*/._mask1.*"))
    assert apple, "expected at least one macOS '._mask1.*' file"
    for p in apple:
        with pytest.raises(UnidentifiedImageError):
            Image.open(p)


def test_ids_are_zero_padded_strings_with_the_real_quirks(ds):
    out, _ = ds
    train = pd.read_csv(out / "train/train.csv", dtype=str)
    assert all(re.fullmatch(r"\d{6}(-1)?", i) for i in train.id)
    assert train.id.str.startswith("0").all()                 # leading zeros kept in the file
    assert train.id.str.endswith("-1").sum() == 1             # like 001498-1
    counts = train.id.value_counts()
    shared = counts[counts == 2].index
    assert len(shared) == 1 and counts.max() == 2             # like 003397: one id, two people
    assert train[train.id == shared[0]].path.nunique() == 2   # ...in two different folders


def test_eval_info_and_truth_align(ds):
    out, summary = ds
    info = pd.read_csv(out / "eval/info.csv", dtype={"ImageID": str})
    truth = pd.read_csv(out / "eval/truth.csv", dtype={"ImageID": str})
    assert summary["eval_people"] == round(PEOPLE * 2 / 3)
    assert len(info) == len(truth) == summary["eval_images"] == summary["eval_people"] * 7
    assert list(info.ImageID) == list(truth.ImageID)
    assert (info.ans == 0).all()
    assert truth.ans.between(0, 17).all()
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", i) for i in info.ImageID)
    assert sorted(p.name for p in (out / "eval/images").iterdir()) == sorted(info.ImageID)
    mask = truth.ans // 6                                     # 5 wear : 1 incorrect : 1 normal
    assert mask.value_counts().to_dict() == {0: 5 * summary["eval_people"],
                                              1: summary["eval_people"], 2: summary["eval_people"]}
    # Rows are shuffled, not grouped by person (7 consecutive rows of one mask pattern).
    assert list(mask) != sorted(mask)


def test_same_seed_same_bytes_regardless_of_workers(tmp_path):
    a = synthesize(tmp_path / "a", people=4, seed=11, image_size=SIZE, workers=1)
    b = synthesize(tmp_path / "b", people=4, seed=11, image_size=SIZE, workers=2)
    c = synthesize(tmp_path / "c", people=4, seed=12, image_size=SIZE, workers=1)
    ta, tb, tc = (_tree_bytes(Path(s["out_dir"])) for s in (a, b, c))
    assert ta == tb
    assert ta.keys() != tc.keys()                             # other ids, other eval names
    photos = lambda t: sorted(v for k, v in t.items() if k.startswith("train/images/") and "/." not in k)
    assert set(photos(ta)).isdisjoint(photos(tc))             # every picture differs


def test_refuses_a_non_empty_folder_but_accepts_an_empty_one(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="delete"):
        synthesize(out, people=1, eval_people=0, image_size=SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"
    empty = tmp_path / "empty"
    empty.mkdir()
    synthesize(empty, people=1, eval_people=0, image_size=SIZE)
    assert (empty / "train/train.csv").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]   # no build leftovers


@pytest.mark.parametrize("kwargs, word", [
    ({"people": 0}, "people"), ({"eval_people": -1}, "eval_people"),
    ({"image_size": (10, 10)}, "image_size"), ({"workers": 0}, "workers"), ({"seed": -1}, "seed"),
])
def test_bad_arguments_name_the_argument(tmp_path, kwargs, word):
    with pytest.raises(ValueError, match=word):
        synthesize(tmp_path / "x", **{"people": 1, **kwargs})
    assert not (tmp_path / "x").exists()


def test_default_image_size_is_the_competitions(tmp_path):
    s = synthesize(tmp_path / "d", people=1, eval_people=0, workers=1)
    assert s["image_size"] == (384, 512)
    photo = next(p for p in (tmp_path / "d/train/images").glob("*/*") if not _is_junk(p))
    with Image.open(photo) as im:
        assert im.size == (384, 512)
