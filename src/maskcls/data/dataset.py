"""The dataset: images from files or a uint8 array, augmented per (seed, epoch, index).

Design points (each one prevents a real failure):
* All state lives in numpy arrays (paths as one fixed-width bytes array), never in Python
  lists: every DataLoader worker touching list items would copy them page by page
  (reference counts live in the objects), multiplying memory by the number of workers.
* The augmentation RNG is ``np.random.default_rng([seed, epoch, index])``: a sample is
  augmented the same way whichever worker draws it, for any ``num_workers``, and a
  resumed run sees exactly the images an uninterrupted one would.
* Loaders use non-persistent workers, so a worker forked for epoch ``e`` sees
  ``set_epoch(e)`` (:func:`maskcls.data.loader.set_epoch` sets it on dataset and sampler).
* A file that cannot be decoded (or has gone) raises :class:`DataError` naming it and the
  fix — never a silent skip (that would change the epoch's contents) and never a hang.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .imageio import read_rgb

log = logging.getLogger(__name__)
MISSING_FIX = ("it was deleted or the dataset moved since `maskcls prepare`; restore it, or re-run `maskcls prepare` "
               "on the data's current location (`maskcls predict RUN --data` also takes it)")


class ImageSource(Protocol):
    def __len__(self) -> int: ...
    def read(self, i: int) -> np.ndarray: ...
    def name(self, i: int) -> str: ...


class FileSource:
    """Images decoded from files. ``fast[i]`` = the libjpeg-turbo path gives the same pixels
    (``prepare``'s probe says so); None = PIL for every file (always correct, ≈2× slower)."""

    def __init__(self, paths: Sequence[str | os.PathLike], fast: Sequence[bool] | None = None):
        self.paths = np.array([os.fsencode(p) for p in paths], dtype="S")
        if fast is None:
            self.fast = np.zeros(len(self.paths), dtype=bool)
        else:
            self.fast = np.asarray(fast, dtype=bool)
            if self.fast.shape != self.paths.shape:
                raise ValueError(f"fast has {self.fast.size} entries for {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return os.fsdecode(self.paths[i])

    def read(self, i: int) -> np.ndarray:
        return read_rgb(self.name(i), fast=bool(self.fast[i]))


class ArraySource:
    """Images as rows of an ``N×H×W×3`` uint8 array (the crop cache, face crops), read lazily.

    Args:
        array: the array, typically a read-only memory map.
        rows: which rows, in dataset order (default: all of them).
    """

    def __init__(self, array: np.ndarray, rows: Sequence[int] | None = None):
        if array.ndim != 4 or array.shape[3] != 3 or array.dtype != np.uint8:
            raise ValueError(f"ArraySource needs an N×H×W×3 uint8 array, got {array.shape} {array.dtype}")
        self.array = array
        self.rows = np.arange(len(array)) if rows is None else np.asarray(rows, dtype=np.int64)
        self._plain = np.asarray(array)  # an ndarray view: no memmap __getitem__ per image

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, i: int) -> str:
        return f"{getattr(self.array, 'filename', None) or 'array'}[{self.rows[i]}]"

    def read(self, i: int) -> np.ndarray:
        return self._plain[self.rows[i]]  # a read-only view; transforms never write their input


class ImageDataset(Dataset):
    """``ds[i] → (uint8 C×H×W tensor, label, i)``; labels are int64 (−1 = unlabelled).

    Args:
        source: a :class:`FileSource` or :class:`ArraySource`.
        labels: one integer per image, or None for unlabelled images (prediction).
        transform: ``(uint8 HWC array, numpy Generator) → uint8 CHW tensor``, e.g. from
            :func:`maskcls.data.transforms.create_transform`.
        seed: base seed of the per-sample augmentation RNG (non-negative).
    """

    def __init__(self, source: ImageSource, labels: np.ndarray | None,
                 transform: Callable[[np.ndarray, np.random.Generator], torch.Tensor], *, seed: int = 0):
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        n = len(source)
        labels = np.full(n, -1, dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ValueError(f"{labels.shape[0] if labels.ndim else 0} labels for {n} images")
        self.source, self.labels, self.transform = source, labels, transform
        self._writes_out = getattr(transform, "writes_out", False)  # see load_into
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream; call before creating the epoch's loader."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def _sample(self, i: int) -> tuple[np.ndarray, np.random.Generator]:
        """Decoded image ``i`` and its augmentation RNG (a function of seed, epoch, index)."""
        try:
            img = self.source.read(i)
        except DataError:
            raise
        except FileNotFoundError:  # deleted, or the dataset moved, after prepare checked it
            raise DataError(f"image {self.source.name(i)} not found: {MISSING_FIX}") from None
        except Exception as e:  # anything else a decoder throws: name the file
            raise DataError(f"{self.source.name(i)}: cannot read image ({type(e).__name__}: {e})") from e
        return img, np.random.default_rng([self.seed, self.epoch, i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        i = int(i)
        img, rng = self._sample(i)
        return self.transform(img, rng), int(self.labels[i]), i

    def load_into(self, i: int, out: torch.Tensor) -> tuple[int, int]:
        """``ds[i]`` written into ``out`` (a slot of a batch tensor); returns (label, i).

        The transforms of :mod:`.transforms` write their last step straight into ``out``,
        which spares one copy of every image; any other callable is copied in.
        """
        i = int(i)
        img, rng = self._sample(i)
        if self._writes_out:
            self.transform(img, rng, out=out)
        else:
            out.copy_(self.transform(img, rng))
        return int(self.labels[i]), i
