"""Serving a file ``maskcls export`` wrote (``--model PATH.onnx``, ``--int8``) instead of the run's checkpoints.

The graph is served as it is: it was checked against PyTorch when it was exported (an INT8 graph
against the validation fold's macro F1), so it is not compared again here; but before anything
listens it must open and be a model of the run it claims (its classes, input size and normalisation:
:mod:`maskcls.infer.model_check`), so that a file copied over the export never answers. What it expects and
answers comes from the run when the file lies inside one (``RUN/export/…``): the checkpoint's meta
of the exported folds gives the task, the preprocessing and the face-crop settings exactly as
``maskcls predict`` uses them. A file copied elsewhere is described by the JSON the export wrote
beside it (input size, class names, normalisation); a face-crop model needs its run (the detector's
settings are in the checkpoints).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import read_json
from ..infer.model_check import check_model, export_command, open_onnx, recorded_normalisation
from ..rundir.checkpoint import load_checkpoint
from ..rundir.models import select_folds
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
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), dict) for k in ("input", "output")) \
            or not isinstance(spec["input"].get("height"), int):
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


def _meta_from_spec(path: Path, spec: dict) -> dict:
    """A checkpoint-like meta from the export's JSON alone (a file outside any run)."""
    pre = spec.get("preprocessing") or {}
    if str(pre.get("crop", "")).startswith("MTCNN"):
        raise ConfigError(f"{path} is a face-crop model: serve it from its run directory (RUN/export/…), whose "
                          "checkpoints hold the face detector's settings")
    names = list(spec["output"].get("class_names") or [])
    competition = Task.from_meta({"task": COMPETITION, "class_names": names})
    task = competition if list(competition.class_names) == names else Task.flat(names)
    norm = recorded_normalisation(spec)
    return {**task.to_meta(), "model_name": spec.get("model", "?"), "heads": spec.get("heads", "single"),
            "preprocessing": {"image_size": int(spec["input"]["height"]), "mean": norm.get("mean", []),
                              "std": norm.get("std", []), "faces": False, "preset": "fast"}}


def precision_of(path: Path, spec: dict) -> str:
    """'int8' or 'fp32', as the export recorded it (older exports: by the file name)."""
    recorded = spec.get("precision") or (spec.get("quantization") or {}).get("precision")
    return str(recorded) if recorded else ("int8" if "int8" in path.name.lower() else "fp32")


def _described(path: Path) -> tuple[dict, Path | None, list[int], dict]:
    """(the export's JSON, the run the file lies in or None, its folds, a checkpoint-like meta of what it serves)."""
    spec = read_spec(path)
    run = owning_run(path)
    if run is not None:
        ids, meta = _meta_from_run(run, spec)
    else:
        ids, meta = list(spec.get("folds") or [0]), _meta_from_spec(path, spec)
    return spec, run, ids, meta


def _fix(path: Path, spec: dict, run: Path | None, ids: list[int]) -> str:
    int8 = precision_of(path, spec) == "int8"
    if run is not None:
        return f"export it again with {export_command(run, ids, int8=int8)}"
    return f"export it again with `maskcls export RUN{' --int8' if int8 else ''} --out {path}` from its run"


def check_exported(path: str | Path) -> None:
    """What ``--model`` / ``--int8`` would serve, checked before anything listens: its JSON, the run it lies in,
    and the graph's answer to one image (:func:`~maskcls.infer.model_check.check_model`)."""
    path = Path(path)
    spec, run, ids, meta = _described(path)
    fix = _fix(path, spec, run, ids)
    session = open_onnx(path, fix=fix)
    check_model(path, lambda x: session.run(None, {"image": x})[0], meta, spec, fix=fix)


def load_exported(path: str | Path, *, streams: int = 1, threads: int | None = None) -> ServedModel:
    """Serve the exported ONNX graph ``path`` on ``streams`` ONNX Runtime sessions of ``threads`` threads, once it
    is checked to be a model of the run it lies in (or of its JSON's classes and input size outside a run)."""
    path = Path(path)
    spec, run, ids, meta = _described(path)
    fix = _fix(path, spec, run, ids)
    predict = onnx_predictor(path, streams, threads, fix=fix)
    check_model(path, predict, meta, spec, fix=fix)
    precision = precision_of(path, spec)
    name = "onnx-int8" if precision == "int8" else "onnx"
    backend = {"requested": "onnx", "name": name, "file": str(path), "source": "exported file",
               "precision": precision, "streams": predict.streams, "threads": predict.threads}
    log.info("serving %s (%s; %d stream(s) of %d thread(s))", path, precision, predict.streams, predict.threads)
    return served_model(run or path.parent, ids, meta, predict, name, backend)
