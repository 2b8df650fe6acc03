"""A synthetic dataset in exactly the competition's layout, for ``maskcls demo`` and the tests.

Layout written under ``out_dir``::

    train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.<ext>
    train/train.csv      id,gender,race,age,path      (path = the folder name)
    eval/images/<40 hex chars>.jpg
    eval/info.csv        ImageID,ans                  (ans = 0, like the competition)
    eval/truth.csv       ImageID,ans                  (the true class; not in the competition)

Every quirk a reader must survive is reproduced: ids are zero-padded strings, one carries a
``-1`` suffix and one names two different people (people >= 10); extensions mix .jpg, .png
and .jpeg even inside one folder; macOS ``._mask1.*`` files and a ``.DS_Store`` lie around.

The pictures are drawn faces whose cues follow the real task's difficulty: the mask (a large
coloured shape over nose and mouth, pulled below the nose for "incorrect") is easiest; gender
shows in hair length (about 3 % of women short, 2 % of men long), eyebrow thickness, jaw
shape, face width, stubble and lip colour; age in hair colour (dark below 30, greying
through the 30s-50s, white at 60), forehead wrinkles, crow's feet, and at 60 a receding
hairline and, for most, reading glasses (a few younger people wear them too), with noise
and some dyed hair, so neighbouring groups overlap. No pixel or file property encodes the
label. Identity (face, skin, hair, clothes, wall) is shared by a person's 7 photos; pose,
position, scale, lighting, mask colour and noise vary per photo. Small sets get at least
``CLASS_FLOOR`` people per (gender, age group), so that every validation fold of a 5-fold
split holds all 18 classes.

Measured learnability (``synth --people 60 --seed S``, ``prepare`` with 5 folds, ``train
--folds 0 --set train.epochs=3 --set data.image_size=128``, all other settings the defaults of
the time: tf_efficientnet_lite0 with package weights, 48 training people, batch 30 x accumulation 2 =
18 optimizer steps; 12 validation people = 84 images): validation macro F1 0.774, 0.756,
0.670, 0.739, 0.827 for S = 0..4 (docs/benchmarks.md). With 12 people per fold one misread
person moves macro F1 by about 0.1. The demo (120 people, 10 epochs) reaches ~0.9.

Each person is rendered from its own generator seeded by (seed, part, index), so the bytes
depend on the seed only, never on ``workers`` or scheduling.
"""
from __future__ import annotations

import csv
import glob
import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fsutil import cpu_count
from ..task import Task, age_group
from .draw import PHOTOS, PersonJob, render_person
from .noise import NOISE_CSV_COLUMNS, check_rate, inject_label_noise

logger = logging.getLogger(__name__)

RACE = "Asian"  # the competition's only value
_EXTS = (".jpg", ".png", ".jpeg")
_EXT_P = (0.86, 0.07, 0.07)  # PNG encoding is ~15x slower than JPEG

_TASK = Task.competition()
# Largest photo side: drawing cost grows with the pixels (about 1 photo/s at 4000x4000 on one
# core), and nothing here needs more than a few times the competition's 384x512.
MAX_SIDE = 2048


def _class_of(mask: int, gender: int, age_years: int) -> int:
    """The competition class of a person's photo (age group by the scoring threshold, 60)."""
    return int(_TASK.encode(mask, gender, age_group(age_years, _TASK.old_age)))


# ----------------------------------------------------------------------------- metadata

def _quota(n: int, shares: tuple[float, ...]) -> np.ndarray:
    """Split n into counts proportional to shares (largest remainder), so small sets keep the
    real proportions instead of drifting with chance (120 people → 9 aged 60, not 5 or 16)."""
    raw = np.asarray(shares) * n / sum(shares)
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    return counts


# Every (gender, age group) gets at least this many people when the set is large enough
# (n >= 12 x floor): a 5-fold person split then shows every one of the 18 classes in every
# validation fold. With the real 7.5 % share alone, 60 people hold 4-5 aged 60, so most
# folds miss 3 classes and macro F1 (zero_division 0) is capped near 15/18 whatever the
# model does. Large sets are unaffected (2,700 people: 202 aged 60).
CLASS_FLOOR = 5


