"""Serving a file ``maskcls export`` wrote (``--model PATH.onnx``, ``--int8``) instead of the run's checkpoints.

The graph is served as it is: it was checked against PyTorch when it was exported (an INT8 graph
against the validation fold's macro F1), so it is not compared again here. What it expects and
answers comes from the run when the file lies inside one (``RUN/export/…``): the checkpoint's meta
of the exported folds gives the task, the preprocessing and the face-crop settings exactly as
``maskcls predict`` uses them. A file copied elsewhere is described by the JSON the export wrote
beside it (input size, class names, normalisation); a face-crop model needs its run (the detector's
settings are in the checkpoints).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ..engine.checkpoint import load_checkpoint
from ..errors import ConfigError
from ..fsutil import read_json
from ..infer.loading import select_folds
from ..task import COMPETITION, Task
from .model import ServedModel, onnx_predictor, served_model

log = logging.getLogger(__name__)

INT8_NAME = "model.int8.onnx"  # where `maskcls export RUN --format onnx --int8` writes by default


def int8_path(run: str | Path) -> Path:
    """``RUN/export/model.int8.onnx``, or a FileNotFoundError saying how to make it."""
    path = Path(run) / "export" / INT8_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `maskcls export {run} --format onnx --int8` first")
    return path


def read_spec(path: str | Path) -> dict:
    """The JSON ``maskcls export`` wrote beside ``path``; clear errors for a missing or foreign file."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ConfigError(f"--model {path}: give an .onnx file written by `maskcls export RUN --format onnx`")
    if not path.is_file():
        raise FileNotFoundError(f"--model {path} not found; write one with `maskcls export RUN --format onnx`")
    spec = read_json(path.with_suffix(".json"))
    if not isinstance(spec, dict) or not isinstance(spec.get("input"), dict) or "output" not in spec:
        raise ConfigError(f"{path.with_suffix('.json')} is missing or is not a maskcls export description; serve a "
                          "file written by `maskcls export RUN --format onnx` (it writes the JSON beside the model)")
    return spec


def owning_run(path: Path) -> Path | None:
    """The run directory ``path`` lies in (the nearest folder above it with a run.json), if any."""
    for folder in Path(path).resolve().parents:
        if (folder / "run.json").is_file():
            return folder
    return None


def _meta_from_run(run: Path, spec: dict) -> tuple[list[int], dict]:
    folds = spec.get("folds") or []
    chosen = select_folds(run, ",".join(map(str, folds)) if folds else "best")
    first = next(iter(chosen.values()))
    return list(chosen), load_checkpoint(first)["meta"]


def _floats(text: str, key: str) -> list[float]:
    found = re.search(rf"{key}=\[([^\]]*)\]", text)
    return [float(v) for v in found.group(1).split(",")] if found else []


def _meta_from_spec(path: Path, spec: dict) -> dict:
    """A checkpoint-like meta from the export's JSON alone (a file outside any run)."""
    pre = spec.get("preprocessing") or {}
    if str(pre.get("crop", "")).startswith("MTCNN"):
        raise ConfigError(f"{path} is a face-crop model: serve it from its run directory (RUN/export/…), whose "
                          "checkpoints hold the face detector's settings")
    names = list(spec["output"].get("class_names") or [])
    competition = Task.from_meta({"task": COMPETITION, "class_names": names})
    task = competition if list(competition.class_names) == names else Task.flat(names)
    inside = str(pre.get("inside_model", ""))
    return {**task.to_meta(), "model_name": spec.get("model", "?"), "heads": spec.get("heads", "single"),
            "preprocessing": {"image_size": int(spec["input"]["height"]), "mean": _floats(inside, "mean"),
                              "std": _floats(inside, "std"), "faces": False, "preset": "fast"}}


def precision_of(path: Path, spec: dict) -> str:
    """'int8' or 'fp32', as the export recorded it (older exports: by the file name)."""
    recorded = spec.get("precision") or (spec.get("quantization") or {}).get("precision")
    return str(recorded) if recorded else ("int8" if "int8" in path.name.lower() else "fp32")


def load_exported(path: str | Path, *, streams: int = 1, threads: int | None = None) -> ServedModel:
    """Serve the exported ONNX graph ``path`` on ``streams`` ONNX Runtime sessions of ``threads`` threads."""
    path = Path(path)
    spec = read_spec(path)
    run = owning_run(path)
    if run is not None:
        ids, meta = _meta_from_run(run, spec)
    else:
        ids, meta = list(spec.get("folds") or [0]), _meta_from_spec(path, spec)
    predict = onnx_predictor(path, streams, threads)
    precision = precision_of(path, spec)
    name = "onnx-int8" if precision == "int8" else "onnx"
    backend = {"requested": "onnx", "name": name, "file": str(path), "source": "exported file",
               "precision": precision, "streams": predict.streams, "threads": predict.threads}
    log.info("serving %s (%s; %d stream(s) of %d thread(s))", path, precision, predict.streams, predict.threads)
    return served_model(run or path.parent, ids, meta, predict, name, backend)
