"""A fold's datasets and loaders (and prediction's), from a prepared directory and the data config.

This is where the image source is chosen (photos, face crops, or the uint8 crop cache), the
input size and mean/std are resolved into a :class:`Preprocessing` (what prediction must
repeat exactly), the loader's kind and workers are resolved, and transforms are created.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from ..config import Config, DataConfig
from ..data.dataset import ArraySource, FileSource, ImageDataset
from ..data.loader import build_loader
from ..data.preprocessing import Preprocessing
from ..data.sampler import EpochSampler, balanced_weights
from ..data.transforms import REFERENCE_CROP, create_transform
from ..errors import ConfigError, DataError
from ..fsutil import default_workers
from ..prep.prepared import Prepared
from ..task import Task, age_group

log = logging.getLogger(__name__)


def resolve_preprocessing(cfg: DataConfig, prep: Prepared, model_size: int, model_mean, model_std) -> Preprocessing:
    """The input size and mean/std actually used: the config's, the dataset's stats or the model's."""
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


def resolve_loader(cfg: DataConfig) -> tuple[int, str]:
    """(workers, kind) actually used: ``num_workers`` null → one per CPU (at most 8); ``loader``
    auto → threads when CUDA is present and the preset is thread-safe, else processes."""
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    kind = cfg.loader
    if kind == "threads" and cfg.preset == "reference" and workers > 0:
        raise ConfigError("data.loader=threads cannot run data.preset=reference: its torchvision transforms draw from "
                          "the process-wide RNGs, so threads would make every epoch's augmentation depend on timing; "
                          "use data.loader=processes (or auto), or data.preset=reference_fast (the same recipe, "
                          "thread-safe)")
    if kind == "auto":
        # the 'reference' preset draws from torch's and Python's global RNGs: not thread-safe
        kind = "threads" if torch.cuda.is_available() and cfg.preset != "reference" else "processes"
    return workers, kind


def _source(prep: Prepared, rows: pd.DataFrame, *, faces: bool, cache: bool, image_size: int, preset: str):
    if faces:
        from ..prep.faces import load_face_crops
        crops, _ = load_face_crops(prep.dir)
        return ArraySource(crops, rows.index.to_numpy())
    if cache:
        # One cache over all training rows, shared by every fold (a per-fold row set would
        # change the cache key and rebuild it for each fold).
        # The reference presets crop the photo's centre 380 px first: cache exactly that window.
        from ..data.cache import build_cache
        side, mode = ((REFERENCE_CROP, "center") if preset.startswith("reference")
                      else (int(round(image_size * 1.15)), "square"))
        everything = prep.fit_rows()
        arr = build_cache(prep.abs_paths(everything), everything["fast"].to_numpy(), prep.dir / "cache", side,
                          workers=default_workers(), mode=mode)
        return ArraySource(arr, everything.index.get_indexer(rows.index))
    return FileSource(prep.abs_paths(rows), rows["fast"].to_numpy())


def make_dataset(prep: Prepared, rows: pd.DataFrame, cfg: DataConfig, pp: Preprocessing, *, training: bool,
                 seed: int, labels: np.ndarray | None = None) -> ImageDataset:
    """Dataset over manifest ``rows`` (uint8 CHW tensors, label, row position).

    ``labels``: the targets to serve (default: the rows' ``label`` column).
    """
    if training:
        tf = create_transform(preset=cfg.preset, is_training=True, image_size=pp.image_size,
                              scale_min=cfg.scale_min, hflip=cfg.hflip, brightness=cfg.brightness,
                              contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue, jitter_p=cfg.jitter_p)
    else:
        tf = create_transform(preset=cfg.preset, is_training=False, image_size=pp.image_size)
    labels = rows["label"].to_numpy(np.int64) if labels is None else labels
    src = _source(prep, rows, faces=pp.faces, cache=cfg.cache and training, image_size=pp.image_size,
                  preset=cfg.preset)
    return ImageDataset(src, labels, tf, seed=seed)


def fold_rows(prep: Prepared, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, validation rows) of ``fold``; pseudo-labelled rows are always in training."""
    tr = prep.train_rows()
    if fold not in set(tr["fold"]):
        raise DataError(f"fold {fold} does not exist in {prep.dir} (folds 0..{prep.num_folds - 1})")
    fit = prep.fit_rows()
    return fit[fit["fold"] != fold], tr[tr["fold"] == fold]


def _some_classes(task: Task) -> str:
    """The task's first class names, for messages."""
    return ", ".join(task.class_names[:4]) + ("…" if task.num_classes > 4 else "")


