"""An exported model file checked against the run it claims to belong to, before it answers anything.

``RUN/export/model.onnx`` keeps its name whatever its content becomes: another run's export copied over
it (other classes, another input size), a file cut short or overwritten with garbage. predict and serve
would then print another model's answers under this run's class names, with exit status 0. So before
an exported file answers:

* it must open: a damaged file is one line naming it and the command that makes it again;
* its JSON (what ``maskcls export`` wrote beside it), where there is one, must describe the run's
  classes, input size and normalisation;
* the graph itself must take the run's uint8 N×3×S×S images and answer one probability per class of
  the run's task, checked on one image (a graph's recorded shapes can be symbolic).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CheckpointError
from ..task import Task

# How far a row of an exported model's output may sum from 1: fp32 softmax averages are within 1e-6.
PROBABILITY_SUM_TOLERANCE = 1e-3


def export_command(run: str | Path, folds: list[int] | None = None, *, int8: bool = False, more: str = "") -> str:
    """The command that writes a run's export again (``more``: further flags), quoted for a message."""
    flags = (f" --folds {','.join(map(str, folds))}" if folds else "") + (" --int8" if int8 else "")
    return f"`maskcls export {run}{flags}{' ' + more if more else ''}`"


def _reason(e: BaseException) -> str:
    """An ONNX Runtime or torch error in a few words: its first line without ORT's code prefix."""
    lines = str(e).strip().splitlines()
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : ", "", lines[0]) if lines else type(e).__name__
    return text[:200]


def _ort_errors() -> tuple[type[BaseException], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state
    return tuple(getattr(state, n) for n in ("Fail", "InvalidArgument", "InvalidProtobuf", "InvalidGraph",
                                             "NoSuchFile", "NotImplemented", "RuntimeException", "EPFail")
                 if hasattr(state, n))


def open_onnx(path: str | Path, options=None, *, fix: str):
    """An ONNX Runtime CPU session of ``path``; a file ONNX Runtime cannot load is a :class:`CheckpointError`
    naming it and saying ``fix``."""
    import onnxruntime as ort
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _ort_errors() as e:
        raise CheckpointError(f"{path} is not a readable ONNX model ({_reason(e)}); {fix}") from None


def load_torchscript(path: str | Path, *, fix: str):
    """``torch.jit.load(path)``; a file torch cannot load is a :class:`CheckpointError` naming it."""
    import torch
    try:
        return torch.jit.load(str(path))
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable TorchScript model ({_reason(e)}); {fix}") from None


def recorded_normalisation(spec: dict) -> dict[str, list[float]]:
    """mean and std as an export's JSON records them ('… with mean=[…] std=[…]'); those it lacks are left out."""
    inside = str((spec.get("preprocessing") or {}).get("inside_model", ""))
    found = {k: re.search(rf"{k}=\[([^\]]*)\]", inside) for k in ("mean", "std")}
    return {k: [float(v) for v in m.group(1).split(",")] for k, m in found.items() if m}


def spec_mismatch(spec: dict, meta: dict) -> str | None:
    """What an export's JSON says that the run (a checkpoint's ``meta``) contradicts, or None."""
    task, pp = Task.from_meta(meta), meta["preprocessing"]
    names = list((spec.get("output") or {}).get("class_names") or [])
    if names and names != list(task.class_names):
        return (f"its JSON names {len(names)} classes ({', '.join(map(str, names[:3]))}, …) where the run has "
                f"{task.num_classes} ({', '.join(task.class_names[:3])}, …)")
    size = (spec.get("input") or {}).get("height")
    if size is not None and size != pp["image_size"]:
        return f"its JSON says {size}x{size} px images where the run's are {pp['image_size']}x{pp['image_size']}"
    for key, recorded in recorded_normalisation(spec).items():
        if len(recorded) != len(pp[key]) or not np.allclose(recorded, pp[key], rtol=0, atol=1e-6):
            return f"its JSON normalises with {key}={recorded} where the run's {key} is {pp[key]}"
    return None


def answer_mismatch(predict: Callable[[np.ndarray], np.ndarray], num_classes: int, image_size: int) -> str | None:
    """What is wrong with the model's answer to one uint8 image of the run's size, or None (K probabilities)."""
    x = np.zeros((1, 3, image_size, image_size), np.uint8)
    try:
        out = np.asarray(predict(x))
    except (*_ort_errors(), RuntimeError, ValueError) as e:
        return f"it does not take the run's input, uint8 images 1x3x{image_size}x{image_size} ({_reason(e)})"
    if out.shape != (1, num_classes):
        return (f"it answers {out.shape[-1] if out.ndim == 2 else 'x'.join(map(str, out.shape))} value(s) per image "
                f"where the run's task has {num_classes} classes")
    total = float(out.sum())
    if not np.isfinite(out).all() or abs(total - 1) > PROBABILITY_SUM_TOLERANCE:
        return f"its {num_classes} outputs are not class probabilities (they sum to {total:.4g}, not 1)"
    return None


def check_model(path: str | Path, predict: Callable[[np.ndarray], np.ndarray], meta: dict, spec: dict | None, *,
                fix: str) -> None:
    """Refuse the exported model ``path`` (run by ``predict``) unless it is a model of the run whose checkpoint
    ``meta`` it claims: its JSON ``spec`` (None: none to compare) and its answer to one image.

    Raises:
        CheckpointError: naming the file, what differs and ``fix``.
    """
    task, pp = Task.from_meta(meta), meta["preprocessing"]
    wrong = (spec_mismatch(spec, meta) if spec else None) or answer_mismatch(predict, task.num_classes,
                                                                             int(pp["image_size"]))
    if wrong:
        raise CheckpointError(f"{path} is not a model of this run: {wrong}; {fix}")
