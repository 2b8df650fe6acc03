"""Augmentation on uint8 HWC numpy images, fast enough to never starve a GPU.

Every op takes and returns a uint8 RGB ``H×W×3`` array (the input is never modified) and
runs as one or two OpenCV passes (only hue goes through float32, internally). The colour
ops have torchvision's semantics (``torchvision.transforms.functional.adjust_*``):

* brightness ``f``:  ``x·f``                                  (blend with black)
* contrast ``f``:    ``x·f + (1−f)·mean(grey)``              (grey = 0.299R+0.587G+0.114B)
* saturation ``f``:  ``x·f + (1−f)·grey(x)``                 (per pixel)
* hue ``h``:         hue shifted by ``h`` turns in HSV, ``h ∈ [−0.5, 0.5]``

each clipped to 0–255 and rounded, so they agree with torchvision's uint8 results within
a level or two (torchvision truncates where we round).

Randomness comes only from the ``numpy.random.Generator`` passed in: the dataset derives
it from (seed, epoch, index), which makes augmentation independent of worker scheduling.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import cv2
import numpy as np

# ITU-R 601 luma, as torchvision's rgb_to_grayscale and PIL's convert("L").
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)
# Shrinking by less than this factor uses INTER_AREA (true anti-aliasing). Milder shrinks
# use INTER_LINEAR: its 2×2 taps at a step under 2 px still see every source pixel, it
# stays within 2 levels of PIL's antialiased bilinear there (400→380 px), and INTER_AREA
# with a non-integer factor is ≈6× slower (1.7 ms vs 0.28 ms for 437→380 px, one core).
AREA_BELOW = 0.5

__all__ = [
    "center_square", "center_crop", "random_resized_crop", "resize", "hflip", "adjust_brightness",
    "adjust_contrast", "adjust_saturation", "adjust_hue", "color_jitter", "jitter_ranges", "one_color_jitter",
    "grey_mean",
]


def center_square(img: np.ndarray) -> np.ndarray:
    """The largest centred square (a view, no copy), placed as torchvision's CenterCrop."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    return img[top:top + s, left:left + s]


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``CenterCrop(size)``: the centred size×size window (a view when the image
    is large enough; otherwise zero-padded first, split as torchvision splits it)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        img = cv2.copyMakeBorder(np.ascontiguousarray(img), ph // 2, (ph + 1) // 2, pw // 2, (pw + 1) // 2,
                                 cv2.BORDER_CONSTANT, value=(0, 0, 0))
        h, w = img.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[top:top + size, left:left + size]


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize to ``size`` (int = square, or ``(height, width)``); no-op when already that size."""
    oh, ow = (size, size) if isinstance(size, int) else size
    h, w = img.shape[:2]
    if (h, w) == (oh, ow):
        return img
    shrink = min(oh / h, ow / w)
    interp = cv2.INTER_AREA if shrink < AREA_BELOW else cv2.INTER_LINEAR
    return cv2.resize(img, (ow, oh), interpolation=interp)


def crop_params(h: int, w: int, rng: np.random.Generator, scale: Sequence[float],
                ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) drawn exactly as torchvision's RandomResizedCrop.get_params."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    in_ratio = w / h  # fallback: central crop, aspect clamped into ``ratio``
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = (0.75, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """Crop a random area fraction in ``scale`` with aspect in ``ratio``; resize to size×size."""
    top, left, ch, cw = crop_params(img.shape[0], img.shape[1], rng, scale, ratio)
    return resize(img[top:top + ch, left:left + cw], size)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right (a contiguous copy)."""
    return cv2.flip(img, 1)


def _affine(img: np.ndarray, gain: float, offset: float) -> np.ndarray:
    """round(x·gain + offset) saturated to 0–255 on every channel value.

    One ``cv2.transform`` pass over the image seen as a single channel: an exact lookup
    table of an affine map, but SIMD (≈2× faster than ``cv2.LUT`` on 3-channel images).
    """
    img = np.ascontiguousarray(img)
    flat = img.reshape(img.shape[0], -1)
    m = np.array([[gain, offset]], dtype=np.float32)
    return cv2.transform(flat, m).reshape(img.shape)


def grey_mean(img: np.ndarray) -> float:
    """Mean of the greyscale image, 0.299R+0.587G+0.114B (one cheap pass)."""
    m = cv2.mean(np.ascontiguousarray(img))
    return float(GREY_WEIGHTS @ np.asarray(m[:3]))


def adjust_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    """``x·factor`` clipped (0 = black, 1 = unchanged), as torchvision's adjust_brightness."""
    if factor < 0:
        raise ValueError(f"brightness factor must be non-negative, got {factor}")
    return _affine(img, factor, 0.0)


