"""The preprocessing that training records and prediction, export and serving repeat exactly.

:class:`Preprocessing` (input size, mean/std, face crops or photos, augmentation preset) is written
into every checkpoint and export; training decides it once
(:func:`maskcls.engine.fold_data.resolve_preprocessing`), and predict, export and serve rebuild
their transforms from it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Preprocessing:
    """Everything prediction must repeat exactly: recorded in checkpoints and exports."""
    image_size: int
    mean: list[float]
    std: list[float]
    faces: bool
    preset: str

    def to_dict(self) -> dict:
        return asdict(self)
