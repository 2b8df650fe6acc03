"""uint8 augmentation: torchvision semantics, shapes, determinism, the reference preset."""
from __future__ import annotations

import itertools
import random

import cv2
import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from maskcls.data import fastaug as A
from maskcls.data.transforms import PRESETS, create_transform


def smooth_image(h: int = 48, w: int = 64, seed: int = 0, lo: int = 20, hi: int = 235) -> np.ndarray:
    """A smooth colourful uint8 image (values in [lo, hi], so factors near 1 do not clip)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(lo, hi + 1, (6, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).contiguous()


def as_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("factor", [0.0, 0.3, 0.8, 1.25, 2.0])
@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation"])
def test_colour_ops_match_torchvision(op, factor):
    img = smooth_image()
    ours = getattr(A, f"adjust_{op}")(img, factor)
    assert ours.dtype == np.uint8 and ours.shape == img.shape
    tv = getattr(TF, f"adjust_{op}")
    assert absdiff(ours, as_hwc(tv(as_tensor(img), factor))).max() <= 3
    assert absdiff(ours, np.asarray(tv(Image.fromarray(img), factor))).max() <= 3


@pytest.mark.parametrize("hue", [-0.5, -0.3, -0.03, 0.03, 0.1, 0.25, 0.5])
def test_hue_matches_torchvision(hue):
    img = smooth_image(seed=3, lo=0, hi=255)
    d = absdiff(A.adjust_hue(img, hue), as_hwc(TF.adjust_hue(as_tensor(img), hue)))
    assert d.mean() < 0.5 and d.max() <= 6


def test_colour_ops_reject_bad_factors():
    img = smooth_image()
    with pytest.raises(ValueError):
        A.adjust_hue(img, 0.7)
    with pytest.raises(ValueError):
        A.adjust_brightness(img, -0.1)


def test_color_jitter_applies_the_four_ops_in_some_order():
    img = smooth_image(seed=5)
    f = dict(brightness=(1.3, 1.3), contrast=(0.7, 0.7), saturation=(1.6, 1.6), hue=(0.1, 0.1))
    ops = [lambda x: A.adjust_brightness(x, 1.3), lambda x: A.adjust_contrast(x, 0.7),
           lambda x: A.adjust_saturation(x, 1.6), lambda x: A.adjust_hue(x, 0.1)]
    outcomes = []
    for order in itertools.permutations(range(4)):
        x = img
        for k in order:
            x = ops[k](x)
        outcomes.append(x)
    seen = set()
    for seed in range(12):
        out = A.color_jitter(img, np.random.default_rng(seed), **f)
        matches = [k for k, o in enumerate(outcomes) if np.array_equal(o, out)]
        assert matches, "result is not any ordering of the four ops"
        seen.add(matches[0])
    assert len(seen) > 1  # the order really is random


def test_color_jitter_factor_ranges_follow_torchvision():
    img = np.full((4, 4, 3), 100, np.uint8)
    vals = {int(A.color_jitter(img, np.random.default_rng(s), brightness=0.5)[0, 0, 0]) for s in range(200)}
    assert min(vals) >= 50 and max(vals) <= 150 and max(vals) - min(vals) > 60
    assert np.array_equal(A.color_jitter(img, np.random.default_rng(0)), img)  # nothing to do


def test_random_resized_crop_params_stay_in_range():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, ch, cw = A.crop_params(100, 80, rng, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        assert 0 <= top and top + ch <= 100 and 0 <= left and left + cw <= 80
        assert 0.5 * 8000 * 0.95 <= ch * cw <= 8000
        assert 3 / 4 * 0.95 <= cw / ch <= 4 / 3 * 1.05


def test_center_square_and_resize():
    img = smooth_image(40, 30)
    sq = A.center_square(img)
    assert sq.shape == (30, 30, 3) and np.array_equal(sq, img[5:35])
    assert A.resize(sq, 30) is sq
    big = smooth_image(64, 64)
    assert np.array_equal(A.resize(big, 16), cv2.resize(big, (16, 16), interpolation=cv2.INTER_AREA))
    assert A.resize(big, (20, 24)).shape == (20, 24, 3)


def test_fast_training_transform_shape_dtype_and_determinism():
    img = smooth_image(64, 48)  # portrait, like the 384×512 photos
    tf = create_transform(is_training=True, image_size=32)
    out = tf(img, np.random.default_rng([0, 0, 7]))
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, tf(img, np.random.default_rng([0, 0, 7])))
    assert not torch.equal(out, tf(img, np.random.default_rng([0, 1, 7])))


def test_fast_eval_is_deterministic_and_unaugmented():
    img = smooth_image(64, 48)
    tf = create_transform(is_training=False, image_size=32)
    expected = A.resize(A.center_square(img), 32).transpose(2, 0, 1)
    for seed in range(3):
        assert np.array_equal(tf(img, np.random.default_rng(seed)).numpy(), expected)
    whole = create_transform(is_training=False, image_size=32, square=False)(img, None)
    assert np.array_equal(whole.numpy(), A.resize(img, 32).transpose(2, 0, 1))


def test_reference_eval_matches_torchvision_pipeline():
    img = smooth_image(512, 384, seed=2)
    tv = T.Compose([T.CenterCrop(380), T.Resize(200), T.PILToTensor()])
    ours = create_transform(preset="reference", is_training=False, image_size=200)
    assert torch.equal(ours(img, np.random.default_rng(0)), tv(Image.fromarray(img)))
    at_380 = create_transform(preset="reference", is_training=False, image_size=380)(img, None)
    assert torch.equal(at_380, T.PILToTensor()(T.CenterCrop(380)(Image.fromarray(img))))


def test_reference_training_is_deterministic_per_sample_and_leaves_global_rngs_alone():
    img = smooth_image(400, 390, seed=4)
    tf = create_transform(preset="reference", is_training=True, image_size=64)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    a = tf(img, np.random.default_rng([0, 0, 1]))
    assert torch.equal(a, tf(img, np.random.default_rng([0, 0, 1])))
    assert a.shape == (3, 64, 64) and a.dtype == torch.uint8
    assert any(not torch.equal(a, tf(img, np.random.default_rng([0, e, 1]))) for e in range(1, 4))
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        create_transform(preset="strong", is_training=True, image_size=32)
    for name in PRESETS:
        assert name in str(e.value)


def test_out_of_range_arguments_are_rejected():
    with pytest.raises(ValueError, match="hflip"):
        create_transform(is_training=True, image_size=32, hflip=1.5)
    with pytest.raises(ValueError, match="scale_min"):
        create_transform(is_training=True, image_size=32, scale_min=0)


@pytest.mark.parametrize("hw", [(512, 384), (41, 50), (30, 20)])
def test_center_crop_matches_torchvision_including_padding(hw):
    img = smooth_image(*hw, seed=6)
    tv = np.asarray(T.CenterCrop(40)(Image.fromarray(img)))
    assert np.array_equal(A.center_crop(img, 40), tv)


def test_one_color_jitter_applies_exactly_one_op_of_the_four():
    img = smooth_image(seed=7)
    f = dict(brightness=(1.3, 1.3), contrast=(0.7, 0.7), saturation=(1.6, 1.6), hue=(0.1, 0.1))
    singles = [A.adjust_brightness(img, 1.3), A.adjust_contrast(img, 0.7), A.adjust_saturation(img, 1.6),
               A.adjust_hue(img, 0.1)]
    seen = set()
    for seed in range(40):
        out = A.one_color_jitter(img, np.random.default_rng(seed), A.jitter_ranges(**f))
        matches = [k for k, o in enumerate(singles) if np.array_equal(o, out)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}  # uniform choice: all four come up in 40 draws
    assert np.array_equal(A.one_color_jitter(img, np.random.default_rng(0), A.jitter_ranges()), img)  # no-op


def test_reference_fast_matches_the_reference_preset():
    img = smooth_image(512, 384, seed=8)
    for size in (380, 200):  # evaluation: CenterCrop 380 (+ resize), torchvision vs OpenCV
        ref = create_transform(preset="reference", is_training=False, image_size=size)(img, None)
        ours = create_transform(preset="reference_fast", is_training=False, image_size=size)(img, None)
        assert ours.shape == ref.shape == (3, size, size)
        assert (ours.int() - ref.int()).abs().max() <= (0 if size == 380 else 3)
    # training: the centre window, maybe flipped, then one ColorJitter of the recipe's ranges
    tf = create_transform(preset="reference_fast", is_training=True, image_size=380)
    crop = A.center_crop(img, 380)
    outs = [tf(img, np.random.default_rng([0, 0, k])).numpy().transpose(1, 2, 0) for k in range(12)]
    assert all(o.shape == (380, 380, 3) for o in outs)
    assert torch.equal(torch.from_numpy(outs[0]), torch.from_numpy(
        tf(img, np.random.default_rng([0, 0, 0])).numpy().transpose(1, 2, 0)))
    flipped = sum(np.corrcoef(o[..., 1].ravel(), crop[:, ::-1, 1].ravel())[0, 1]
                  > np.corrcoef(o[..., 1].ravel(), crop[..., 1].ravel())[0, 1] for o in outs)
    assert 0 < flipped < 12
