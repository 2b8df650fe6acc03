"""The bad-input corpus: every awkward file or manifest maskcls must survive, made on the fly.

Nothing here is committed as a binary: each case is a small function that writes its file
(or CSV) into a temporary folder. ``CASES`` is the table the tests iterate over and that
``scripts/gen_reliability_doc.py`` renders into ``docs/reliability.md``; ``GUARANTEES`` is
the second table (interruption, reproducibility, data safety, security).

Expected behaviour of a case:

* ``handled``  — decoded to the right 8-bit RGB pixels (the test compares them with the
  pixels the case says it holds), trained on and predicted without error;
* ``reported`` — ``prepare`` stops and names the file and the reason; with ``--skip-bad``
  the file is excluded and recorded in ``prepare.json``; ``predict RUN FILE`` gives it an
  ``error`` entry;
* ``refused``  — the manifest itself is wrong: ``prepare`` stops naming the CSV line and
  the reason, with or without ``--skip-bad`` (skipping would silently change the dataset).
"""
from __future__ import annotations

import hashlib
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image

# Photos of the synthetic set are 96 x 128 (w x h); the corpus uses the same size.
W, H = 96, 128


@dataclass(frozen=True)
class Case:
    name: str
    made: str                  # how the test makes it (rendered in docs/reliability.md)
    expect: str                # "handled" | "reported" | "refused"
    behaviour: str             # what maskcls does with it
    role: str                  # "photo" (a person's photo slot), "eval" (own file name), "folder", "csv"
    make: Callable = field(repr=False, compare=False)
    reason: str = ""           # regex the report / error must contain (reported, refused)
    tol: float = 0.0           # handled images: allowed mean |decoded - expected| (JPEG is lossy)
    tests: tuple[str, ...] = ()


def snapshot(root: Path) -> dict[str, tuple]:
    """sha256, mtime and size of every file under ``root`` (and the folders): "nothing changed" checks."""
    snap = {}
    for p in sorted([root, *root.rglob("*")]):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        snap[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_size if p.is_file() else 0)
    return snap


def file_snapshot(folder: Path) -> dict[str, tuple]:
    """:func:`snapshot` of the files only (a folder's own mtime changes with any temporary file in it)."""
    return {k: v for k, v in snapshot(folder).items() if v[0] != "dir"}


