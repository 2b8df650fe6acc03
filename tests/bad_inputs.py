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

import struct
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
    """Rename the first person's folder to one with spaces and non-ASCII letters (and fix train.csv)."""
    df = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    old = df.loc[0, "path"]
    new = f"{old} é 写真 x"
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


# --------------------------------------------------------------------------- the table
T_DECODE = "test_handled_image_decodes_to_expected_pixels"
T_CORPUS = "test_handled_corpus_prepares_trains_and_predicts"
T_PRED = "test_predict_images_over_the_corpus"
T_REPORTED = "test_reported_image_raises_data_error_naming_it"
T_PREPARE = "test_prepare_names_every_bad_file_and_skip_bad_records_it"
T_CSV = "test_csv_manifest_case"

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
    Case("non-ASCII person folder", "a person folder renamed '<id>_… é 写真 x' (train.csv updated)", "handled",
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
