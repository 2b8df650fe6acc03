"""The 18-class label space of the mask competition, and label fixes.

class = mask·6 + gender·3 + age, with mask {wear 0, incorrect 1, not worn 2},
gender {male 0, female 1}, age {<30: 0, 30–(old-1): 1, ≥old: 2}. ``old_age`` defaults to 60
(the competition's rule); strong teams trained with 58 or 59 because ages stop at 60.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import DataError

MASK_NAMES = ("wear", "incorrect", "not worn")
GENDER_NAMES = ("male", "female")
NUM_CLASSES = 18
HEAD_SIZES = {"mask": 3, "gender": 2, "age": 3}

# Competition file stems → mask state.
STEM_TO_MASK = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}


def age_names(old_age: int = 60) -> tuple[str, str, str]:
    return ("<30", f"30-{old_age - 1}", f">={old_age}")


def age_group(age_years, old_age: int = 60):
    """Age in years (scalar or array) → group 0/1/2."""
    a = np.asarray(age_years)
    out = np.where(a < 30, 0, np.where(a < old_age, 1, 2))
    return int(out) if out.ndim == 0 else out


def encode(mask, gender, age):
    """(mask, gender, age group) → class id; works on scalars and arrays."""
    return np.asarray(mask) * 6 + np.asarray(gender) * 3 + np.asarray(age)


def decode(label: int) -> tuple[int, int, int]:
    """Class id → (mask, gender, age group)."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise DataError(f"class id {label} is outside 0..{NUM_CLASSES - 1}")
    label = int(label)
    return label // 6, (label // 3) % 2, label % 3


def class_name(label: int, old_age: int = 60) -> str:
    """Readable name, e.g. 'wear/female/30-59'."""
    m, g, a = decode(label)
    return f"{MASK_NAMES[m]}/{GENDER_NAMES[g]}/{age_names(old_age)[a]}"


def class_names(old_age: int = 60) -> list[str]:
    return [class_name(i, old_age) for i in range(NUM_CLASSES)]


def parse_name(name: str, old_age: int = 60) -> int:
    """Inverse of :func:`class_name` (spaces around '/' allowed)."""
    key = "/".join(p.strip() for p in str(name).split("/"))
    names = class_names(old_age)
    if key not in names:
        raise DataError(f"unknown class name {name!r}; valid names look like {names[4]!r}")
    return names.index(key)


def parse_gender(value) -> int:
    v = str(value).strip().lower()
    if v in ("male", "m", "0"):
        return 0
    if v in ("female", "f", "1"):
        return 1
    raise DataError(f"gender {value!r} is neither male nor female (or 0/1)")


def parse_mask(value) -> int:
    v = str(value).strip().lower().replace("_", " ")
    aliases = {"wear": 0, "0": 0, "incorrect": 1, "1": 1, "not worn": 2, "not wear": 2, "2": 2,
               "normal": 2, "incorrect mask": 1}
    if v not in aliases:
        raise DataError(f"mask state {value!r} is not one of wear/incorrect/not worn (or 0/1/2)")
    return aliases[v]


# --------------------------------------------------------------------------- fixes
FIX_FIELDS = ("gender", "age", "swap_incorrect_normal")


def read_fixes(path: str | Path) -> pd.DataFrame:
    """Read a label-fixes CSV: columns ``folder,field,value``.

    ``field`` is ``gender`` (value male/female), ``age`` (value in years) or
    ``swap_incorrect_normal`` (value ignored): the person's incorrect_mask and normal
    photos trade labels, as for the three known swapped ids of the competition.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label fixes file {path} not found; pass an existing CSV "
                                "with columns folder,field,value")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"folder", "field"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; expected folder,field,value")
    if "value" not in df.columns:
        df["value"] = ""
    bad = sorted(set(df["field"]) - set(FIX_FIELDS))
    if bad:
        raise DataError(f"{path}: unknown field(s) {bad}; valid fields: {list(FIX_FIELDS)}")
    for row in df.itertuples():
        if row.field == "gender":
            parse_gender(row.value)
        elif row.field == "age" and not str(row.value).strip().isdigit():
            raise DataError(f"{path}: age fix for {row.folder!r} is {row.value!r}, not a whole number")
    return df
