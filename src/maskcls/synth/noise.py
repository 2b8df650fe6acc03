"""Known label noise for the synthetic dataset (``maskcls synth --label-noise RATE``).

The competition's labels are noisy in three person-level ways, and this injects exactly those:

- ``gender``: the person's gender is flipped in train.csv and in the folder name;
- ``age``: the person's age is moved into another age group (a random age of that group);
- ``swap_incorrect_normal``: the ``incorrect_mask`` and ``normal`` photos trade file names.

Only the labels are wrong: every photo is still drawn from the person's true gender, age and
mask state (a swapped person's ``normal.jpg`` shows an incorrectly worn mask). The truth is
written to ``train/noise.csv`` as ``folder,field,value,noisy_value`` — the format that
``maskcls prepare --fixes`` reads, with ``value`` the *true* value — so ``prepare --fixes
train/noise.csv`` rebuilds the clean labels, and an audit's findings can be scored against it.

The noise has its own random stream: the same seed with and without noise gives the same
pictures (bit for bit), only some names differ.
"""
from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

import numpy as np

from ..errors import ConfigError
from ..task import age_group
from .draw import PHOTOS, PersonJob

NOISE_KINDS = ("gender", "age", "swap_incorrect_normal")  # the field names of a fixes file
NOISE_CSV_COLUMNS = ["folder", "field", "value", "noisy_value"]
_NOISE_STREAM = 7919  # mixed into the seed: the noise draws never shift the pictures' draws
_AGE_RANGES = ((18, 29), (30, 59), (60, 60))  # synthetic ages per group (the data stops at 60)
_INCORRECT, _NORMAL = (next(i for i, (stem, _) in enumerate(PHOTOS) if stem == s) for s in ("incorrect_mask", "normal"))


def check_rate(rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 0.5:
        raise ConfigError(f"label noise rate must be a number in [0, 0.5], got {rate!r} (0.05 = 5 % of persons)")
    return float(rate)


def inject_label_noise(train_rows: list[tuple], jobs: list[PersonJob], *, rate: float, seed: int,
                       folder_of) -> tuple[list[tuple], list[PersonJob], list[tuple]]:
    """Give ``round(rate × persons)`` training persons one wrong label each (kinds in equal shares).

    Args:
        train_rows: train.csv rows ``(id, gender name, race, age, folder)``, one per person.
        jobs: the render jobs; the first ``len(train_rows)`` are the training persons, in order.
        rate: fraction of persons to corrupt, 0..0.5.
        seed: the dataset seed (the noise uses its own stream derived from it).
        folder_of: ``(id, gender code, age) -> folder name``, the dataset's naming rule.

    Returns:
        (train rows, jobs, noise rows ``(folder, field, true value, noisy value)``). Jobs keep
        the true gender and age (the drawing); only their file paths carry a noisy folder or swap.
    """
    rate = check_rate(rate)
    n = int(round(rate * len(train_rows)))
    if n == 0:
        return train_rows, jobs, []
    rng = np.random.default_rng([int(seed), _NOISE_STREAM])
    ids = [r[0] for r in train_rows]
    # Persons sharing an id (the dataset's '003397' quirk) differ only by gender or age in the
    # folder name; flipping one could give both the same folder, so they are left clean.
    eligible = [i for i, pid in enumerate(ids) if ids.count(pid) == 1]
    chosen = rng.choice(eligible, size=min(n, len(eligible)), replace=False)
    kinds = rng.permutation([NOISE_KINDS[i % len(NOISE_KINDS)] for i in range(len(chosen))])
    rows, jobs, noise = list(train_rows), list(jobs), []
    for idx, kind in zip(chosen.tolist(), kinds.tolist()):
        rows[idx], jobs[idx], entry = _corrupt(rng, rows[idx], jobs[idx], kind, folder_of)
        noise.append(entry)
    return rows, jobs, sorted(noise)


def _corrupt(rng: np.random.Generator, row: tuple, job: PersonJob, kind: str, folder_of) -> tuple:
    pid, gender_name, race, age, folder = row
    gender = ("male", "female").index(gender_name)
    if kind == "swap_incorrect_normal":
        files = list(job.files)
        # The drawing of each photo stays with its file bytes; only the stems trade places.
        files[_INCORRECT], files[_NORMAL] = (_restem(files[_INCORRECT], "normal"),
                                             _restem(files[_NORMAL], "incorrect_mask"))
        return row, dataclasses.replace(job, files=tuple(files)), (folder, kind, "", "")
    if kind == "gender":
        noisy_gender, noisy_age = 1 - gender, age
        entry_value, noisy_value = gender_name, ("male", "female")[noisy_gender]
    else:
        true_group = int(age_group(age))
        group = int(rng.choice([g for g in range(len(_AGE_RANGES)) if g != true_group]))
        lo, hi = _AGE_RANGES[group]
        noisy_gender, noisy_age = gender, int(rng.integers(lo, hi + 1))
        entry_value, noisy_value = str(age), str(noisy_age)
    noisy_folder = folder_of(pid, noisy_gender, noisy_age)
    files = tuple(str(PurePosixPath(f).parent.parent / noisy_folder / PurePosixPath(f).name) for f in job.files)
    junk = None if job.junk is None else str(PurePosixPath(job.junk).parent.parent / noisy_folder
                                             / PurePosixPath(job.junk).name)
    new_row = (pid, ("male", "female")[noisy_gender], race, noisy_age, noisy_folder)
    return new_row, dataclasses.replace(job, files=files, junk=junk), (noisy_folder, kind, entry_value, noisy_value)


def _restem(path: str, stem: str) -> str:
    p = PurePosixPath(path)
    return str(p.with_name(stem + p.suffix))