# --------------------------------------------------------------------------- pixels
def pattern(h: int = H, w: int = W) -> np.ndarray:
    """An asymmetric picture: red left half, blue right half, green top quarter.

    Any flip, rotation or channel swap changes it by far more than JPEG noise.
    """
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (220, 40, 30)
    a[:, w // 2:] = (30, 50, 210)
    a[: h // 4] = (40, 200, 60)
    return a


def _jpeg(path: Path, arr_or_img, **kw) -> Path:
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, format="JPEG", quality=95, **kw)
    return path


# --------------------------------------------------------------------------- handled images
def make_rgba_png(d: Path, stem: str):
    rgba = np.dstack([pattern(), np.full((H, W), 255, np.uint8)])
    rgba[H // 2:, :, 3] = 0                          # bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(d / f"{stem}.png")
    exp = pattern()
    exp[H // 2:] = 255                               # composited on white
    return d / f"{stem}.png", exp


def make_grey_jpeg(d: Path, stem: str):
    g = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    return _jpeg(d / f"{stem}.jpg", Image.fromarray(g, "L")), np.dstack([g] * 3)


def make_cmyk_jpeg(d: Path, stem: str):
    a = pattern()
    return _jpeg(d / f"{stem}.jpg", Image.fromarray(a).convert("CMYK")), a


def make_png16(d: Path, stem: str):
    v = np.tile(np.linspace(0, 65535, W).astype(np.uint16), (H, 1))
    Image.fromarray(v).save(d / f"{stem}.png")       # mode I;16, 16 bits per sample
    g = np.round(v / 65535 * 255).astype(np.uint8)
    return d / f"{stem}.png", np.dstack([g] * 3)


def make_png16_dark(d: Path, stem: str):
    v = np.tile(np.linspace(0, 200, W).astype(np.uint16), (H, 1))   # a nearly black 16-bit photo
    Image.fromarray(v).save(d / f"{stem}.png")
    g = np.round(v / 65535 * 255).astype(np.uint8)
    return d / f"{stem}.png", np.dstack([g] * 3)


def make_exif_rotated(d: Path, stem: str):
    """Stored landscape (128 x 96) with EXIF orientation 6: viewers rotate it 90° clockwise."""
    stored = pattern(W, H)                           # h=96, w=128
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _jpeg(d / f"{stem}.jpg", stored, exif=exif.tobytes())
    return path, np.ascontiguousarray(np.rot90(stored, k=-1))      # upright: 128 tall, 96 wide


def make_palette_png(d: Path, stem: str):
    a = pattern()
    img = Image.fromarray(a).quantize(colors=8)
    img.save(d / f"{stem}.png")
    return d / f"{stem}.png", np.asarray(img.convert("RGB"))


def make_name_spaces(d: Path, stem: str | None = None):
    return _jpeg(d / "my photo (1) final.jpg", pattern()), pattern()


def make_name_unicode(d: Path, stem: str | None = None):
    return _jpeg(d / "фото_写真_é ñ.jpg", pattern()), pattern()


def rename_folder_unicode(images: Path, train_csv: Path) -> Path:
    """Rename the first person's folder to one with spaces and non-ASCII letters in its id part (the
    gender and age fields stay, and agree with train.csv), and fix train.csv."""
    df = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    old = df.loc[0, "path"]
    pid, rest = old.split("_", 1)
    new = f"{pid} é 写真 x_{rest}"
    (images / old).rename(images / new)
    df.loc[0, "path"] = new
    df.to_csv(train_csv, index=False)
    return images / new


# --------------------------------------------------------------------------- reported images
def make_truncated_jpeg(d: Path, stem: str):
    p = _jpeg(d / f"{stem}.jpg", np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p, None


def make_zero_byte(d: Path, stem: str):
    (d / f"{stem}.jpg").write_bytes(b"")
    return d / f"{stem}.jpg", None


def make_text_as_jpg(d: Path, stem: str):
    (d / f"{stem}.jpg").write_text("this is a text file, not a photo\n")
    return d / f"{stem}.jpg", None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_bomb_header(d: Path, stem: str):
    """A 100-byte PNG whose header claims 30000 x 30000 pixels (900 MP)."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))
    (d / f"{stem}.png").write_bytes(data)
    return d / f"{stem}.png", None


def make_oversized(d: Path, stem: str):
    """A real 8000 x 7000 (56 MP) greyscale PNG: 55 kB on disk, 168 MB as RGB in memory."""
    Image.fromarray(np.zeros((7000, 8000), np.uint8)).save(d / f"{stem}.png", compress_level=1)
    return d / f"{stem}.png", None


# --------------------------------------------------------------------------- CSV manifests
N_CSV = 12


def csv_base(root: Path) -> pd.DataFrame:
    """root/imgs/img_00.jpg … with a path,label,group table (2 classes, 6 persons)."""
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(N_CSV):
        p = root / "imgs" / f"img_{i:02d}.jpg"
        if not p.exists():
            _jpeg(p, np.full((32, 32, 3), 20 * i, np.uint8))
        rows.append({"path": f"imgs/img_{i:02d}.jpg", "label": i % 2, "group": f"p{i // 2}"})
    return pd.DataFrame(rows)


def _write(root: Path, df: pd.DataFrame, name: str = "m.csv") -> Path:
    df.to_csv(root / name, index=False)
    return root / name


def csv_duplicated_rows(root: Path):
    df = csv_base(root)
    return _write(root, pd.concat([df, df.iloc[:3]], ignore_index=True)), {}


def csv_conflicting_duplicate(root: Path):
    df = csv_base(root)
    dup = df.iloc[[0]].assign(label=1 - df.loc[0, "label"])
    return _write(root, pd.concat([df, dup], ignore_index=True)), {}


def csv_missing_path(root: Path):
    return _write(root, csv_base(root).drop(columns="path").rename(columns={"group": "file"})), {}


def csv_missing_label(root: Path):
    return _write(root, csv_base(root).drop(columns="label")), {}


def csv_extra_columns(root: Path):
    return _write(root, csv_base(root).assign(notes="taken outdoors", camera="phone", fold=7)), {}


def csv_label_out_of_range(root: Path):
    df = csv_base(root)
    df.loc[4, "label"] = 5
    return _write(root, df), {"num_classes": 2}


def csv_label_not_integer(root: Path):
    df = csv_base(root).astype({"label": str})
    df.loc[4, "label"] = "cat"
    return _write(root, df), {}


def csv_path_dotdot(root: Path):
    df = csv_base(root)
    outside = root.parent / f"{root.name}-outside.jpg"
    _jpeg(outside, pattern())                        # it exists: only confinement refuses it
    df.loc[4, "path"] = f"imgs/../../{outside.name}"
    return _write(root, df), {}


def csv_path_absolute(root: Path):
    df = csv_base(root)
    df.loc[4, "path"] = str((root / "imgs" / "img_04.jpg").resolve())
    return _write(root, df), {}


def csv_path_absolute_allowed(root: Path):
    df = csv_base(root)
    df.loc[4, "path"] = str((root / "imgs" / "img_04.jpg").resolve())
    return _write(root, df), {"allow_absolute": True}


def csv_missing_file(root: Path):
    df = csv_base(root)
    df.loc[4, "path"] = "imgs/not_there.jpg"
    return _write(root, df), {}


def _csv_ages(root: Path, ages: list[str]) -> pd.DataFrame:
    """The base images as a gender x age task (columns gender, age) with the given age cells."""
    df = csv_base(root).drop(columns="label")
    df["gender"] = ["female" if i % 4 < 2 else "male" for i in range(N_CSV)]
    df["age"] = ages
    return df


def csv_blank_groups(root: Path):
    df = csv_base(root)
    df.loc[[1, 6], "group"] = ""                     # lines 3 and 8
    return _write(root, df), {}


def csv_nan_groups(root: Path):
    df = csv_base(root)
    df.loc[[1, 6], "group"] = "NaN"                  # what df.astype(str) writes for a missing value
    return _write(root, df), {}


def csv_blank_groups_as_rows(root: Path):
    csv, _ = csv_blank_groups(root)
    return csv, {"group_missing": "row"}


def csv_float_ages(root: Path):
    ages = ["22.0", "22.0", "45.0", "45.0", "61.0", "61.0"] * 2
    return _write(root, _csv_ages(root, ages)), {}


def csv_eval_rows_unlabelled(root: Path):
    df = csv_base(root)
    extra = pd.DataFrame({"path": [f"imgs/img_{i:02d}.jpg" for i in range(N_CSV, N_CSV + 4)], "label": "",
                          "group": ""})
    for i in range(N_CSV, N_CSV + 4):
        _jpeg(root / "imgs" / f"img_{i:02d}.jpg", np.full((32, 32, 3), 10 * i, np.uint8))
    df = pd.concat([df.assign(split="train"), extra.assign(split="eval")], ignore_index=True)
    return _write(root, df), {}


def csv_old_age_outside(root: Path):
    ages = ["22", "23", "45", "46", "61", "62"] * 2
    return _write(root, _csv_ages(root, ages)), {"old_age": 200}


# --------------------------------------------------------------------------- competition layout
def _first_person(root: Path) -> tuple[pd.DataFrame, str]:
    df = pd.read_csv(root / "train" / "train.csv", dtype=str, keep_default_na=False)
    return df, df.loc[0, "path"]


def _rename_first(root: Path, new: str) -> tuple[str, str]:
    """Rename the first person's folder (train.csv follows the new name, its gender/age stay)."""
    df, old = _first_person(root)
    (root / "train" / "images" / old).rename(root / "train" / "images" / new)
    df.loc[0, "path"] = new
    df.to_csv(root / "train" / "train.csv", index=False)
    return old, new


def _edit_first_age(root: Path, value: str) -> str:
    df, folder = _first_person(root)
    df.loc[0, "age"] = value
    df.to_csv(root / "train" / "train.csv", index=False)
    return folder


def comp_age_float(root: Path):
    folder = _first_person(root)[1]
    age = folder.rsplit("_", 1)[1]
    _edit_first_age(root, f"{age}.0")                # e.g. 23.0, agreeing with the folder name

    def check(meta, man):
        assert (man.loc[man["group"] == folder, "age_years"] == int(age)).all()
    return {}, check


def comp_age_fraction(root: Path):
    _edit_first_age(root, "40.5")
    return {}, None


def comp_folder_gender_other(root: Path):
    pid = _first_person(root)[1].split("_", 1)[0]
    _rename_first(root, f"{pid}_other_Asian_26")
    return {}, None


def comp_folder_age_abc(root: Path):
    _rename_first(root, _first_person(root)[1].rsplit("_", 1)[0] + "_abc")
    return {}, None


def _swap_name_fields(root: Path) -> tuple[str, int, int]:
    """Rename the first folder to the other gender and age 26; return (folder, csv gender, csv age)."""
    pid, gender, race, age = _first_person(root)[1].rsplit("_", 3)
    other = "male" if gender == "female" else "female"
    new = f"{pid}_{other}_{race}_26"
    _rename_first(root, new)
    return new, int(gender == "female"), int(age)


def comp_trust_csv(root: Path):
    folder, gender, age = _swap_name_fields(root)

    def check(meta, man):
        rows = man[man["group"] == folder]
        assert (rows["gender"] == gender).all() and (rows["age_years"] == age).all()
        assert [c["folder"] for c in meta["name_conflicts"]] == [folder] and meta["trust"] == "csv"
        assert meta["name_conflicts"][0]["used"] == "csv" and meta["warnings"]
    return {"trust": "csv"}, check


def comp_trust_folder(root: Path):
    folder, gender, _ = _swap_name_fields(root)

    def check(meta, man):
        rows = man[man["group"] == folder]
        assert (rows["gender"] == 1 - gender).all() and (rows["age_years"] == 26).all()
        assert meta["name_conflicts"][0]["used"] == "folder"
    return {"trust": "folder"}, check


def comp_old_age(value: int):
    def make(root: Path):
        def check(meta, man):
            assert meta["old_age"] == value and meta["age_range"][1] == 60
            assert any(n.endswith(f">={value}") for n in meta["class_names"])
            tr = man[man["split"] == "train"]
            assert ((tr["age"] == 2) == (tr["age_years"] >= value)).all()
        return {"old_age": value}, check
    make.__name__ = f"comp_old_age_{value}"
    return make


# --------------------------------------------------------------------------- prepared directories, edited
def _edit_manifest(prep: Path, row: int, **values) -> None:
    man = pd.read_csv(prep / "manifest.csv", dtype=str, keep_default_na=False)
    for col, v in values.items():
        man.loc[row if row >= 0 else len(man) + row, col] = v
    man.to_csv(prep / "manifest.csv", index=False)


def manifest_label_18(prep: Path):
    _edit_manifest(prep, 0, label="18")              # line 2; the task has 18 classes, 0..17


def manifest_fold_3(prep: Path):
    _edit_manifest(prep, 0, fold="3")                # prepared with 3 folds, 0..2


def manifest_eval_fold(prep: Path):
    _edit_manifest(prep, -1, fold="0")               # the last row is an eval row


def manifest_split_test(prep: Path):
    _edit_manifest(prep, 0, split="test")


def manifest_label_text(prep: Path):
    _edit_manifest(prep, 0, label="abc")


# --------------------------------------------------------------------------- command lines
def cli_args(*argv: str):
    def make(tmp: Path) -> list[str]:
        return [a.replace("TMP", str(tmp)) for a in argv]
    make.__name__ = "cli_" + "_".join(argv[:2])
    return make


# --------------------------------------------------------------------------- training starts that fail
def run_missing_weights(prep: Path, data: Path) -> list[str]:
    return [f"model.pretrained={data.parent / 'missing.pth'}"]


def run_batch_too_large(prep: Path, data: Path) -> list[str]:
    return ["train.batch_size=4000"]


def run_no_stats(prep: Path, data: Path) -> list[str]:
    return ["data.normalize=dataset"]


def run_no_face_crops(prep: Path, data: Path) -> list[str]:
    return ["data.faces=true"]


def run_image_deleted(prep: Path, data: Path) -> list[str]:
    man = pd.read_csv(prep / "manifest.csv", dtype=str, keep_default_na=False)
    (data / man.loc[man["split"] == "train", "path"].iloc[3]).unlink()
    return []


# --------------------------------------------------------------------------- prediction
def delete_eval_image(data: Path) -> Path:
    """Delete the first image listed in eval/info.csv; return its path."""
    info = pd.read_csv(data / "eval" / "info.csv", dtype=str, keep_default_na=False)
    gone = data / "eval" / "images" / info["ImageID"].iloc[0]
    gone.unlink()
    return gone


def move_dataset(data: Path) -> Path:
    """Move the whole dataset folder; return its new place."""
    new = data.parent / (data.name + "-moved")
    data.rename(new)
    return new


def unprepared_folder(data: Path) -> Path:
    """The competition folder itself, never prepared (`predict RUN --data FOLDER`)."""
    return data


def loader_files(d: Path) -> tuple[list[Path], Path]:
    """Eight small JPEGs for a loader, and the one that will be deleted once the dataset is built."""
    paths = [_jpeg(d / f"img{i}.jpg", pattern()) for i in range(8)]
    return paths, paths[5]


def images_csv(data: Path, out: Path) -> Path:
    """A CSV of eval images for `predict --data`: a path column only (absolute paths, no labels)."""
    info = pd.read_csv(data / "eval" / "info.csv", dtype=str, keep_default_na=False)
    pd.DataFrame({"path": [str(data / "eval" / "images" / i) for i in info["ImageID"][:9]]}).to_csv(out, index=False)
    return out


def gender_age_csv(data: Path, out: Path) -> Path:
    """A CSV with gender/age columns (another task than the 18-class run's) for `predict --data`."""
    df = pd.read_csv(images_csv(data, out)).assign(gender="male", age=30)
    df.to_csv(out, index=False)
    return out


# --------------------------------------------------------------------------- the table
# --------------------------------------------------------------------------- broken run files (issue 26)
# Each takes a run directory (run.json, fold<k>/oof.csv) and damages one file; returns its path in the run.
def _oof(run: Path, fold: int = 0) -> Path:
    return run / f"fold{fold}" / "oof.csv"


def _edit_oof(run: Path, edit: Callable[[pd.DataFrame], pd.DataFrame], **csv) -> str:
    p = _oof(run)
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    edit(df).to_csv(p, index=False, **csv)
    return "fold0/oof.csv"


def oof_random_bytes(run: Path) -> str:
    _oof(run).write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes() + b"\n")
    return "fold0/oof.csv"


def oof_zero_bytes(run: Path) -> str:
    _oof(run).write_bytes(b"")
    return "fold0/oof.csv"


def oof_prob_not_a_number(run: Path) -> str:
    return _edit_oof(run, lambda df: df.assign(prob_3=["abc" if i == 3 else v for i, v in enumerate(df["prob_3"])]))


def oof_prob_blank(run: Path) -> str:
    return _edit_oof(run, lambda df: df.assign(prob_3=["" if i == 3 else v for i, v in enumerate(df["prob_3"])]))


def oof_cut_short(run: Path) -> str:
    lines = _oof(run).read_text().splitlines(keepends=True)
    _oof(run).write_text("".join(lines[:-5]))
    return "fold0/oof.csv"


def oof_cut_mid_line(run: Path) -> str:
    text = _oof(run).read_text()
    _oof(run).write_text(text[: len(text) // 2])
    return "fold0/oof.csv"


def oof_no_image_id(run: Path) -> str:
    return _edit_oof(run, lambda df: df.drop(columns=["image_id"]))


def oof_semicolons(run: Path) -> str:
    return _edit_oof(run, lambda df: df, sep=";")


def oof_no_label(run: Path) -> str:
    return _edit_oof(run, lambda df: df.drop(columns=["label"]))


def oof_no_prob_column(run: Path) -> str:
    return _edit_oof(run, lambda df: df.drop(columns=[df.columns[-1]]))


def oof_duplicated_row(run: Path) -> str:
    return _edit_oof(run, lambda df: pd.concat([df, df.iloc[[2]]], ignore_index=True))


def oof_all_zero_row(run: Path) -> str:
    def zero(df):
        df.loc[4, [c for c in df.columns if c.startswith("prob_")]] = "0.000000"
        return df
    return _edit_oof(run, zero)


def run_json_not_json(run: Path) -> str:
    (run / "run.json").write_text("{ not json")
    return "run.json"


def run_json_list(run: Path) -> str:
    (run / "run.json").write_text("[1, 2, 3]")
    return "run.json"


def run_json_prepared_null(run: Path) -> str:
    import json
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "prepared": None}))
    return "run.json"


# --------------------------------------------------------------------------- fourth round (issue 39)
def csv_one_image_per_class(root: Path):
    """12 images of 12 classes, each its own person: no class can be in both parts of 2 folds."""
    return _write(root, csv_base(root).assign(label=range(N_CSV), group=[f"p{i}" for i in range(N_CSV)])), {}


def onnx_stand_in(path: Path, *, classes: int, size: int, probabilities: bool = True) -> Path:
    """A small ONNX graph with an export's interface (uint8 'image' N×3×S×S in, 'probs' N×K out) that is not the
    run's model: another run's export, as far as predict and serve can tell from its outside."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, classes)

        def forward(self, x):
            z = self.fc(x.float().mean((2, 3)) / 255)
            return z.softmax(1) if probabilities else z
    torch.manual_seed(0)
    with warnings.catch_warnings():  # the exporter's deprecation notes, as maskcls export silences them
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        torch.onnx.export(StandIn().eval(), (torch.zeros(1, 3, size, size, dtype=torch.uint8),), str(path),
                          dynamo=False, input_names=["image"], output_names=["probs"],
                          dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}}, opset_version=17)
    return path


# Exported files that are not what they claim. Each takes a run directory whose export/model.onnx and model.json an
# export just wrote, damages one file and returns its path in the run.
def _spec(run: Path) -> dict:
    import json
    return json.loads((run / "export" / "model.json").read_text())


def _stand_in(run: Path, *, classes: int | None = None, size: int | None = None, **kw) -> str:
    spec = _spec(run)
    onnx_stand_in(run / "export" / "model.onnx", classes=classes or len(spec["output"]["class_names"]),
                  size=size or spec["input"]["height"], **kw)
    return "export/model.onnx"


def model_three_classes(run: Path) -> str:
    return _stand_in(run, classes=3)


def model_other_input_size(run: Path) -> str:
    return _stand_in(run, size=2 * _spec(run)["input"]["height"])


def model_logits(run: Path) -> str:
    return _stand_in(run, probabilities=False)


def model_and_json_of_another_run(run: Path) -> str:
    import json
    spec = _spec(run)
    (run / "export" / "model.json").write_text(json.dumps({**spec, "output": {
        **spec["output"], "class_names": ["cat", "dog", "bird"]}}))
    return _stand_in(run, classes=3)


def model_json_other_mean(run: Path) -> str:
    import json
    import re
    spec = _spec(run)
    pre = spec["preprocessing"]
    inside = re.sub(r"mean=\[[^\]]*\]", "mean=[0.5, 0.5, 0.5]", pre["inside_model"])
    (run / "export" / "model.json").write_text(json.dumps({**spec, "preprocessing": {**pre, "inside_model": inside}}))
    return "export/model.json"


def model_garbage(run: Path) -> str:
    (run / "export" / "model.onnx").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    return "export/model.onnx"


def int8_garbage_without_json(run: Path) -> str:
    (run / "export" / "model.int8.onnx").write_bytes(b"\x08\x07garbage" * 100)
    return "export/model.int8.onnx"


# Study folders that are not a study's. Each makes STUDY_DIR (or what lies there); returns the file that must not
# change, and the flags the command needs.
def tune_foreign_sqlite(study_dir: Path) -> tuple[Path, list[str]]:
    import sqlite3
    study_dir.mkdir(parents=True)
    with sqlite3.connect(study_dir / "study.db") as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers (name) VALUES ('Ada')")
    return study_dir / "study.db", []


def tune_garbage_db(study_dir: Path) -> tuple[Path, list[str]]:
    study_dir.mkdir(parents=True)
    (study_dir / "study.db").write_bytes(np.random.default_rng(1).integers(0, 256, 5000, np.uint8).tobytes())
    return study_dir / "study.db", []


def tune_foreign_journal(study_dir: Path) -> tuple[Path, list[str]]:
    study_dir.mkdir(parents=True)
    (study_dir / "study.journal").write_text("2024-05-01 12:00 backup done\n")
    return study_dir / "study.journal", ["--storage", "journal"]


def tune_study_dir_is_a_file(study_dir: Path) -> tuple[Path, list[str]]:
    study_dir.parent.mkdir(parents=True, exist_ok=True)
    study_dir.write_text("my notes\n")
    return study_dir, []


def no_file(*_):
    """Cases made inside their test (a server, a command line): nothing to write beforehand."""


T_DECODE = "test_handled_image_decodes_to_expected_pixels"
T_CORPUS = "test_handled_corpus_prepares_trains_and_predicts"
T_PRED = "test_predict_images_over_the_corpus"
T_REPORTED = "test_reported_image_raises_data_error_naming_it"
T_PREPARE = "test_prepare_names_every_bad_file_and_skip_bad_records_it"
T_CSV = "test_csv_manifest_case"
T_COMP = "test_competition_case"
T_MANIFEST = "test_edited_manifest_is_refused_naming_its_lines"
T_CLI = "test_out_of_range_flag_is_one_line_exit_2"
T_FLAGS = "test_every_numeric_flag_has_a_checked_type"
T_START = "test_failed_training_start_leaves_no_run_directory"
T_LOADER = "test_vanished_image_is_one_line_from_workers_and_threads"
T_VANISH = "test_predict_and_train_after_images_vanish"
T_CSV_EVAL = "test_csv_eval_rows_are_predicted_in_manifest_order"
T_RAW = "test_predict_data_accepts_a_raw_source"
T_OUT_DIR = "test_predict_out_existing_directory"
T_SYNTH = "test_synth_size_is_bounded"
T_SYNTH_INT = "test_synth_interrupted_leaves_no_partial_directory"
T_RUNFILE = "test_broken_run_file_is_one_line_naming_it"
T_AUDIT_CSV = "test_csv_source_that_lost_rows_is_refused_before_writing"
T_ZERO_ROW = "test_all_zero_probability_row_is_refused_everywhere"
T_SLOW = "test_stalled_connections_are_closed_and_everyone_else_is_served"
T_PER_CLIENT = "test_many_connections_from_one_address_cannot_fill_the_server"
T_PIXELS = "test_a_request_of_pixel_bombs_under_the_size_limits_is_413_before_decoding"
T_BUDGET = "test_decoding_in_flight_stays_within_the_pixel_budget"
T_HOST = "test_foreign_host_is_421_unless_allowed"
T_ORIGIN = "test_cross_origin_posts_are_refused_before_any_work"
T_FILES = "test_too_many_files_is_413_naming_the_limit"
T_405 = "test_405_says_allow_and_head_is_answered"
T_TOKEN = "test_token_a_client_could_never_send_is_refused_at_start"
T_LEAVE = "test_client_leaving_mid_body_is_one_log_line"
T_EXPORT_RUN = "test_export_never_writes_into_the_runs_own_files"
T_EXPORT_OWN = "test_export_never_overwrites_files_it_did_not_write"
T_EXPORT_DEV = "test_export_refuses_devices_pipes_and_links"
T_EXPORT_TOL = "test_export_that_disagrees_with_pytorch_fails_and_leaves_no_file"
T_PRED_NAMES = "test_plain_predict_output_escapes_control_characters_in_names"
T_MODEL = "test_exported_file_not_of_the_run_is_refused_before_it_answers"
T_TS = "test_damaged_torchscript_file_is_one_line_naming_it"
T_SUFFIX = "test_export_out_paths"
T_INT8_NONE = "test_int8_export_that_would_quantize_nothing_is_refused"
T_INT8_PREDICT = "test_predict_int8_refusal_names_predicts_own_fixes"
T_TUNE_FILE = "test_study_file_that_is_not_a_study_is_refused_unchanged"
T_TUNE_FIXED = "test_resuming_a_study_with_other_fixed_settings_is_refused"
T_TUNE_TOTAL = "test_workers_sharing_a_study_run_exactly_the_trials_asked"
T_TUNE_CTRL_C = "test_ctrl_c_on_a_tune_worker_is_one_line"
T_SMALL = "test_set_too_small_for_its_folds_is_one_warning_and_lr_find_runs"

CASES: list[Case] = [
    Case("RGBA PNG", "96x128 pattern, bottom half alpha 0", "handled",
         "alpha composited on white, 8-bit RGB", "photo", make_rgba_png, tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("greyscale JPEG", "mode L gradient, quality 95", "handled",
         "replicated to R=G=B (fast libjpeg-turbo path)", "photo", make_grey_jpeg, tol=2,
         tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("CMYK JPEG", "pattern converted to CMYK, saved as JPEG (Adobe marker)", "handled",
         "converted to RGB by PIL (fast path disabled in the manifest)", "photo", make_cmyk_jpeg, tol=4,
         tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("16-bit PNG", "mode I;16 gradient 0..65535", "handled",
         "scaled to 0..255 (v / 65535 * 255)", "photo", make_png16, tol=0.5, tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("dark 16-bit PNG", "mode I;16 gradient 0..200 (of 65535)", "handled",
         "scaled by 65535 too: stays nearly black, not stretched", "photo", make_png16_dark, tol=0.5,
         tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("EXIF-rotated JPEG", "pattern stored 128x96 with EXIF orientation 6", "handled",
         "rotated 90° clockwise to 96x128 upright pixels (PIL path; manifest fast=False)", "photo",
         make_exif_rotated, tol=4, tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("palette PNG", "pattern quantized to 8 colours (mode P)", "handled", "expanded to RGB", "photo",
         make_palette_png, tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("file name with spaces", "eval image 'my photo (1) final.jpg'", "handled",
         "read, predicted, written to the submission under its ImageID", "eval", make_name_spaces, tol=4,
         tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("non-ASCII file name", "eval image 'фото_写真_é ñ.jpg'", "handled",
         "read, predicted, written to the submission under its ImageID", "eval", make_name_unicode, tol=4,
         tests=(T_DECODE, T_CORPUS, T_PRED)),
    Case("non-ASCII person folder", "a person folder renamed '<id> é 写真 x_<gender>_<race>_<age>' (train.csv "
         "updated)", "handled",
         "indexed and grouped by its folder name", "folder", rename_folder_unicode, tests=(T_CORPUS,)),
    Case("truncated JPEG", "a JPEG cut to its first third", "reported", "prepare names it: cannot decode",
         "photo", make_truncated_jpeg, reason=r"truncated|cannot decode", tests=(T_REPORTED, T_PREPARE, T_PRED)),
    Case("zero-byte file", "an empty .jpg file", "reported", "prepare names it: empty file", "photo",
         make_zero_byte, reason=r"empty file", tests=(T_REPORTED, T_PREPARE, T_PRED)),
    Case("text file named .jpg", "a line of text saved as .jpg", "reported", "prepare names it: not an image",
         "photo", make_text_as_jpg, reason=r"not an image", tests=(T_REPORTED, T_PREPARE, T_PRED)),
    Case("decompression bomb (header)", "100-byte PNG claiming 30000x30000 px", "reported",
         "refused before decoding (imageio.MAX_PIXELS = 50 MP)", "photo", make_bomb_header,
         reason=r"too large", tests=(T_REPORTED, T_PREPARE, T_PRED)),
    Case("oversized image", "a real 8000x7000 (56 MP) greyscale PNG", "reported",
         "refused before decoding (over 50 MP)", "photo", make_oversized, reason=r"too large",
         tests=(T_REPORTED, T_PREPARE, T_PRED)),
    Case("CSV: duplicated rows", "3 rows repeated verbatim", "handled",
         "duplicates dropped, a warning recorded in prepare.json", "csv", csv_duplicated_rows, reason="duplicated",
         tests=(T_CSV,)),
    Case("CSV: same path, different labels", "a row repeated with the other label", "refused",
         "prepare names the path: different labels", "csv", csv_conflicting_duplicate, reason="different labels",
         tests=(T_CSV,)),
    Case("CSV: missing path column", "path column renamed", "refused", "prepare: no 'path' column", "csv",
         csv_missing_path, reason=r"no 'path' column", tests=(T_CSV,)),
    Case("CSV: missing label column", "label column dropped", "refused",
         "prepare: needs a 'label' column or mask,gender,age", "csv", csv_missing_label,
         reason=r"'label' column", tests=(T_CSV,)),
    Case("CSV: extra columns", "notes, camera and fold columns added", "handled",
         "ignored (folds are always made by prepare)", "csv", csv_extra_columns, tests=(T_CSV,)),
    Case("CSV: label out of range", "label 5 with --num-classes 2", "refused",
         "prepare names the line: out of range 0..1", "csv", csv_label_out_of_range, reason=r":6: .*out of range",
         tests=(T_CSV,)),
    Case("CSV: label not an integer", "label 'cat'", "refused", "prepare names the line: not an integer",
         "csv", csv_label_not_integer, reason=r":6: label 'cat' is not an integer", tests=(T_CSV,)),
    Case("CSV: path escaping the root", "imgs/../../outside.jpg (the file exists)", "refused",
         "prepare names the line: escapes the CSV's folder", "csv", csv_path_dotdot, reason=r":6: .*escapes",
         tests=(T_CSV,)),
    Case("CSV: absolute path", "/…/imgs/img_04.jpg", "refused",
         "prepare names the line; accepted only with --allow-absolute", "csv", csv_path_absolute,
         reason=r":6: .*--allow-absolute", tests=(T_CSV,)),
    Case("CSV: absolute path, --allow-absolute", "the same with allow_absolute=True", "handled",
         "accepted and stored as given", "csv", csv_path_absolute_allowed, tests=(T_CSV,)),
    Case("CSV: listed file missing", "path imgs/not_there.jpg", "reported",
         "prepare names the file; --skip-bad excludes and records it", "csv", csv_missing_file,
         reason=r"not_there\.jpg", tests=(T_CSV,)),
    # ---- second round (issue 11): what a hostile user still broke
    Case("CSV: blank group cells", "group '' on lines 3 and 8", "refused",
         "prepare lists the lines: they would form one group '' straddling folds; names --group-missing row",
         "csv", csv_blank_groups, reason=r"blank or NaN group \(line\(s\) 3, 8\).*--group-missing row",
         tests=(T_CSV,)),
    Case("CSV: 'NaN' group cells", "group 'NaN' (what df.astype(str) writes) on lines 3 and 8", "refused",
         "the same as blank cells", "csv", csv_nan_groups, reason=r"blank or NaN group \(line\(s\) 3, 8\)",
         tests=(T_CSV,)),
    Case("CSV: blank groups, --group-missing row", "the same with group_missing='row'", "handled",
         "each such row is its own group; said in a warning and recorded in prepare.json", "csv",
         csv_blank_groups_as_rows, reason="without a group", tests=(T_CSV,)),
    Case("CSV: ages written as floats", "gender/age columns, ages '22.0', '45.0', '61.0'", "handled",
         "whole-number floats are whole years (labels.parse_age, the one age parser)", "csv", csv_float_ages,
         tests=(T_CSV,)),
    Case("CSV: unlabelled split=eval rows", "4 extra rows with split=eval, blank label and group", "handled",
         "eval rows need no label; they are predicted (see the prediction cases)", "csv",
         csv_eval_rows_unlabelled, tests=(T_CSV, T_CSV_EVAL)),
    Case("CSV: --old-age 200", "ages 22..62, old_age=200", "refused",
         "prepare: --old-age must lie within the training ages and above 30", "csv", csv_old_age_outside,
         reason=r"--old-age 200 does not split .*22\.\.62", tests=(T_CSV,)),
    Case("train.csv age '23.0'", "the first person's age written as a float (the folder says 23)", "handled",
         "read as 23 years, as in a CSV manifest", "competition", comp_age_float, tests=(T_COMP,)),
    Case("train.csv age '40.5'", "the first person's age '40.5'", "reported",
         "one line naming train.csv:2, and no 'folder not listed' line for its folder", "competition",
         comp_age_fraction, reason=r"train\.csv:2: age '40\.5' is not a whole number", tests=(T_COMP,)),
    Case("folder name '…_other_Asian_26'", "first folder renamed, train.csv row still female/male and its age",
         "reported", "prepare names the folder, both sides, and --trust csv|folder", "competition",
         comp_folder_gender_other,
         reason=r"folder name says gender 'other', 26 but train\.csv line 2 says .*--trust csv or --trust folder",
         tests=(T_COMP,)),
    Case("folder name '…_Asian_abc'", "first folder's age field replaced by 'abc'", "reported",
         "prepare names the folder and both sides", "competition", comp_folder_age_abc,
         reason=r"folder name says \w+, age 'abc' but train\.csv line 2", tests=(T_COMP,)),
    Case("folder name vs train.csv, --trust csv", "first folder renamed to the other gender and age 26",
         "handled", "labelled from train.csv; the disagreement recorded (prepare.json name_conflicts) and warned",
         "competition", comp_trust_csv, tests=(T_COMP,)),
    Case("folder name vs train.csv, --trust folder", "the same with trust='folder'", "handled",
         "labelled from the folder name; recorded and warned", "competition", comp_trust_folder, tests=(T_COMP,)),
    Case("prepare --old-age 200", "old_age=200 on ages 18..60", "refused",
         "the range it must lie in (31..60) and why", "competition", comp_old_age(200),
         reason=r"--old-age 200 does not split .*31\.\.60", tests=(T_COMP,)),
    Case("prepare --old-age -5", "old_age=-5 (the CLI refuses it before: >= 31)", "refused",
         "the range it must lie in", "competition", comp_old_age(-5), reason=r"--old-age -5 does not split",
         tests=(T_COMP, T_FLAGS)),
    Case("prepare --old-age 59", "old_age=59 on ages 18..60", "handled",
         "recorded in prepare.json (old_age, age_range); age 59 and 60 form the oldest group", "competition",
         comp_old_age(59), tests=(T_COMP,)),
    Case("manifest: label 18 of 18 classes", "prepared manifest.csv line 2 edited to label 18", "refused",
         "load_prepared names manifest.csv, the line and the fix; train exits 2 before a run directory",
         "manifest", manifest_label_18, reason=r"manifest\.csv: label outside 0\.\.17 .*line\(s\) 2;",
         tests=(T_MANIFEST,)),
    Case("manifest: fold 3 of 3 folds", "line 2 edited to fold 3", "refused", "the same: fold outside 0..2",
         "manifest", manifest_fold_3, reason=r"fold outside 0\.\.2 .*line\(s\) 2;", tests=(T_MANIFEST,)),
    Case("manifest: eval row with a fold", "the last (eval) row edited to fold 0", "refused",
         "the same: eval rows must have fold -1", "manifest", manifest_eval_fold,
         reason=r"eval rows must have fold -1", tests=(T_MANIFEST,)),
    Case("manifest: split 'test'", "line 2 edited to split test", "refused", "the same: train or eval",
         "manifest", manifest_split_test, reason=r"split must be train or eval.*line\(s\) 2\)", tests=(T_MANIFEST,)),
    Case("manifest: label 'abc'", "line 2 edited to label abc", "refused", "the same: integers",
         "manifest", manifest_label_text, reason=r"column label must hold integers \(line\(s\) 2\)",
         tests=(T_MANIFEST,)),
    Case("predict --batch-size -3", "`maskcls predict RUN --batch-size -3`", "refused",
         "one line `maskcls predict: error: argument --batch-size: -3 is out of range…`, exit 2", "cli",
         cli_args("predict", "TMP/run", "--batch-size", "-3"), reason=r"--batch-size: -3 is out of range",
         tests=(T_CLI, T_FLAGS)),
    Case("predict --batch-size 0", "`maskcls predict RUN --batch-size 0`", "refused", "the same", "cli",
         cli_args("predict", "TMP/run", "--batch-size", "0"), reason=r"--batch-size: 0 is out of range",
         tests=(T_CLI, T_FLAGS)),
    Case("prepare --folds 1", "`maskcls prepare SRC --out P --folds 1`", "refused", "the same: >= 2", "cli",
         cli_args("prepare", "TMP/src", "--out", "TMP/p", "--folds", "1"), reason=r"--folds: 1 is out of range",
         tests=(T_CLI, T_FLAGS)),
    Case("faces --margin nan", "`maskcls faces P --margin nan`", "refused", "the same: a finite number in 0..2",
         "cli", cli_args("faces", "TMP/p", "--margin", "nan"), reason=r"--margin: 'nan' is not a finite number",
         tests=(T_CLI, T_FLAGS)),
    Case("synth --size 20000 20000", "`maskcls synth OUT --size 20000 20000` (was 10+ silent minutes)", "refused",
         "one line: each side 32..2048 (the library refuses it too)", "cli",
         cli_args("synth", "TMP/s", "--size", "20000", "20000"), reason=r"--size: 20000 is out of range",
         tests=(T_CLI, T_SYNTH)),
    Case("train start: missing model.pretrained file", "model.pretrained=/…/missing.pth", "refused",
         "one line; checked before the run directory exists (no directory, no runs/<name>-<n> used up)", "run",
         run_missing_weights, reason=r"model\.pretrained=.*missing\.pth: file not found", tests=(T_START,)),
    Case("train start: batch larger than the fold", "train.batch_size=4000", "refused", "the same",
         "run", run_batch_too_large, reason=r"train\.batch_size=4000 is larger than the training set",
         tests=(T_START,)),
    Case("train start: no stats.json", "data.normalize=dataset without `maskcls stats`", "refused", "the same",
         "run", run_no_stats, reason=r"needs .*stats\.json", tests=(T_START,)),
    Case("train start: no face crops", "data.faces=true without `maskcls faces`", "refused", "the same",
         "run", run_no_face_crops, reason=r"no complete face crops", tests=(T_START,)),
    Case("train start: an image deleted after prepare", "one training photo removed", "refused",
         "the same: names the file and says to re-run prepare", "run", run_image_deleted,
         reason=r"1 of \d+ images .* are missing \(first: .*\); the dataset moved", tests=(T_START,)),
    Case("image gone while loading", "a file deleted after the dataset was built, 2 worker processes / threads",
         "refused", "one line naming the file and the fix from worker processes and threads alike (not torch's "
         "20-line worker traceback)", "loader", loader_files,
         reason=r"^image .* not found: it was deleted or the dataset moved", tests=(T_LOADER,)),
    Case("predict after an eval image was deleted", "one eval image removed after prepare", "refused",
         "`maskcls predict RUN` exits 2 with one line naming it and `--data`; the run is unchanged", "predict",
         delete_eval_image, reason=r"1 of \d+ images .*missing \(first: .*\).*--data", tests=(T_VANISH,)),
    Case("dataset moved after prepare", "the dataset folder renamed", "refused",
         "predict and train: one line and the fix; `predict RUN --data NEW_PLACE` then works", "predict",
         move_dataset, reason=r"are missing \(first: ", tests=(T_VANISH,)),
    Case("predict a CSV's split=eval rows", "a run trained on a CSV with unlabelled eval rows", "handled",
         "`predict RUN` writes path,ans,class_name: the manifest's paths, in manifest order", "predict",
         csv_eval_rows_unlabelled, tests=(T_CSV_EVAL,)),
    Case("predict --data COMPETITION_FOLDER", "an unprepared competition folder (eval/info.csv)", "handled",
         "indexed into RUN/predict-data/<name>, the source only read; the same submission as the prepared dir",
         "predict", unprepared_folder, tests=(T_RAW,)),
    Case("predict --data IMAGES.csv", "a CSV with only a path column (absolute paths)", "handled",
         "its rows predicted in CSV order", "predict", images_csv, tests=(T_RAW,)),
    Case("predict --data with another task's CSV", "a gender/age CSV for an 18-class run", "refused",
         "one line: the CSV's attributes are not the run's", "predict", gender_age_csv,
         reason=r"attribute column\(s\) \['gender', 'age'\] but the run predicts mask/gender/age",
         tests=(T_RAW,)),
    Case("predict --out EXISTING_DIR", "--out names a directory", "handled",
         "writes DIR/submission.csv (and DIR/submission.probs.csv); nothing beside the directory", "predict",
         cli_args("--out", "TMP/outdir"), tests=(T_OUT_DIR,)),
    Case("synth interrupted", "SIGINT / SIGTERM to `maskcls synth` while drawing 1024x1024 photos", "handled",
         "exit 130, the hidden .partial folder removed; one left by a `kill -9` is removed by the next synth",
         "synth", cli_args("synth", "TMP/s", "--size", "1024", "1024"), tests=(T_SYNTH_INT,)),
    # ---- third round (issue 26): serve's hostile clients, broken run files, export targets
    Case("oof.csv of random bytes", "fold0/oof.csv replaced by 3000 random bytes", "refused",
         "audit (and every reader) exits 2 with one line naming the file: not a readable CSV / its columns",
         "runfile", oof_random_bytes, reason=r"fold0/oof\.csv: (not a readable CSV|no column)", tests=(T_RUNFILE,)),
    Case("oof.csv of 0 bytes", "fold0/oof.csv emptied", "refused", "one line: empty", "runfile", oof_zero_bytes,
         reason=r"fold0/oof\.csv: empty", tests=(T_RUNFILE,)),
    Case("oof.csv: a probability 'abc'", "prob_3 of line 5 set to abc", "refused",
         "one line naming the column, the value and the line", "runfile", oof_prob_not_a_number,
         reason=r"fold0/oof\.csv: prob_3 must be a number >= 0, not 'abc' \(line\(s\) 5", tests=(T_RUNFILE,)),
    Case("oof.csv: a blank probability", "prob_3 of line 5 emptied", "refused",
         "one line naming the column, 'a blank cell' (not np.float64(nan)) and the line", "runfile", oof_prob_blank,
         reason=r"fold0/oof\.csv: prob_3 must be a number >= 0, not a blank cell \(line\(s\) 5\)", tests=(T_RUNFILE,)),
    Case("oof.csv cut short", "its last 5 lines removed", "refused",
         "one line: the file lacks 5 of its fold's images (not 'the prepared directory changed')", "runfile",
         oof_cut_short, reason=r"fold0/oof\.csv lacks 5 of the \d+ training images of fold 0", tests=(T_RUNFILE,)),
    Case("oof.csv cut mid-line", "truncated at half its bytes", "refused", "one line: the last line ends mid-row",
         "runfile", oof_cut_mid_line, reason=r"fold0/oof\.csv: its last line ends mid-row", tests=(T_RUNFILE,)),
    Case("oof.csv without image_id", "the image_id column dropped", "refused",
         "one line: no column image_id (not 'folds overlap')", "runfile", oof_no_image_id,
         reason=r"fold0/oof\.csv: no column\(s\) image_id", tests=(T_RUNFILE,)),
    Case("oof.csv written with ';'", "the same rows with sep=';'", "refused", "one line: separated by ';'",
         "runfile", oof_semicolons, reason=r"fold0/oof\.csv: its columns are separated by ';'", tests=(T_RUNFILE,)),
    Case("oof.csv without label", "the label column dropped", "refused",
         "one line: no column label (not '168 labels differ')", "runfile", oof_no_label,
         reason=r"fold0/oof\.csv: no column\(s\) label", tests=(T_RUNFILE,)),
    Case("oof.csv without a probability column", "its last column (prob_17) dropped", "refused",
         "one line: no column prob_17 (not 'not finite')", "runfile", oof_no_prob_column,
         reason=r"fold0/oof\.csv: no column\(s\) prob_17", tests=(T_RUNFILE,)),
    Case("oof.csv with a duplicated row", "line 4 repeated at the end", "refused",
         "one line: the image has several rows, with their lines (not 'two folds')", "runfile", oof_duplicated_row,
         reason=r"fold0/oof\.csv: image .* has several rows \(line\(s\) 4, ", tests=(T_RUNFILE,)),
    Case("oof.csv row of zero probabilities", "every prob_ of line 6 set to 0", "refused",
         "one line: a row's probabilities must sum to 1 (it was used as is: pooled probabilities summed to 0.86)",
         "runfile", oof_all_zero_row, reason=r"fold0/oof\.csv: the probabilities of a row must sum to 1, not 0 "
         r"\(line\(s\) 6\)", tests=(T_RUNFILE, T_ZERO_ROW)),
    Case("run.json not JSON", "run.json holds '{ not json'", "refused", "one line naming run.json", "runfile",
         run_json_not_json, reason=r"run\.json is not valid JSON", tests=(T_RUNFILE,)),
    Case("run.json a JSON list", "run.json holds [1, 2, 3]", "refused", "one line: a list, not an object",
         "runfile", run_json_list, reason=r"run\.json holds a JSON list", tests=(T_RUNFILE,)),
    Case("run.json with \"prepared\": null", "its prepared key set to null", "refused",
         "one line: 'prepared' is null, not the prepared directory's path", "runfile", run_json_prepared_null,
         reason=r"run\.json: 'prepared' is null", tests=(T_RUNFILE,)),
    Case("CSV source lost rows after prepare", "3 rows removed from a CSV manifest after prepare and training",
         "refused", "audit exits 2 naming the CSV and a lost image before writing anything (corrected.csv would "
         "have silently dropped them)", "runfile", no_file, reason=r"lost 3 of the prepared images",
         tests=(T_AUDIT_CSV,)),
    Case("serve: stalled and trickling connections", "idle, half-header and 1-byte-body connections",
         "refused", "408 after --header-timeout (10 s), closed after --body-timeout (60 s); other clients and "
         "/healthz answered meanwhile", "serve", no_file, tests=(T_SLOW,)),
    Case("serve: 200 connections from one address", "200 stalled connections from 127.0.0.2 under a cap of 64",
         "refused", "that address holds --max-client-connections (default 64; 8 in the test), the rest get 429 at "
         "once; others served",
         "serve", no_file, tests=(T_PER_CLIENT,)),
    Case("serve: pixel bombs under the size limits", "8 flat 7000x7000 PNGs of a few KB in one request",
         "refused", "413 too_many_pixels from the headers (392 MP over the 64 MP decode budget), nothing decoded",
         "serve", no_file, tests=(T_PIXELS, T_BUDGET)),
    Case("serve: foreign Host header", "Host: evil.example (DNS rebinding)", "refused",
         "421 wrong_host unless --allow-host names it", "serve", no_file, tests=(T_HOST,)),
    Case("serve: cross-origin post", "a multipart POST with Origin: https://evil.example", "refused",
         "403 cross_origin before any work, unless --allow-origin (which also gets CORS headers)", "serve", no_file,
         tests=(T_ORIGIN,)),
    Case("serve: 20 files for a limit of 4", "one multipart request", "refused",
         "413 too_many_images naming the limit (was 400 naming 4x the limit)", "serve", no_file, tests=(T_FILES,)),
    Case("serve: DELETE, PUT, HEAD", "other methods on the routes", "handled",
         "405 with Allow; HEAD on /, /healthz and /readyz answered", "serve", no_file, tests=(T_405,)),
    Case("serve: non-ASCII --token", "--token 'pässwörd-1234'", "refused",
         "one line at start: printable ASCII (a client could never send it)", "serve", no_file, tests=(T_TOKEN,)),
    Case("serve: client leaves mid-body", "a multipart upload closed after 100 bytes", "handled",
         "one log line, no traceback", "serve", no_file, tests=(T_LEAVE,)),
    Case("export --out RUN/run.onnx", "also RUN/summary, RUN/fold0/best.pt as TorchScript", "refused",
         "one line: the run's own files; nothing in the run changes", "export", no_file, tests=(T_EXPORT_RUN,)),
    Case("export over someone else's file", "X.json or X.onnx present, not written by an export", "refused",
         "one line: not written by maskcls export; an earlier export is replaced", "export", no_file,
         tests=(T_EXPORT_OWN,)),
    Case("export --out /dev/null", "also a FIFO, a symlink, an existing plain file without suffix", "refused",
         "one line: not a regular file / a link; nothing written beside it", "export", no_file,
         tests=(T_EXPORT_DEV,)),
    Case("export that disagrees with PyTorch", "the exported model's output shifted by 3e-4", "refused",
         "exit 2 over 1e-4 (measured: under 1e-6); no file left, an earlier export kept", "export", no_file,
         tests=(T_EXPORT_TOL,)),
    Case("predict: newline and tab in file names", "photos named 'a\\nb.jpg' and 'c\\td.jpg'", "handled",
         "plain output escapes them (\\n, \\t): one line per image", "predict", no_file, tests=(T_PRED_NAMES,)),
    # ---- fourth round (issue 39): models that are not what they claim, other programs' files, tiny datasets
    Case("export replaced by another run's (3 classes)", "RUN/export/model.onnx overwritten by a 3-class graph, its "
         "JSON kept", "refused", "predict --backend onnx and serve --model: one line, the file answers 3 values where "
         "the run has 18 classes, and the export command (was: 'wear / male / <30 … 0.990', exit 0)", "model",
         model_three_classes, reason=r"answers 3 value\(s\) per image where the run's task has 18 classes",
         tests=(T_MODEL,)),
    Case("export and JSON of another run", "model.onnx and model.json of a 3-class run copied in", "refused",
         "the same: its JSON names 3 classes, the run has 18", "model", model_and_json_of_another_run,
         reason=r"its JSON names 3 classes \(cat, dog, bird, …\) where the run has 18", tests=(T_MODEL,)),
    Case("export of another input size", "a graph taking 128 px images for a 64 px run", "refused",
         "the same: it does not take the run's input (uint8 1x3x64x64)", "model", model_other_input_size,
         reason=r"does not take the run's input, uint8 images 1x3x64x64", tests=(T_MODEL,)),
    Case("export answering logits", "an 18-output graph without its softmax", "refused",
         "the same: its outputs are not class probabilities (they do not sum to 1)", "model", model_logits,
         reason=r"outputs are not class probabilities", tests=(T_MODEL,)),
    Case("export JSON with another normalisation", "model.json's mean edited to [0.5, 0.5, 0.5]", "refused",
         "the same: its JSON normalises with another mean than the run's", "model", model_json_other_mean,
         reason=r"normalises with mean=\[0\.5, 0\.5, 0\.5\] where the run's mean is", tests=(T_MODEL,)),
    Case("model.onnx of garbage bytes", "3000 random bytes, its JSON kept", "refused",
         "one line naming the file: not a readable ONNX model, export it again (was ONNX Runtime's InvalidProtobuf "
         "traceback)", "model", model_garbage, reason=r"is not a readable ONNX model \(INVALID_PROTOBUF",
         tests=(T_MODEL,)),
    Case("model.int8.onnx of garbage, no JSON", "RUN/export/model.int8.onnx of garbage, no model.int8.json",
         "refused", "one line: no export description beside it, so what it holds is unknown; move it away and export "
         "(was: 'holds folds None')", "model", int8_garbage_without_json,
         reason=r"has no export description beside it", tests=(T_MODEL,)),
    Case("TorchScript file of garbage", "a .ts file of garbage bytes run as an export", "refused",
         "one line naming it: not a readable TorchScript model", "model", no_file, tests=(T_TS,)),
    Case("export --int8 --fp32-first 500", "on a model of far fewer layers", "refused",
         "one line: every layer would stay fp32, nothing quantized; no file written (was a file labelled INT8)",
         "model", no_file, tests=(T_INT8_NONE,)),
    Case("predict --backend onnx-int8 refused by --max-drop", "the INT8 model made on the spot loses too much",
         "refused", "one line with predict's own fix (--backend onnx) and the calibrations not yet tried (was: "
         "'--force', which predict has not, and '--calib-method entropy', the one used)", "model", no_file,
         tests=(T_INT8_PREDICT,)),
    Case("export --format onnx --out m.pt", "a TorchScript suffix for an ONNX file", "refused",
         "one line: 'an ONNX model file ends in .onnx' (was 'a onnx model file')", "model", no_file,
         tests=(T_SUFFIX,)),
    Case("tune: study.db of another program", "a SQLite database with a customers table at DIR/study.db",
         "refused", "one line: another program's database, not an Optuna study; the file unchanged (sha256) (was: "
         "Optuna's 14 tables added to it, exit 0)", "tune", tune_foreign_sqlite,
         reason=r"is another program's SQLite database \(tables customers\)", tests=(T_TUNE_FILE,)),
    Case("tune: study.db of garbage bytes", "5000 random bytes at DIR/study.db", "refused",
         "one line: not a SQLite database (was: 'is the server running and the URL right?')", "tune",
         tune_garbage_db, reason=r"study\.db is not a SQLite database", tests=(T_TUNE_FILE,)),
    Case("tune: study.journal of another program", "a line of text at DIR/study.journal, --storage journal",
         "refused", "one line: not an Optuna journal; nothing appended", "tune", tune_foreign_journal,
         reason=r"study\.journal is not an Optuna journal", tests=(T_TUNE_FILE,)),
    Case("tune: --study-dir is a file", "a text file where the study folder would go", "refused",
         "one line: a file, not a folder (was: '[Errno 17] File exists')", "tune", tune_study_dir_is_a_file,
         reason=r"--study-dir .* is a file, not a folder", tests=(T_TUNE_FILE,)),
    Case("tune: resumed with other fixed settings", "a study of train.epochs=1 rerun with train.epochs=2 (or "
         "another data.image_size)", "refused", "one line naming each setting that differs and the fix (the same "
         "--set values, or a new --study-dir); no trial added (was: incomparable trials mixed silently)", "tune",
         no_file, tests=(T_TUNE_FIXED,)),
    Case("tune: two workers on one study, --trials 3", "two workers whose trials end at the same moment",
         "handled", "exactly 3 finished trials (was 4): a worker counts running trials too, and a trial numbered "
         "after 3 started ones is not run", "tune", no_file, tests=(T_TUNE_TOTAL,)),
    Case("tune: Ctrl-C on a worker", "KeyboardInterrupt during a trial", "handled",
         "exit 130, the trial marked failed, one line saying how to continue (was Optuna's 40-line traceback first)",
         "tune", no_file, tests=(T_TUNE_CTRL_C,)),
    Case("CSV: one image per class, --folds 2", "12 images of 12 classes, each its own person", "handled",
         "prepared with one warning line naming the classes with too few groups and what --folds would do (was "
         "scikit-learn's 24-line n_splits ValueError); lr-find runs on it", "csv", csv_one_image_per_class,
         reason="have fewer groups (persons) than the 2 folds", tests=(T_CSV, T_SMALL)),
]


def cases(expect: str | None = None, roles: tuple[str, ...] | None = None) -> list[Case]:
    return [c for c in CASES if (expect is None or c.expect == expect) and (roles is None or c.role in roles)]


@dataclass(frozen=True)
class Guarantee:
    area: str
    property: str
    how: str
    test: str


T_KILL = "test_kill_and_ctrl_c_then_resume_equal_uninterrupted"
GUARANTEES: list[Guarantee] = [
    Guarantee("interruption", "SIGKILL during epoch 2, then `--resume`, gives the uninterrupted metrics.csv",
              "subprocess `python -m maskcls train … --run-dir R`, killed once R/fold0/metrics.csv has one row; "
              "all columns but seconds/images_per_s compared", T_KILL),
    Guarantee("interruption", "Ctrl-C stops cleanly: exit 130, says how to resume, last.pt loadable, "
              "resume finishes", "SIGINT to the resumed subprocess during epoch 3", T_KILL),
    Guarantee("interruption", "a checkpoint is never half-written",
              "torch.save made to write half a file and raise, and a kill between the two renames: the previous "
              "last.pt still loads, no temp file is left", "test_checkpoint_write_is_atomic"),
    Guarantee("interruption", "a corrupt or truncated last.pt gives a CheckpointError naming it, "
              "or falls back to last.prev.pt",
              "truncated / zero-byte / garbage last.pt, with and without last.prev.pt",
              "test_corrupt_checkpoint_names_file_or_falls_back"),
    Guarantee("reproducibility", "same seed → identical manifest folds",
              "prepare twice (and a different seed differs)", "test_same_seed_same_folds"),
    Guarantee("reproducibility", "same config and seed → identical metrics.csv on CPU",
              "train twice, 3 epochs; all columns but seconds/images_per_s", "test_same_seed_same_metrics"),
    Guarantee("data safety", "the dataset is never written",
              "synth → prepare → stats → faces → train → predict → report with the dataset chmod -R a-w, and its "
              "sha256 + mtime of every file compared before/after (tests run as root)",
              "test_workflow_leaves_a_read_only_dataset_untouched"),
    Guarantee("data safety", "runs and predictions never overwrite",
              "`train --run-dir EXISTING` exits 2 naming --resume, the directory unchanged; a second predict "
              "writes submission-2.csv", "test_workflow_leaves_a_read_only_dataset_untouched"),
    Guarantee("security", "checkpoints are plain data", "torch.load(weights_only=True) on best.pt and last.pt",
              "test_checkpoints_load_with_weights_only"),
    Guarantee("security", "a pickled object in a checkpoint is not executed",
              "last.pt holding an object whose __reduce__ runs a command: CheckpointError, command not run",
              "test_pickled_checkpoint_is_refused"),
    Guarantee("security", "YAML python tags are rejected (safe_load)",
              "`!!python/object/apply:os.system` in -c FILE, in --set, and in a run's config.yaml on --resume",
              "test_yaml_python_tags_are_rejected"),
    Guarantee("security", "manifest paths are confined to their root unless --allow-absolute",
              "CSV with ../ and absolute paths (rows of the table above)", T_CSV),
]
