"""The label space of a task: :class:`Task`, and the competition's mask × gender × age attributes.

A task has K class names. It may also be the product of *attributes* (mask, gender, age):
then class ids are mixed-radix numbers, the first attribute most significant — the
competition's ``class = mask·6 + gender·3 + age`` with mask {wear 0, incorrect 1, not worn 2},
gender {male 0, female 1}, age {<30: 0, 30–(old−1): 1, ≥old: 2}. A CSV with only gender and
age columns is the same code path with two attributes; a CSV with a plain label column is a
task without attributes. Everything that splits targets, combines heads or reads per-attribute
confusion asks the Task; nothing else knows the factorisation.

``old_age`` defaults to 60 (the competition's rule); strong teams trained with 58 or 59
because ages stop at 60.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, DataError

MASK_NAMES = ("wear", "incorrect", "not worn")
GENDER_NAMES = ("male", "female")
ATTRIBUTE_ORDER = ("mask", "gender", "age")  # significance order of the class id's digits
COMPETITION = "mask_gender_age"  # prepare.json's task name for the full mask × gender × age product

# Competition file stems → mask state.
STEM_TO_MASK = {
    "mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
HEAD_CHOICES = ("single", "multi")


def age_names(old_age: int = 60) -> tuple[str, str, str]:
    return ("<30", f"30-{old_age - 1}", f">={old_age}")


def age_group(age_years, old_age: int = 60):
    """Age in years (scalar or array) → group 0/1/2."""
    a = np.asarray(age_years)
    out = np.where(a < 30, 0, np.where(a < old_age, 1, 2))
    return int(out) if out.ndim == 0 else out


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


def parse_age(value) -> int:
    """An age in whole years: '40', ' 40 ', '40.0' are 40; '40.5', 'abc', '' are refused (one rule everywhere)."""
    text = str(value).strip()
    try:
        years = float(text)
    except ValueError:
        years = float("nan")
    if not np.isfinite(years) or years != int(years) or years < 0:
        raise DataError(f"age {value!r} is not a whole number of years")
    return int(years)


@dataclass(frozen=True)
class Attribute:
    """One factor of a task's classes, e.g. ``Attribute("gender", ("male", "female"))``."""
    name: str
    classes: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.classes)


def competition_attributes(old_age: int = 60, names: tuple[str, ...] = ATTRIBUTE_ORDER) -> tuple[Attribute, ...]:
    """The competition's attributes (all three, or the subset ``names`` in significance order)."""
    known = {"mask": MASK_NAMES, "gender": GENDER_NAMES, "age": age_names(old_age)}
    return tuple(Attribute(n, tuple(known[n])) for n in ATTRIBUTE_ORDER if n in names)