def adjust_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the image's mean grey level (0 = flat grey), as torchvision's adjust_contrast."""
    if factor < 0:
        raise ValueError(f"contrast factor must be non-negative, got {factor}")
    return _affine(img, factor, (1.0 - factor) * grey_mean(img))


def adjust_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend each pixel with its grey value (0 = greyscale), as torchvision's adjust_saturation.

    One ``cv2.transform`` pass: the blend is the 3×3 matrix ``f·I + (1−f)·[w; w; w]``.
    """
    if factor < 0:
        raise ValueError(f"saturation factor must be non-negative, got {factor}")
    g = (1.0 - factor) * GREY_WEIGHTS  # f·I + (1−f)·[w; w; w], built without small-array numpy calls
    m = np.array([[factor + g[0], g[1], g[2]], [g[0], factor + g[1], g[2]], [g[0], g[1], factor + g[2]]],
                 dtype=np.float32)
    return cv2.transform(np.ascontiguousarray(img), m)


def adjust_hue(img: np.ndarray, hue_factor: float) -> np.ndarray:
    """Rotate hue by ``hue_factor`` turns (−0.5…0.5), as torchvision's adjust_hue.

    HSV in float32, in place (OpenCV's 8-bit HSV quantises hue to 1/256 turn and is off by
    up to 7 levels even for a zero shift; float32 is within one level of torchvision and no
    slower). The shift is taken mod 360° so that hue stays in [0, 720).
    """
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"hue_factor must be in [-0.5, 0.5], got {hue_factor}")
    shift = (hue_factor * 360.0) % 360.0
    if shift == 0.0:
        return img.copy()
    x = img.astype(np.float32)  # values 0–255: V keeps that scale, S is 0–1, H in degrees
    cv2.cvtColor(x, cv2.COLOR_RGB2HSV, dst=x)
    x[..., 0] += shift  # OpenCV wraps hue in [0, 720) back into one turn
    cv2.cvtColor(x, cv2.COLOR_HSV2RGB, dst=x)
    return cv2.convertScaleAbs(x)  # rounds and saturates; values are never negative


def _factor_range(value: float | Sequence[float], name: str, center: float = 1.0,
                  bound: tuple[float, float] = (0.0, math.inf)) -> tuple[float, float] | None:
    """torchvision's ColorJitter convention: a number v means [center−v, center+v] (clamped)."""
    if isinstance(value, numbers.Real):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        lo, hi = center - value, center + value
        lo = max(lo, bound[0])
    else:
        lo, hi = float(value[0]), float(value[1])
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ValueError(f"{name} range ({lo}, {hi}) must lie within {bound}")
    return None if lo == hi == center else (lo, hi)


def jitter_ranges(brightness: float | Sequence[float] = 0.0, contrast: float | Sequence[float] = 0.0,
                  saturation: float | Sequence[float] = 0.0, hue: float | Sequence[float] = 0.0) -> tuple:
    """The four factor ranges (None = op off) in torchvision's ColorJitter convention, checked
    once: callers that jitter every image keep the result (see :func:`one_color_jitter`)."""
    return (
        _factor_range(brightness, "brightness"),
        _factor_range(contrast, "contrast"),
        _factor_range(saturation, "saturation"),
        _factor_range(hue, "hue", center=0.0, bound=(-0.5, 0.5)),
    )


_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def one_color_jitter(img: np.ndarray, rng: np.random.Generator, ranges: tuple) -> np.ndarray:
    """The reference recipe's ``RandomChoice`` of four single-op ColorJitters: one of the four
    ops, picked uniformly (an op with an empty range leaves the image as it is, as a
    ColorJitter with nothing to do would), with its factor uniform in its range.
    ``ranges``: from :func:`jitter_ranges`."""
    k = int(rng.integers(4))
    if ranges[k] is None:
        return img.copy()
    return _OPS[k](img, rng.uniform(*ranges[k]))


def color_jitter(img: np.ndarray, rng: np.random.Generator,
                 brightness: float | Sequence[float] = 0.0, contrast: float | Sequence[float] = 0.0,
                 saturation: float | Sequence[float] = 0.0, hue: float | Sequence[float] = 0.0) -> np.ndarray:
    """torchvision's ColorJitter on uint8: factors uniform in their ranges, ops in random order.

    A number ``b`` means a factor in ``[max(0, 1−b), 1+b]`` (hue: shift in ``[−h, h]``); a pair
    is the range itself. An op whose range is empty (0 or (1, 1)) is skipped.
    """
    ranges = jitter_ranges(brightness, contrast, saturation, hue)
    order = rng.permutation(4)
    factors = [rng.uniform(*r) if r is not None else None for r in ranges]
    out = img
    for k in order:
        if factors[k] is not None:
            out = _OPS[k](out, factors[k])
    return out if out is not img else img.copy()