def training_labels(rows: pd.DataFrame, task: Task, old_age: int | None) -> np.ndarray:
    """The targets training sees: the rows' labels, or with ``old_age`` the age group re-drawn at
    that threshold from the raw ages (validation always keeps the dataset's labels)."""
    labels = rows["label"].to_numpy(np.int64)
    if old_age is None or old_age == task.old_age:
        return labels
    if task.attribute("age") is None:
        raise ConfigError(f"train.old_age={old_age} needs an age attribute; this task's classes are "
                          f"{_some_classes(task)}: remove train.old_age")
    years = rows["age_years"].to_numpy(np.int64)
    if (years < 0).any():
        raise ConfigError(f"train.old_age={old_age} needs the raw ages, but {int((years < 0).sum())} training "
                          "rows have only an age group (the CSV's age column held groups): remove train.old_age")
    codes = {a.name: v for a, v in zip(task.attributes, task.split(labels).values())}
    codes["age"] = age_group(years, old_age)
    return np.asarray(task.encode(*(codes[a.name] for a in task.attributes)), np.int64)


@dataclass(frozen=True)
class TrainingAges:
    """What training does with the raw ages (validation, out-of-fold scores and reports never see it).

    ``old_age``: the oldest group's threshold for the training labels (``train.old_age``; None = the
    dataset's). ``drop``: ages in years left out of training (``train.drop_ages``). ``margin``: also leave
    out the ``margin`` ages just below each group threshold (30 and the training ``old_age``;
    ``train.drop_age_margin``): the photos cannot tell 58 from 61, so those labels teach noise.
    """
    old_age: int | None = None
    drop: tuple[int, ...] = ()
    margin: int = 0

    @classmethod
    def of(cls, value: TrainingAges | int | None) -> TrainingAges:
        return value if isinstance(value, TrainingAges) else cls(old_age=value)

    def dropped_ages(self, task: Task) -> list[int]:
        """The ages (years) left out of training, sorted; [] when nothing is dropped."""
        ages = set(int(a) for a in self.drop)
        if self.margin:
            for t in (30, self.old_age or task.old_age or 60):
                ages.update(range(t - self.margin, t))
        return sorted(ages)

    def keep(self, rows: pd.DataFrame, task: Task) -> np.ndarray:
        """Boolean mask over training ``rows``: False where the raw age is one of :meth:`dropped_ages`.
        Pseudo-labelled rows (no raw age) are always kept."""
        ages = self.dropped_ages(task)
        if not ages:
            return np.ones(len(rows), bool)
        key = "train.drop_ages" if self.drop else "train.drop_age_margin"
        require_raw_ages(key, f"remove {key}", task, rows)
        years = rows["age_years"].to_numpy(np.int64)
        labelled = (rows["split"] == "train").to_numpy()
        return ~np.isin(years, ages) | ~labelled


def require_raw_ages(what: str, fix: str, task: Task, rows: pd.DataFrame) -> None:
    """What needs each labelled training row's age in years (``train.drop_ages``, ``loss.age_sigma``): a
    ConfigError naming ``what`` and ``fix`` when the task has no age attribute, or when labelled ``rows``
    (pseudo-labelled ones have no raw age and are not asked) hold only an age group."""
    if task.attribute("age") is None:
        raise ConfigError(f"{what} needs raw ages in years, but this task has no age attribute (classes "
                          f"{_some_classes(task)}): {fix} (prepare a CSV with an `age` column in years, or the "
                          "competition layout, to use it)")
    years = rows["age_years"].to_numpy(np.int64)[(rows["split"] == "train").to_numpy()]
    if (years < 0).any():
        raise ConfigError(f"{what} needs raw ages in years, but {int((years < 0).sum())} training rows have only "
                          f"an age group (the CSV's age column held groups): {fix}, or prepare from a CSV whose "
                          "`age` column holds years")


def check_batch_fits(batch_size: int, train_images: int, *, fold: int, world: int) -> None:
    """One training batch per process must fit in ``fold``'s training rows (``fold_rows``'s, pseudo-labelled
    ones included): a larger batch would never be full, so every step would train on fewer images than
    train.batch_size (and the effective batch the banner reports) says."""
    per_rank = train_images // world
    if batch_size > per_rank:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the training set of fold {fold} "
                          f"({per_rank} images per process); lower train.batch_size")


@dataclass
class _Loading:
    """What a fold's loaders are built from (again for each process's share: :meth:`FoldData.sharded`)."""
    train_ds: ImageDataset
    valid_ds: ImageDataset
    data: DataConfig
    batch_size: int
    valid_batch_size: int
    seed: int

    def loaders(self, fold: int, rank: int, world: int) -> tuple[object, object]:
        check_batch_fits(self.batch_size, len(self.train_ds), fold=fold, world=world)
        weights = balanced_weights(self.train_ds.labels) if self.data.sampler == "balanced" else None
        sampler = EpochSampler(len(self.train_ds), seed=self.seed, weights=weights, rank=rank, world=world)
        workers, kind = resolve_loader(self.data)
        train = build_loader(self.train_ds, batch_size=self.batch_size, sampler=sampler, workers=workers, kind=kind)
        vs = EpochSampler(len(self.valid_ds), seed=0, shuffle=False, rank=rank, world=world, drop_uneven=False)
        valid = build_loader(self.valid_ds, batch_size=self.valid_batch_size, sampler=vs, workers=workers, kind=kind)
        return train, valid