@dataclass(frozen=True)
class Task:
    """A label space: class names and, optionally, the attributes whose product they are.

    Args:
        class_names: one name per class id 0..K−1.
        attributes: factors of the class id (mixed radix, first most significant); empty
            for a plain K-class task.
        old_age: the scoring age threshold when one attribute is the age group.
    """
    class_names: tuple[str, ...]
    attributes: tuple[Attribute, ...] = ()
    old_age: int | None = None

    def __post_init__(self):
        if self.attributes and int(np.prod([a.size for a in self.attributes])) != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names for attributes of sizes "
                             f"{[a.size for a in self.attributes]}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def flat(cls, class_names) -> Task:
        return cls(tuple(str(n) for n in class_names))

    @classmethod
    def from_attributes(cls, attributes: tuple[Attribute, ...], old_age: int | None = None) -> Task:
        names = [""]
        for a in attributes:
            names = [f"{n}/{c}" if n else c for n in names for c in a.classes]
        return cls(tuple(names), tuple(attributes), old_age)

    @classmethod
    def competition(cls, old_age: int = 60, names: tuple[str, ...] = ATTRIBUTE_ORDER) -> Task:
        """mask × gender × age (18 classes), or a subset of those attributes (gender × age: 6)."""
        return cls.from_attributes(competition_attributes(old_age, names), old_age if "age" in names else None)

    @classmethod
    def from_meta(cls, meta: dict) -> Task:
        """The task recorded in a prepare.json, a checkpoint's meta or a summary.json (old ones too)."""
        names = tuple(meta.get("class_names") or ())
        if meta.get("attributes"):
            attrs = tuple(Attribute(a["name"], tuple(a["classes"])) for a in meta["attributes"])
            return cls(names, attrs, meta.get("old_age"))
        if meta.get("task") == COMPETITION:  # written before attributes were recorded
            old = meta.get("old_age") or _old_age_from_names(names) or 60
            return cls.competition(int(old))
        if not names and meta.get("num_classes"):
            names = tuple(str(i) for i in range(int(meta["num_classes"])))
        return cls.flat(names)

    def to_meta(self) -> dict:
        """What prepare.json, checkpoints and summary.json record (``from_meta`` reads it back)."""
        return {"task": self.kind, "num_classes": self.num_classes, "class_names": list(self.class_names),
                "attributes": [{"name": a.name, "classes": list(a.classes)} for a in self.attributes],
                "old_age": self.old_age}

    # ------------------------------------------------------------------ shape
    @property
    def kind(self) -> str:
        names = tuple(a.name for a in self.attributes)
        return COMPETITION if names == ATTRIBUTE_ORDER else ("attributes" if names else "generic")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def factored(self) -> bool:
        """True when the classes are a product of two or more attributes (multi heads apply)."""
        return len(self.attributes) >= 2

    def attribute(self, name: str) -> Attribute | None:
        return next((a for a in self.attributes if a.name == name), None)

    @property
    def head_slices(self) -> dict[str, slice]:
        """Where each attribute's logits sit in a multi-head model's output."""
        out, start = {}, 0
        for a in self.attributes:
            out[a.name] = slice(start, start + a.size)
            start += a.size
        return out

    @property
    def head_outputs(self) -> int:
        return sum(a.size for a in self.attributes)

    def outputs(self, heads: str) -> int:
        """Width of the network's last layer for ``heads``."""
        return self.head_outputs if heads == "multi" else self.num_classes

    def resolve_heads(self, choice: str) -> str:
        """'auto' → multi for a factored task, single otherwise; multi on a plain task is an error."""
        if choice == "auto":
            return "multi" if self.factored else "single"
        if choice not in HEAD_CHOICES:
            raise ConfigError(f"model.heads={choice!r}; choose one of auto, {', '.join(HEAD_CHOICES)}")
        if choice == "multi" and not self.factored:
            raise ConfigError("model.heads=multi needs a task made of attributes (mask/gender/age columns); "
                              f"this one has {self.num_classes} plain classes: use model.heads=single or auto")
        return choice

    # ------------------------------------------------------------------ codes
    @property
    def _strides(self) -> list[int]:
        sizes = [a.size for a in self.attributes]
        return [int(np.prod(sizes[i + 1:])) for i in range(len(sizes))]

    def encode(self, *codes):
        """Attribute codes (scalars or arrays, in attribute order) → class id."""
        if len(codes) != len(self.attributes):
            raise ValueError(f"{len(codes)} codes for attributes {[a.name for a in self.attributes]}")
        return sum(np.asarray(c) * s for c, s in zip(codes, self._strides))

    def split(self, labels) -> dict:
        """Class ids (numpy array or torch tensor) → {attribute: codes}."""
        return {a.name: (labels // s) % a.size for a, s in zip(self.attributes, self._strides)}

    def decode(self, label: int) -> tuple[int, ...]:
        """Class id → attribute codes."""
        if not 0 <= int(label) < self.num_classes:
            raise DataError(f"class id {label} is outside 0..{self.num_classes - 1}")
        return tuple(int(v) for v in self.split(int(label)).values())

    def parse_name(self, name: str) -> int:
        """Class name → id ('wear / female / 30-59' and 'wear/female/30-59' alike)."""
        key = "/".join(p.strip() for p in str(name).split("/"))
        if key not in self.class_names:
            raise DataError(f"unknown class name {name!r}; valid names look like {self.class_names[0]!r}")
        return self.class_names.index(key)

    # ------------------------------------------------------------------ counts
    def attribute_counts(self, class_counts) -> dict[str, np.ndarray]:
        """Per-attribute marginal counts of K class counts."""
        c = np.asarray(class_counts).reshape([a.size for a in self.attributes])
        axes = range(len(self.attributes))
        return {a.name: c.sum(tuple(j for j in axes if j != i)) for i, a in enumerate(self.attributes)}

    def marginals(self, probs) -> dict:
        """Per-attribute probabilities (or soft targets) of N×K class probabilities (numpy or torch)."""
        sizes = [a.size for a in self.attributes]
        p = probs.reshape(len(probs), *sizes)
        axes = range(1, len(sizes) + 1)
        return {a.name: p.sum(tuple(j for j in axes if j != i + 1)) if len(sizes) > 1 else p
                for i, a in enumerate(self.attributes)}

    def attribute_confusions(self, cm: np.ndarray) -> dict[str, np.ndarray]:
        """Per-attribute confusion matrices (true × predicted) marginalised from a K×K one."""
        sizes = [a.size for a in self.attributes]
        n = len(sizes)
        c = np.asarray(cm).reshape(sizes + sizes)
        out = {}
        for i, a in enumerate(self.attributes):
            others = tuple(j for j in range(2 * n) if j not in (i, n + i))
            out[a.name] = c.sum(others)
        return out


def _old_age_from_names(names: tuple[str, ...]) -> int | None:
    """The threshold in '…/>=59' class names of an old prepare.json."""
    for n in names:
        if ">=" in n:
            try:
                return int(n.rsplit(">=", 1)[1])
            except ValueError:
                return None
    return None
