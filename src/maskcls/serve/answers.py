"""One image's answer as JSON: the class, each attribute with its marginal probabilities, the face box.

For a task made of attributes (the competition's mask × gender × age, or a CSV's gender × age)
each attribute's probabilities are the marginals of the K class probabilities and its value
is the predicted class's component (so the attributes always spell the class); a plain CSV
task has one attribute, ``label``.
"""
from __future__ import annotations

import math

import numpy as np

from ..prep.face_crop import BOX_COLS
from ..task import Task

DIGITS = 6  # probabilities are rounded for the wire


def _probs(names, values) -> dict[str, float]:
    return {str(n): round(float(v), DIGITS) for n, v in zip(names, values)}


def attributes(probs: np.ndarray, class_id: int, task: Task) -> dict[str, dict]:
    """{attribute: {"value", "index", "probabilities"}} of one image."""
    if not task.attributes:
        return {"label": {"value": task.class_names[class_id], "index": class_id,
                          "probabilities": _probs(task.class_names, probs)}}
    marginals = task.attribute_counts(probs)  # sums over the other attributes: marginal probabilities
    codes = task.decode(class_id)
    return {a.name: {"value": a.classes[c], "index": c, "probabilities": _probs(a.classes, marginals[a.name])}
            for a, c in zip(task.attributes, codes)}


def face(row: np.ndarray | None) -> dict | None:
    """The face box of a face-crop run (rows of ``BOX_COLS``, in the photo's pixels after EXIF rotation)."""
    if row is None:
        return None
    r = dict(zip(BOX_COLS, row.tolist()))
    detected = not r["fallback"]
    return {"detected": detected, "box": [round(r[k], 1) for k in ("x1", "y1", "x2", "y2")],
            "probability": round(r["prob"], 4) if detected and not math.isnan(r["prob"]) else None,
            "faces_found": int(r["n_faces"]),
            "note": None if detected else "no face found: the fallback region was classified"}


def answer(name: str, probs: np.ndarray, task: Task, *, width: int, height: int,
           box: np.ndarray | None = None) -> dict:
    """The JSON answer for one image."""
    c = int(np.argmax(probs))
    return {"file": name, "class_id": c, "class_name": task.class_names[c],
            "label": task.class_names[c].replace("/", " / "), "confidence": round(float(probs[c]), DIGITS),
            "attributes": attributes(probs, c, task), "probabilities": _probs(task.class_names, probs),
            "image": {"width": width, "height": height}, "face": face(box)}