def _cell_counts(n: int) -> np.ndarray:
    """People per (age group, gender) as a 3x2 array [female, male]: the real shares, then
    each cell raised to ``min(CLASS_FLOOR, n // 12)`` by taking from the largest cells."""
    cells = np.stack([_quota(k, (0.6, 0.4)) for k in _quota(n, (0.47, 0.455, 0.075))])
    floor = min(CLASS_FLOOR, n // 12)
    while cells.min() < floor:
        low, high = np.unravel_index(cells.argmin(), cells.shape), np.unravel_index(cells.argmax(), cells.shape)
        cells[low] += 1
        cells[high] -= 1
    return cells


def _sample_people(rng: np.random.Generator, n: int) -> tuple[list[int], list[int]]:
    """(genders, ages) for n people. Ages 18..60 with the real skew: 47 % <30 (mostly early
    20s), 45.5 % 30-59 (mostly 50s), 7.5 % exactly 60 (the data stops there); 60 % female
    within each age group, like the real data; small sets get the floor of ``_cell_counts``."""
    cells = _cell_counts(n)
    n_young, n_middle, n_old = cells.sum(axis=1)
    ages = np.concatenate([18 + np.floor(12 * rng.beta(1.3, 2.0, n_young)),
                           30 + np.floor(30 * rng.beta(2.2, 1.3, n_middle)),
                           np.full(n_old, 60)]).astype(int)
    genders = np.concatenate([np.repeat([1, 0], cells[g]) for g in range(3)])
    order = rng.permutation(n)
    return genders[order].tolist(), ages[order].tolist()


def _train_people(rng: np.random.Generator, n: int) -> list[tuple[str, int, int]]:
    """(id, gender, age) per training person, sorted by id, with the id quirks."""
    ids = [f"{i:06d}" for i in sorted(rng.choice(np.arange(1, max(7000, 3 * n)), n, replace=False))]
    genders, ages = _sample_people(rng, n)
    if n >= 10:
        i, j, k = (int(v) for v in rng.choice(n, 3, replace=False))
        ids[j] = ids[i]                       # one id, two different people (like 003397)
        if (genders[j], ages[j]) == (genders[i], ages[i]):
            genders[j] = 1 - genders[j]       # different folder names guaranteed
        ids[k] = ids[k] + "-1"                # a suffixed id (like 001498-1)
    rows = sorted(zip(ids, genders, ages), key=lambda r: (r[0], r[1], r[2]))
    return rows


def _folder(pid: str, gender: int, age: int) -> str:
    return f"{pid}_{('male', 'female')[gender]}_{RACE}_{age}"


def _plan(rng: np.random.Generator, people: int, eval_people: int
          ) -> tuple[list[tuple], list[PersonJob], list[tuple[str, int]]]:
    """Everything decided in the parent: train rows, jobs, eval rows (shuffled), junk."""
    train_rows, jobs = [], []
    for idx, (pid, gender, age) in enumerate(_train_people(rng, people)):
        folder = _folder(pid, gender, age)
        exts = rng.choice(len(_EXTS), len(PHOTOS), p=_EXT_P)
        if idx == 0:                          # mixed extensions inside one folder, always
            exts[1], exts[5] = 1, 2
        files = tuple(f"train/images/{folder}/{stem}{_EXTS[e]}" for (stem, _), e in zip(PHOTOS, exts))
        junk = None
        if idx == 0 or rng.random() < 0.05:   # a few macOS AppleDouble leftovers
            junk = f"train/images/{folder}/._{Path(files[0]).name}"
        train_rows.append((pid, ("male", "female")[gender], RACE, age, folder))
        jobs.append(PersonJob(0, idx, files, gender, age, junk))
    genders, ages = _sample_people(rng, eval_people)
    eval_rows = []
    for idx in range(eval_people):
        names = [rng.bytes(20).hex() + ".jpg" for _ in PHOTOS]
        jobs.append(PersonJob(1, idx, tuple(f"eval/images/{n}" for n in names), int(genders[idx]),
                         int(ages[idx]), None))
        eval_rows += [(n, _class_of(m, int(genders[idx]), int(ages[idx])))
                      for n, (_, m) in zip(names, PHOTOS)]
    eval_rows = [eval_rows[i] for i in rng.permutation(len(eval_rows))]
    return train_rows, jobs, eval_rows


# ----------------------------------------------------------------------------- public API

def _check_args(people, eval_people, image_size, workers, seed) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not is_int(people) or people < 1:
        raise ConfigError(f"people must be an integer >= 1, got {people!r}")
    if eval_people is not None and (not is_int(eval_people) or eval_people < 0):
        raise ConfigError(f"eval_people must be None or an integer >= 0, got {eval_people!r}")
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(is_int(v) and 32 <= v <= MAX_SIDE for v in image_size)):
        raise ConfigError(f"image_size must be (width, height), two integers in 32..{MAX_SIDE} (the competition's "
                          f"photos are 384x512), got {image_size!r}")
    if workers is not None and (not is_int(workers) or workers < 1):
        raise ConfigError(f"workers must be None or an integer >= 1, got {workers!r}")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def synthesize(out_dir: str | Path, *, people: int = 120, seed: int = 0, eval_people: int | None = None,
               image_size: tuple[int, int] = (384, 512), workers: int | None = None,
               label_noise: float = 0.0) -> dict:
    """Write a synthetic dataset in the competition layout (see the module docstring).

    Args:
        out_dir: folder to create; it must not exist or be empty (never overwritten).
        people: number of training people (7 photos each).
        seed: everything (metadata, pixels, file bytes) is a function of this seed alone.
        eval_people: number of evaluation people; default round(people * 2 / 3), the
            competition's 1800:2700 ratio.
        image_size: (width, height) of every photo; the competition's is (384, 512).
        workers: processes drawing in parallel; default: the usable CPU count. Does not
            change the output.
        label_noise: fraction of training persons (0..0.5) given one wrong label each — gender
            flipped, age group moved, or incorrect_mask/normal swapped — with the truth in
            train/noise.csv (:mod:`.synth_noise`); the pictures stay those of the clean set.

    Returns:
        A summary dict: out_dir, train_csv, info_csv, truth_csv, train_people,
        train_images, eval_people, eval_images, image_size, seed, seconds, images_per_s,
        label_noise, noisy_people, noise_csv (None without noise).
    """
    _check_args(people, eval_people, image_size, workers, seed)
    label_noise = check_rate(label_noise)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; synthesize never overwrites: "
                              f"choose a new folder or delete this one")
    eval_people = round(people * 2 / 3) if eval_people is None else int(eval_people)
    w, h = (int(v) for v in image_size)
    start = time.perf_counter()
    train_rows, jobs, eval_rows = _plan(np.random.default_rng(seed), int(people), eval_people)
    train_rows, jobs, noise_rows = inject_label_noise(train_rows, jobs, rate=label_noise, seed=int(seed),
                                                      folder_of=_folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove_stale_partials(out)
    restore_sigterm = _sigterm_as_interrupt()  # `kill` / `timeout` clean up like Ctrl-C does
    try:
        for sub in ("train/images", "eval/images"):
            (build / sub).mkdir(parents=True)
        (build / "train/images/.DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(2036))
        _write_csv(build / "train/train.csv", ["id", "gender", "race", "age", "path"], train_rows)
        _write_csv(build / "eval/info.csv", ["ImageID", "ans"], [(n, 0) for n, _ in eval_rows])
        _write_csv(build / "eval/truth.csv", ["ImageID", "ans"], eval_rows)
        if label_noise:
            _write_csv(build / "train/noise.csv", NOISE_CSV_COLUMNS, noise_rows)
        n_images = _run_jobs([(str(build), int(seed), (w, h), j) for j in jobs], workers)
        if out.exists():
            out.rmdir()                        # empty, checked above
        build.rename(out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    finally:
        restore_sigterm()
    seconds = time.perf_counter() - start
    summary = {
        "out_dir": str(out), "train_csv": str(out / "train/train.csv"),
        "info_csv": str(out / "eval/info.csv"), "truth_csv": str(out / "eval/truth.csv"),
        "train_people": int(people), "train_images": int(people) * len(PHOTOS),
        "eval_people": eval_people, "eval_images": len(eval_rows), "image_size": (w, h),
        "seed": int(seed), "seconds": round(seconds, 3), "images_per_s": round(n_images / seconds, 1),
        "label_noise": label_noise, "noisy_people": len(noise_rows),
        "noise_csv": str(out / "train/noise.csv") if label_noise else None,
    }
    logger.info("synthetic dataset: %d train + %d eval people, %d images in %.1f s (%.0f img/s) -> %s",
                people, eval_people, n_images, seconds, summary["images_per_s"], out)
    return summary


def _remove_stale_partials(out: Path) -> None:
    """Remove ``.<out>.partial-<pid>`` folders of synth processes that no longer run (killed with -9)."""
    for p in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            logger.info("removed %s, left by an interrupted synth", p)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only (PermissionError = alive, another user's)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _sigterm_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt while the dataset is drawn (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _worker_init() -> None:
    """Pool workers leave interrupts to the parent: it stops them (SIGTERM) and removes the partial folder."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_jobs(tasks: list, workers: int | None) -> int:
    if workers is None:
        workers = cpu_count()
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        return sum(render_person(t) for t in tasks)
    # fork where available: instant start, and no re-import of the caller's __main__ (a
    # script without a __main__ guard would recurse under spawn). Workers use no threads.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(method).Pool(workers, initializer=_worker_init) as pool:
        return sum(pool.imap_unordered(render_person, tasks, chunksize=max(1, len(tasks) // (workers * 8))))
