"""maskcls faces: MTCNN face crops, fallbacks, resume, idempotence, read-only dataset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

pytest.importorskip("facenet_pytorch")
pytest.importorskip("skimage")

from maskcls.bench.faces import astronaut_photo, background, iou, paste_astronaut, write_prepared  # noqa: E402
from maskcls.errors import ConfigError, DataError  # noqa: E402
from maskcls.prep.face_crop import crop_square, fallback_region, square_region  # noqa: E402
from maskcls.prep.faces import build_face_crops, load_face_crops  # noqa: E402

SIZE = 64


def _dataset(tmp_path: Path, images: dict[str, np.ndarray], prep_name: str = "prep") -> Path:
    """Write ``images`` (name → array; 2-D = greyscale) under tmp_path/ds and a prepared dir for them."""
    root = tmp_path / "ds"
    root.mkdir(exist_ok=True)
    sizes = []
    for name, arr in images.items():
        if not (root / name).exists():
            Image.fromarray(arr).save(root / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        sizes.append((arr.shape[1], arr.shape[0]))
    return write_prepared(tmp_path / prep_name, root, list(images), sizes)


def _boxes(prep: Path) -> pd.DataFrame:
    return pd.read_csv(prep / "faces" / "boxes.csv")


def _tree_digest(root: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _noise(rng, w=384, h=512) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_astronaut_detected_at_known_place(tmp_path):
    rng = np.random.default_rng(1)
    photos = [astronaut_photo(rng) for _ in range(3)]
    prep = _dataset(tmp_path, {f"a{i}.jpg": p[0] for i, p in enumerate(photos)})
    s = build_face_crops(prep, size=SIZE, progress=False)
    b = _boxes(prep)
    assert s["counts"] == {"images": 3, "detected": 3, "fallback": 0, "multi_face": 0}
    for (_, truth), (_, r) in zip(photos, b.iterrows()):
        assert not r["fallback"] and r["n_faces"] == 1 and r["prob"] > 0.9
        assert iou((r.x1, r.y1, r.x2, r.y2), truth) > 0.3
    crops, info = load_face_crops(prep)
    assert crops.shape == (3, SIZE, SIZE, 3) and crops.dtype == np.uint8
    assert info["complete"] and np.load(prep / "faces" / "crops.npy", allow_pickle=False).shape == crops.shape
    # the crop is the face: it matches the face region cut from the photo far better than the photo's centre
    img = np.asarray(Image.open(tmp_path / "ds" / "a0.jpg")).astype(np.float32)
    face = crop_square(img.astype(np.uint8), *square_region(photos[0][1], 384, 512, 0.2), SIZE)
    centre = crop_square(img.astype(np.uint8), *fallback_region(384, 512, "center"), SIZE)
    d_face = np.abs(crops[0].astype(np.float32) - face).mean()
    assert d_face < 12 and d_face < np.abs(crops[0].astype(np.float32) - centre).mean() / 2


def test_no_face_falls_back_and_is_listed(tmp_path):
    rng = np.random.default_rng(2)
    flat = np.full((512, 384, 3), (90, 140, 200), np.uint8)
    prep = _dataset(tmp_path, {"noise.jpg": _noise(rng), "flat.png": flat, "bg.jpg": background(rng, 384, 512)})
    s = build_face_crops(prep, size=SIZE, progress=False)
    assert s["counts"]["fallback"] == 3 and s["counts"]["detected"] == 0
    assert sorted(s["fallback_paths"]) == ["bg.jpg", "flat.png", "noise.jpg"]
    b = _boxes(prep)
    assert b["fallback"].all() and (b["n_faces"] == 0).all() and b["prob"].isna().all()
    assert (b[["x1", "y1", "x2", "y2"]].to_numpy() == [0, 64, 384, 448]).all()  # centred 384-px square
    crops, _ = load_face_crops(prep)
    assert (crops[1] == np.array([90, 140, 200], np.uint8)).all()


def test_greyscale_tiny_and_png_work(tmp_path):
    rng = np.random.default_rng(3)
    photo, truth = astronaut_photo(rng)
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    tiny = _noise(rng, 40, 50)
    prep = _dataset(tmp_path, {"grey.jpg": grey, "tiny.jpg": tiny, "colour.png": photo})
    s = build_face_crops(prep, size=SIZE, progress=False)
    b = _boxes(prep)
    assert not b.loc[0, "fallback"] and iou(b.loc[0, ["x1", "y1", "x2", "y2"]].to_numpy(float), truth) > 0.3
    assert b.loc[1, "fallback"] and s["fallback_paths"] == ["tiny.jpg"]
    assert not b.loc[2, "fallback"] and iou(b.loc[2, ["x1", "y1", "x2", "y2"]].to_numpy(float), truth) > 0.3
    crops, _ = load_face_crops(prep)
    assert crops.shape == (3, SIZE, SIZE, 3)
    assert (crops[0, ..., 0] == crops[0, ..., 1]).all()  # greyscale stays grey in RGB


def test_two_faces_keeps_most_probable_and_counts_them(tmp_path):
    rng = np.random.default_rng(4)
    img = background(rng, 600, 450)
    big = paste_astronaut(img, 1.1, 10, 40)
    small = paste_astronaut(img, 0.8, 380, 120)
    prep = _dataset(tmp_path, {"two.jpg": img})
    s = build_face_crops(prep, size=SIZE, progress=False)
    r = _boxes(prep).iloc[0]
    assert r["n_faces"] == 2 and s["counts"]["multi_face"] == 1 and not r["fallback"]
    box = (r.x1, r.y1, r.x2, r.y2)
    assert max(iou(box, big), iou(box, small)) > 0.3


def test_decode_failure_names_the_file(tmp_path):
    rng = np.random.default_rng(5)
    prep = _dataset(tmp_path, {"ok.jpg": _noise(rng), "bad.jpg": _noise(rng)})
    (tmp_path / "ds" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(DataError, match="bad.jpg"):
        build_face_crops(prep, size=SIZE, progress=False, batch_size=1, workers=1)
    with pytest.raises(DataError, match="maskcls faces"):
        load_face_crops(prep)
    with pytest.raises(ConfigError, match="center, full"):
        build_face_crops(prep, fallback="top", progress=False)


def test_resume_redoes_only_unfinished_and_equals_uninterrupted(tmp_path):
    rng = np.random.default_rng(6)
    imgs = {f"a{i}.jpg": astronaut_photo(rng)[0] for i in range(3)}
    imgs.update({f"n{i}.jpg": _noise(rng) for i in range(3)})
    prep = _dataset(tmp_path, imgs)
    full = _dataset(tmp_path, imgs, prep_name="full")
    kw = dict(size=SIZE, batch_size=2, workers=1, progress=False)

    class Stop(Exception):
        pass

    first: list[int] = []

    def stop_after_two_batches(rows):
        first.extend(rows.tolist())
        if len(first) == 4:
            raise Stop

    with pytest.raises(Stop):
        build_face_crops(prep, on_batch=stop_after_two_batches, **kw)
    done = np.load(prep / "faces" / "_done.npy")
    assert done.sum() == 4 and sorted(np.flatnonzero(done)) == sorted(first)
    assert not (prep / "faces" / "faces.json").exists()
    with pytest.raises(DataError):
        load_face_crops(prep)

    second: list[int] = []
    s = build_face_crops(prep, on_batch=lambda rows: second.extend(rows.tolist()), **kw)
    assert sorted(second) == sorted(set(range(6)) - set(first)) and s["processed"] == 2
    build_face_crops(full, **kw)
    resumed, _ = load_face_crops(prep)
    straight, _ = load_face_crops(full)
    np.testing.assert_array_equal(resumed, straight)
    pd.testing.assert_frame_equal(_boxes(prep), _boxes(full))


def test_idempotent_changed_settings_rebuild_and_dataset_untouched(tmp_path):
    rng = np.random.default_rng(7)
    prep = _dataset(tmp_path, {"a.jpg": astronaut_photo(rng)[0], "n.jpg": _noise(rng)})
    before = _tree_digest(tmp_path / "ds")
    s1 = build_face_crops(prep, size=SIZE, progress=False)
    calls: list = []
    s2 = build_face_crops(prep, size=SIZE, progress=False, on_batch=calls.append)
    assert calls == [] and s2 == s1 == json.loads((prep / "faces" / "faces.json").read_text())

    s3 = build_face_crops(prep, size=SIZE, margin=0.4, progress=False, on_batch=calls.append)
    stale = [p for p in prep.iterdir() if p.name.startswith("faces.stale-")]
    assert len(calls) == 1 and s3["margin"] == 0.4 and s3["moved_aside"] == str(stale[0])
    assert json.loads((stale[0] / "faces.json").read_text())["margin"] == 0.2
    assert _tree_digest(tmp_path / "ds") == before  # the dataset is only read

    # a changed manifest makes stored crops unusable until rebuilt
    man = pd.read_csv(prep / "manifest.csv", keep_default_na=False)
    man.iloc[::-1].to_csv(prep / "manifest.csv", index=False)
    with pytest.raises(DataError, match="different manifest"):
        load_face_crops(prep)


def test_square_region_shifts_inside_and_pads_when_too_big():
    assert square_region((10, 20, 50, 60), 384, 512, 0.0) == (10, 20, 40)
    assert square_region((0, 0, 40, 40), 384, 512, 0.5) == (0, 0, 80)  # shifted back inside
    x0, y0, side = square_region((0, 0, 30, 40), 50, 50, 0.5)  # 80 px > 50 px image: centred, padded
    assert side == 80 and (x0, y0) == (-25, -20)
    img = np.full((50, 50, 3), 200, np.uint8)
    out = crop_square(img, x0, y0, side, 80)
    assert (out[:20] == 0).all() and (out[20:70, 25:75] == 200).all() and (out[:, :25] == 0).all()
    assert fallback_region(384, 512, "center") == (0, 64, 384)
    assert fallback_region(384, 512, "full") == (-64, 0, 512)  # whole photo, padded left and right
