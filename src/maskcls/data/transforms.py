"""Transform factory: a decoded uint8 HWC image + a per-sample RNG → a uint8 CHW tensor.

Transforms never produce floats. Normalisation ``(x/255 − mean)/std`` runs on the device
inside the model wrapper; since torchvision's ToTensor on a uint8 PIL image is exactly
``x/255``, the result is numerically what ToTensor+Normalize would give.

Randomness comes only from the ``numpy.random.Generator`` argument, which the dataset
derives from (seed, epoch, index): augmentations are reproducible for any number of
workers and exact on resume.

Presets:
* ``fast`` — centre square, RandomResizedCrop (area ``scale_min``…1), horizontal flip,
  colour jitter with probability ``jitter_p``, all on uint8 with OpenCV (:mod:`.fastaug`).
* ``reference_fast`` — the reference recipe's augmentation (CenterCrop 380, flip, one of four
  ColorJitters with its ranges) on the uint8 OpenCV ops of ``fast``: the same semantics,
  within a few grey levels of torchvision (the loader benchmark compares the two).
* ``reference`` — the reference recipe exactly, with torchvision's PIL transforms: CenterCrop
  380, RandomHorizontalFlip, RandomChoice of four ColorJitters (brightness/contrast/
  saturation 0.2–3, hue ±0.3), then Resize(image_size) when image_size ≠ 380. Its
  evaluation transform is CenterCrop(+Resize) only: the reference augmented validation
  images too, which was a defect we do not reproduce.
"""
from __future__ import annotations

import random
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from . import fastaug as A

PRESETS = ("fast", "reference_fast", "reference")
REFERENCE_CROP = 380
# The reference's RandomChoice of four ColorJitters, as factor ranges for fastaug.
REFERENCE_JITTER = dict(brightness=(0.2, 3.0), contrast=(0.2, 3.0), saturation=(0.2, 3.0), hue=(-0.3, 0.3))

Transform = Callable[[np.ndarray, np.random.Generator], torch.Tensor]


def to_chw(img: np.ndarray, out: torch.Tensor | None = None) -> torch.Tensor:
    """HWC uint8 array → contiguous CHW uint8 tensor (one ``cv2.split`` pass, ≈25 µs at 380 px).

    Contiguous planes make the batch collate a plain copy, and the device's normalisation
    a fast per-plane operation. ``out``: a contiguous 3×H×W uint8 tensor to write into
    (a slot of a batch: saves a copy of every image).
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.strides[1:] != (3, 1):
        img = np.ascontiguousarray(img)  # OpenCV needs packed pixels (rows may be strided)
    if out is None:
        out = torch.empty((3, img.shape[0], img.shape[1]), dtype=torch.uint8)
    elif out.shape != (3, img.shape[0], img.shape[1]) or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous uint8 tensor of shape (3, {img.shape[0]}, {img.shape[1]}), "
                         f"got {tuple(out.shape)} {out.dtype}")
    planes = out.numpy()
    cv2.split(img, [planes[0], planes[1], planes[2]])
    return out


class FastTrain:
    """Training transform of the ``fast`` preset (picklable, so it crosses into workers)."""

    writes_out = True  # accepts out= (see ImageDataset.load_into)

    def __init__(self, image_size: int, scale_min: float, hflip: float, jitter_p: float,
                 jitter: dict, square: bool):
        self.image_size, self.scale = image_size, (scale_min, 1.0)
        self.hflip, self.jitter_p, self.jitter, self.square = hflip, jitter_p, jitter, square

    def __call__(self, img: np.ndarray, rng: np.random.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.square:
            img = A.center_square(img)
        img = A.random_resized_crop(img, rng, self.image_size, scale=self.scale)
        if rng.random() < self.hflip:
            img = A.hflip(img)
        if rng.random() < self.jitter_p:
            img = A.color_jitter(img, rng, **self.jitter)
        return to_chw(img, out)

    def __repr__(self) -> str:
        return (f"FastTrain(size={self.image_size}, scale={self.scale}, hflip={self.hflip}, "
                f"jitter_p={self.jitter_p}, jitter={self.jitter}, square={self.square})")


class FastEval:
    """Evaluation transform of the ``fast`` preset: centre square resized; no randomness."""

    writes_out = True  # accepts out= (see ImageDataset.load_into)

    def __init__(self, image_size: int, square: bool):
        self.image_size, self.square = image_size, square

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        if self.square:
            img = A.center_square(img)
        return to_chw(A.resize(img, self.image_size), out)

    def __repr__(self) -> str:
        return f"FastEval(size={self.image_size}, square={self.square})"


class FastReference:
    """Preset ``reference_fast``: CenterCrop 380 → (training: flip 0.5, one of the reference's
    four ColorJitters) → resize to image_size when it is not 380; uint8 OpenCV ops."""

    writes_out = True  # accepts out= (see ImageDataset.load_into)

    def __init__(self, image_size: int, is_training: bool):
        self.image_size, self.is_training = image_size, is_training
        self.ranges = A.jitter_ranges(**REFERENCE_JITTER)

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        img = A.center_crop(img, REFERENCE_CROP)
        if self.is_training:
            if rng.random() < 0.5:
                img = A.hflip(img)
            img = A.one_color_jitter(img, rng, self.ranges)
        return to_chw(A.resize(img, self.image_size), out)

    def __repr__(self) -> str:
        return f"FastReference(size={self.image_size}, training={self.is_training})"


class Reference:
    """The reference recipe with torchvision's v1 PIL transforms, made deterministic per sample.

    torchvision draws from torch's and Python's global RNGs; both are seeded from the
    per-sample generator inside a saved/restored state, so the caller's RNGs are untouched.
    Global RNGs make it unsafe in threads: loaders run it in worker processes.
    """

    thread_safe = False
    writes_out = True

    def __init__(self, image_size: int, is_training: bool):
        import torchvision.transforms as T  # imported here: only this preset needs it
        steps = [T.CenterCrop(REFERENCE_CROP)]
        if is_training:
            steps += [
                T.RandomHorizontalFlip(0.5),
                reference_jitter(),
            ]
        if image_size != REFERENCE_CROP:
            steps.append(T.Resize(image_size))
        self.pipeline = T.Compose(steps)
        self.image_size, self.is_training = image_size, is_training

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        pil = Image.fromarray(img)
        if not self.is_training:
            pil_out = self.pipeline(pil)
        else:
            seed = int(rng.integers(0, 2**63 - 1)) if rng is not None else 0
            py_state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                try:
                    pil_out = self.pipeline(pil)
                finally:
                    random.setstate(py_state)
        return to_chw(np.asarray(pil_out.convert("RGB")), out)

    def __repr__(self) -> str:
        return f"Reference(size={self.image_size}, training={self.is_training}, {self.pipeline!r})"


def reference_jitter():
    """The reference recipe's colour augmentation: one of four ColorJitters (brightness up to x3)."""
    import torchvision.transforms as T
    return T.RandomChoice([
        T.ColorJitter(brightness=(0.2, 3)),
        T.ColorJitter(contrast=(0.2, 3)),
        T.ColorJitter(saturation=(0.2, 3)),
        T.ColorJitter(hue=(-0.3, 0.3)),
    ])


