"""From a prepared directory and the data config to datasets for one fold or for prediction.

This is where the image source is chosen (photos, face crops, or the uint8 crop cache), the
input size and mean/std are resolved, and transforms are created.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .dataset import FileSource, ImageDataset
from .prepared import Prepared
from .transforms import create_transform

log = logging.getLogger(__name__)


class RowSource:
    """Rows ``rows`` of an N×S×S×3 uint8 array (face crops / cache), read lazily from a memmap."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows, dtype=np.int64)
        self._plain = np.asarray(array)  # an ndarray view: no memmap __getitem__ per image

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int) -> np.ndarray:
        return self._plain[self.rows[i]]  # a read-only view; transforms never write their input

    def name(self, i: int) -> str:
        return f"crop #{self.rows[i]}"


@dataclass
class Preprocessing:
    """Everything prediction must repeat exactly: recorded in checkpoints and exports."""
    image_size: int
    mean: list[float]
    std: list[float]
    faces: bool
    preset: str

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "faces": self.faces, "preset": self.preset}


def resolve_preprocessing(cfg: DataConfig, prep: Prepared, model_size: int, model_mean, model_std) -> Preprocessing:
    size = cfg.image_size or model_size
    if cfg.normalize == "custom":
        mean, std = cfg.mean, cfg.std
    elif cfg.normalize == "dataset":
        stats = prep.stats()
        if stats is None:
            raise ConfigError(f"data.normalize=dataset needs {prep.dir / 'stats.json'}; run `maskcls stats "
                              f"{prep.dir}` first, or use data.normalize=model")
        if cfg.faces and stats.get("source") != "faces":
            log.warning("stats.json was computed on photos but training uses face crops")
        mean, std = stats["mean"], stats["std"]
    else:
        mean, std = list(model_mean), list(model_std)
    return Preprocessing(int(size), [float(x) for x in mean], [float(x) for x in std], cfg.faces, cfg.preset)


def _source(prep: Prepared, rows: pd.DataFrame, *, faces: bool, cache: bool, image_size: int, preset: str):
    if faces:
        from .faces import load_face_crops
        crops, _ = load_face_crops(prep.dir)
        return RowSource(crops, rows.index.to_numpy())
    paths, fast = prep.abs_paths(rows), rows["fast"].to_numpy()
    if cache:
        # One cache over all training rows, shared by every fold (a per-fold row set would
        # change the cache key and rebuild it for each fold).
        # The reference presets crop the photo's centre 380 px first: cache exactly that window.
        from .cache import build_cache
        from .transforms import REFERENCE_CROP
        side, mode = ((REFERENCE_CROP, "center") if preset.startswith("reference")
                      else (int(round(image_size * 1.15)), "square"))
        everything = prep.train_rows()
        arr = build_cache(prep.abs_paths(everything), everything["fast"].to_numpy(), prep.dir / "cache", side,
                          workers=os.cpu_count() or 2, mode=mode)
        return RowSource(arr, everything.index.get_indexer(rows.index))
    return FileSource(paths, fast)


def make_dataset(prep: Prepared, rows: pd.DataFrame, cfg: DataConfig, pp: Preprocessing, *, training: bool,
                 seed: int) -> ImageDataset:
    """Dataset over manifest ``rows`` (uint8 CHW tensors, label, row position)."""
    if training:
        tf = create_transform(preset=cfg.preset, is_training=True, image_size=pp.image_size,
                              scale_min=cfg.scale_min, hflip=cfg.hflip, brightness=cfg.brightness,
                              contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue, jitter_p=cfg.jitter_p)
    else:
        tf = create_transform(preset=cfg.preset, is_training=False, image_size=pp.image_size)
    labels = rows["label"].to_numpy(np.int64)
    src = _source(prep, rows, faces=pp.faces, cache=cfg.cache and training, image_size=pp.image_size,
                  preset=cfg.preset)
    return ImageDataset(src, labels, tf, seed=seed)


def fold_rows(prep: Prepared, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    tr = prep.train_rows()
    if fold not in set(tr["fold"]):
        raise DataError(f"fold {fold} does not exist in {prep.dir} (folds 0..{prep.num_folds - 1})")
    return tr[tr["fold"] != fold], tr[tr["fold"] == fold]


def paths_dataset(paths: list[str], cfg_preset: str, pp: Preprocessing, *,
                  face_settings: dict | None = None) -> ImageDataset:
    """Dataset over arbitrary image files (``maskcls predict RUN photo.jpg``); labels are -1.

    A run trained on face crops gets its faces detected and cropped the same way first.
    """
    tf = create_transform(preset=cfg_preset, is_training=False, image_size=pp.image_size)
    labels = np.full(len(paths), -1, np.int64)
    if pp.faces:
        from .faces import crop_files
        if not face_settings:
            raise DataError("this run trained on face crops but its checkpoint records no face settings; "
                            "predict its eval set (maskcls predict RUN) instead")
        crops = crop_files(list(paths), face_settings)
        return ImageDataset(RowSource(crops, np.arange(len(paths))), labels, tf, seed=0)
    return ImageDataset(FileSource(np.asarray(paths), None), labels, tf, seed=0)
