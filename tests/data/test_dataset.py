"""Datasets, loaders and the crop cache on tiny generated images."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from maskcls.data import fastaug as A
from maskcls.data.cache import build_cache, cache_paths
from maskcls.data.dataset import ArraySource, FileSource, ImageDataset
from maskcls.data.imageio import read_pil, read_rgb
from maskcls.data.loader import ThreadLoader, build_loader, set_epoch
from maskcls.data.sampler import EpochSampler
from maskcls.data.transforms import create_transform
from maskcls.errors import DataError


def make_loader(ds, *, batch_size, shuffle_seed, epoch, num_workers, kind="auto"):
    """A loader as training builds one: an epoch-seeded sampler, build_loader, then set_epoch."""
    sampler = EpochSampler(len(ds), seed=shuffle_seed or 0, shuffle=shuffle_seed is not None)
    loader = build_loader(ds, batch_size=batch_size, sampler=sampler, workers=num_workers, kind=kind)
    set_epoch(loader, epoch)
    return loader


def photo(seed: int, h: int = 64, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (5, 4, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)


def write_jpegs(folder: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        p = folder / f"img{i}.jpg"
        Image.fromarray(photo(i)).save(p, quality=90)
        paths.append(str(p))
    return paths


@pytest.fixture
def jpegs(tmp_path):
    return write_jpegs(tmp_path, 8)


def train_dataset(paths, seed=0):
    tf = create_transform(is_training=True, image_size=32, jitter_p=1.0)
    return ImageDataset(FileSource(paths, [True] * len(paths)), np.arange(len(paths)) % 3, tf, seed=seed)


def test_sample_is_a_function_of_seed_epoch_index(jpegs):
    ds = train_dataset(jpegs)
    x, label, idx = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8 and (label, idx) == (0, 3)
    assert torch.equal(x, train_dataset(jpegs)[3][0])  # a fresh dataset: same pixels
    ds.set_epoch(1)
    assert not torch.equal(x, ds[3][0])
    ds.set_epoch(0)
    assert torch.equal(x, ds[3][0])
    assert not torch.equal(x, train_dataset(jpegs, seed=1)[3][0])


def batches(loader):
    return [tuple(t.clone() for t in b) for b in loader]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_loader_batches_do_not_depend_on_worker_count(jpegs, kind):
    ds = train_dataset(jpegs)
    one = batches(make_loader(ds, batch_size=3, shuffle_seed=5, epoch=2, num_workers=0))
    two = batches(make_loader(ds, batch_size=3, shuffle_seed=5, epoch=2, num_workers=2, kind=kind))
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)
    images, labels, index = one[0]
    assert images.dtype == torch.uint8 and labels.dtype == torch.int64 and index.dtype == torch.int64
    assert sorted(torch.cat([b[2] for b in one]).tolist()) == list(range(8))


def test_shuffle_order_is_per_epoch(jpegs):
    ds = train_dataset(jpegs)
    order = lambda e: torch.cat([b[2] for b in make_loader(ds, batch_size=4, shuffle_seed=1, epoch=e, num_workers=0)])
    assert torch.equal(order(0), order(0))
    assert not torch.equal(order(0), order(1))
    seq = torch.cat([b[2] for b in make_loader(ds, batch_size=4, shuffle_seed=None, epoch=0, num_workers=0)])
    assert seq.tolist() == list(range(8))


def test_corrupt_file_raises_data_error_naming_it(tmp_path, jpegs):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = train_dataset(jpegs[:2] + [str(bad)])
    with pytest.raises(DataError, match="broken.jpg"):
        ds[2]
    for kind in ("processes", "threads"):  # and from a worker: an error, not a hang
        with pytest.raises(DataError, match="broken.jpg"):
            list(make_loader(ds, batch_size=3, shuffle_seed=None, epoch=0, num_workers=1, kind=kind))


def test_load_into_writes_the_sample_into_a_batch_slot(jpegs):
    for tf in (create_transform(is_training=True, image_size=32, jitter_p=1.0),
               lambda img, rng: torch.from_numpy(np.ascontiguousarray(A.resize(img, 32).transpose(2, 0, 1)))):
        ds = ImageDataset(FileSource(jpegs), np.arange(8), tf, seed=4)
        batch = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
        assert ds.load_into(5, batch[1]) == (5, 5)
        assert torch.equal(batch[1], ds[5][0]) and not batch[0].any()


def test_thread_loader_drop_last_early_exit_and_kind_choice(jpegs, monkeypatch):
    ds = train_dataset(jpegs)
    loader = ThreadLoader(ds, batch_size=3, sampler=range(8), threads=2, drop_last=True)
    got = batches(loader)
    assert len(loader) == len(got) == 2 and torch.cat([b[2] for b in got]).tolist() == list(range(6))
    it = iter(ThreadLoader(ds, batch_size=1, sampler=range(8), threads=2, prefetch=3))
    first = next(it)
    it.close()  # leaving the loop early: pending batches are cancelled, the pool shut down
    assert first[2].tolist() == [0]
    assert not any(t.name.startswith("maskcls-loader") for t in threading.enumerate())
    assert isinstance(build_loader(ds, batch_size=2, sampler=range(8), workers=2, kind="threads"), ThreadLoader)
    with monkeypatch.context() as m:  # auto: threads with CUDA, processes without
        m.setattr(torch.cuda, "is_available", lambda: True)
        assert isinstance(build_loader(ds, batch_size=2, sampler=range(8), workers=2), ThreadLoader)
        ref = ImageDataset(FileSource(jpegs), None, create_transform(preset="reference", is_training=True,
                                                                     image_size=16))
        assert isinstance(build_loader(ref, batch_size=2, sampler=range(8), workers=2), DataLoader)  # global RNGs
    if not torch.cuda.is_available():
        assert isinstance(build_loader(ds, batch_size=2, sampler=range(8), workers=2), DataLoader)
    assert isinstance(build_loader(ds, batch_size=2, sampler=range(8), workers=0), DataLoader)
    with pytest.raises(ValueError, match="threads, processes"):
        build_loader(ds, batch_size=2, sampler=range(8), workers=2, kind="fibers")


def test_fast_decode_matches_pil(jpegs):
    for p in jpegs[:3]:
        fast, slow = read_rgb(p, fast=True), read_pil(p)
        assert fast.shape == slow.shape
        assert np.abs(fast.astype(int) - slow.astype(int)).max() <= 2


def test_odd_image_modes_come_out_rgb(tmp_path):
    rgb = photo(1, 40, 40)
    cmyk = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(cmyk, quality=95)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(rgb).convert("L").save(grey, quality=95)
    rgba = np.dstack([rgb, np.full((40, 40), 255, np.uint8)])
    rgba[:10, :10, 3] = 0  # fully transparent corner
    png = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(png)
    paths = [str(cmyk), str(grey), str(png)]
    for fast in (True, False):
        src = FileSource(paths, [fast] * 3)
        for i in range(3):
            img = src.read(i)
            assert img.dtype == np.uint8 and img.shape == (40, 40, 3)
        g = src.read(1)
        assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 1], g[..., 2])
        assert (src.read(2)[:10, :10] == 255).all()  # alpha composited on white
        expected = np.asarray(Image.open(cmyk).convert("RGB")).astype(int)
        assert np.abs(src.read(0).astype(int) - expected).max() <= 2
    ds = ImageDataset(FileSource(paths), None, create_transform(is_training=False, image_size=16))
    x, label, _ = ds[0]
    assert x.shape == (3, 16, 16) and label == -1


def test_paths_are_stored_as_a_bytes_array(tmp_path):
    src = FileSource([str(tmp_path / "é.jpg"), str(tmp_path / "b.jpg")])
    assert isinstance(src.paths, np.ndarray) and src.paths.dtype.kind == "S"
    assert src.name(0) == str(tmp_path / "é.jpg")


def test_cache_holds_centre_square_crops_and_is_reused(tmp_path, jpegs):
    arr = build_cache(jpegs, [True] * 8, tmp_path / "cache", side=24)
    assert isinstance(arr, np.memmap) and arr.shape == (8, 24, 24, 3) and arr.dtype == np.uint8
    expected = A.resize(A.center_square(read_rgb(jpegs[2])), 24)
    assert np.array_equal(arr[2], expected)
    npy, meta = cache_paths(tmp_path / "cache", 24)
    stamp = (npy.stat().st_mtime_ns, meta.stat().st_mtime_ns)
    again = build_cache(jpegs, [True] * 8, tmp_path / "cache", side=24)
    assert (npy.stat().st_mtime_ns, meta.stat().st_mtime_ns) == stamp  # no rebuild
    assert np.array_equal(again, arr)
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "cache").iterdir())
    ds = ImageDataset(ArraySource(again), np.zeros(8), create_transform(is_training=True, image_size=16))
    assert ds[0][0].shape == (3, 16, 16)


def test_center_cache_holds_centre_windows_apart_from_square_ones(tmp_path, jpegs):
    square = build_cache(jpegs, [True] * 8, tmp_path / "cache", side=40)
    center = build_cache(jpegs, [True] * 8, tmp_path / "cache", side=40, mode="center")
    img = read_rgb(jpegs[4])  # 64x48: the 40-px window is cut out, not resized
    assert np.array_equal(center[4], img[12:52, 4:44]) and np.array_equal(center[4], A.center_crop(img, 40))
    assert np.array_equal(square[4], A.resize(A.center_square(img), 40))
    assert cache_paths(tmp_path / "cache", 40, "center")[0].is_file()
    assert cache_paths(tmp_path / "cache", 40)[0].is_file()  # two caches side by side
    with pytest.raises(ValueError, match="square, center"):
        build_cache(jpegs, None, tmp_path / "cache", side=40, mode="zoom")


@pytest.mark.slow
def test_cache_rebuilds_when_an_input_changes(tmp_path, jpegs):
    arr = build_cache(jpegs, None, tmp_path / "cache", side=24)
    before = np.array(arr[5])
    npy, _ = cache_paths(tmp_path / "cache", 24)
    stamp = npy.stat().st_mtime_ns
    Image.fromarray(photo(99)).save(jpegs[5], quality=90)  # new content
    st = os.stat(jpegs[5])
    os.utime(jpegs[5], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rebuilt = build_cache(jpegs, None, tmp_path / "cache", side=24)
    assert npy.stat().st_mtime_ns != stamp
    assert not np.array_equal(rebuilt[5], before)
    assert np.array_equal(rebuilt[5], A.resize(A.center_square(read_pil(jpegs[5])), 24))
    os.utime(jpegs[0])  # touching alone (mtime changes) also invalidates
    stamp = npy.stat().st_mtime_ns
    build_cache(jpegs, None, tmp_path / "cache", side=24)
    assert npy.stat().st_mtime_ns != stamp


def test_cache_build_names_a_corrupt_file(tmp_path, jpegs):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="bad.jpg"):
        build_cache(jpegs + [str(bad)], None, tmp_path / "cache", side=16)
    npy, meta = cache_paths(tmp_path / "cache", 16)
    assert not npy.exists() and not meta.exists()
    assert not any((tmp_path / "cache").iterdir())  # no half-written file left behind


def test_array_source_checks_its_array():
    with pytest.raises(ValueError):
        ArraySource(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        ImageDataset(ArraySource(np.zeros((2, 8, 8, 3), np.uint8)), np.zeros(3), lambda x, r: x)