def create_transform(*, preset: str = "fast", is_training: bool, image_size: int,
                     scale_min: float = 0.75, hflip: float = 0.5, brightness: float = 0.2,
                     contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.03,
                     jitter_p: float = 0.8, square: bool = True) -> Transform:
    """Build the transform ``(uint8 HWC array, rng) → uint8 CHW tensor of image_size²``.

    Args:
        preset: ``"fast"`` (uint8 OpenCV augmentation), ``"reference_fast"`` (the reference
            recipe's augmentation on the same uint8 ops) or ``"reference"`` (the reference
            recipe with torchvision PIL transforms). The two reference presets ignore the
            remaining augmentation arguments: the recipe fixes them.
        is_training: augment (training) or only crop and resize (evaluation, prediction).
        image_size: output side in pixels.
        scale_min: smallest area fraction kept by RandomResizedCrop. 0.75 keeps the face
            whole: photos are face-centred and the age/mask cues sit at its edges.
        hflip: probability of a horizontal flip (faces are left-right symmetric).
        brightness, contrast, saturation: jitter factor drawn in ``[max(0, 1−v), 1+v]``.
            0.2 rather than the reference's ×3, which washes faces out.
        hue: hue shift drawn in ``[−hue, hue]`` turns; small, since skin tone matters.
        jitter_p: probability of applying the colour jitter to an image.
        square: take the centred square of the photo first (384×512 photos have the face
            in the middle); False resizes the whole image to image_size² instead.

    Raises:
        ValueError: unknown preset or an argument out of range.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown transform preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    for name, p in (("hflip", hflip), ("jitter_p", jitter_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {p}")
    if not 0.0 < scale_min <= 1.0:
        raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise ValueError(f"{name} must be non-negative, got {v}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    if preset == "reference":
        return Reference(image_size, is_training)
    if preset == "reference_fast":
        return FastReference(image_size, is_training)
    if not is_training:
        return FastEval(image_size, square)
    jitter = dict(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)
    return FastTrain(image_size, scale_min, hflip, jitter_p, jitter, square)