@dataclass
class FoldData:
    """A fold's rows, datasets and loaders (the training loader's epoch is set by ``set_epoch``)."""
    train_rows: pd.DataFrame
    valid_rows: pd.DataFrame
    train_labels: np.ndarray  # what training sees (train.old_age may re-draw the age groups)
    # train_rows: the rows trained on (train.drop_ages may leave some out); valid_rows: all of the fold
    train_loader: object
    valid_loader: object
    fold: int = 0
    loading: _Loading | None = None

    def sharded(self, rank: int, world: int) -> FoldData:
        """The same fold with loaders over process ``rank``'s share of ``world``: training rows in equal
        interleaved shards, validation rows each on exactly one process."""
        if world == 1 and rank == 0:
            return self
        train, valid = self.loading.loaders(self.fold, rank, world)
        return replace(self, train_loader=train, valid_loader=valid)


def fold_data(prep: Prepared, fold: int, data: DataConfig, pp: Preprocessing, *, batch_size: int,
              valid_batch_size: int, seed: int, old_age: TrainingAges | int | None = None) -> FoldData:
    """Datasets and loaders of ``fold`` in one process: training rows augmented and shuffled per (seed,
    epoch), validation rows in order (:meth:`FoldData.sharded` splits them over processes).

    ``old_age``: the training age threshold (``train.old_age``), or a :class:`TrainingAges` that may also
    leave ages out of training (``train.drop_ages``); validation keeps every row and the dataset's labels.
    """
    tr_rows, va_rows = fold_rows(prep, fold)
    ages = TrainingAges.of(old_age)
    keep = ages.keep(tr_rows, prep.task)
    if not keep.all():
        log.info("fold %d: %d of %d training images left out (ages %s); validation keeps all %d", fold,
                 int((~keep).sum()), len(tr_rows), ages.dropped_ages(prep.task), len(va_rows))
        tr_rows = tr_rows[keep]
    elif ages.dropped_ages(prep.task):
        log.info("fold %d: no training image has an age in %s", fold, ages.dropped_ages(prep.task))
    train_labels = training_labels(tr_rows, prep.task, ages.old_age)
    loading = _Loading(make_dataset(prep, tr_rows, data, pp, training=True, seed=seed, labels=train_labels),
                       make_dataset(prep, va_rows, data, pp, training=False, seed=seed), data, batch_size,
                       valid_batch_size, seed)
    return FoldData(tr_rows, va_rows, train_labels, *loading.loaders(fold, 0, 1), fold=fold, loading=loading)


def paths_dataset(paths: list[str], pp: Preprocessing, *, face_settings: dict | None = None) -> ImageDataset:
    """Dataset over arbitrary image files (``maskcls predict RUN photo.jpg``); labels are -1.

    A run trained on face crops gets its faces detected and cropped the same way first.
    """
    tf = create_transform(preset=pp.preset, is_training=False, image_size=pp.image_size)
    labels = np.full(len(paths), -1, np.int64)
    if pp.faces:
        from ..prep.faces import crop_files
        if not face_settings:
            raise DataError("this run trained on face crops but its checkpoint records no face settings; "
                            "predict its eval set (maskcls predict RUN) instead")
        return ImageDataset(ArraySource(crop_files(list(paths), face_settings)), labels, tf, seed=0)
    return ImageDataset(FileSource(np.asarray(paths), None), labels, tf, seed=0)


def cache_built(prep: Prepared, cfg: Config) -> bool:
    """True when ``data.cache``'s crop cache for this config is already built and current in PREPARED (the
    same side, mode and key as :func:`~.fold_data.make_dataset` would ask for), so using it writes nothing."""
    import json

    from ..data.cache import cache_key, cache_paths
    from ..data.transforms import REFERENCE_CROP
    reference = cfg.data.preset.startswith("reference")
    side, mode = (REFERENCE_CROP, "center") if reference else (int(round(cfg.data.image_size * 1.15)), "square")
    npy, meta = cache_paths(prep.dir / "cache", side, mode)
    try:
        key = json.loads(meta.read_text()).get("key") if npy.is_file() else None
    except (OSError, ValueError):
        return False
    return key is not None and key == cache_key(prep.abs_paths(prep.fit_rows()), side, mode)
