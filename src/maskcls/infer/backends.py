"""Prediction backends: ``torch`` (the checkpoints, fp32 on a CPU), ``onnx`` (RUN/export/model.onnx through ONNX
Runtime) and ``onnx-int8`` (RUN/export/model.int8.onnx). A missing export is made on the spot with the chosen folds
(the INT8 one under its --max-drop check); an existing one must hold those folds, be newer than their checkpoints
and be a model of this run (:mod:`.model_check`: its classes, input size and normalisation) before it answers.
"""
from __future__ import annotations

import logging
import typing
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import CheckpointError, ConfigError, MaskclsError, did_you_mean
from ..fsutil import read_json
from ..progress import track
from ..rundir.models import LoadedFold
from .export import export_run, is_export_spec, onnx_session
from .loading import check_tta
from .model_check import check_model, export_command

log = logging.getLogger(__name__)

Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
EXPORTED = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}  # in RUN/export/ (serve --int8 loads the latter)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}"
                          f"{did_you_mean(backend, BACKENDS)}")
    return backend


def exported_model(run: str | Path, loaded: list[LoadedFold], backend: str) -> Path | None:
    """The exported file the backend runs (None for torch): RUN/export/model[.int8].onnx, exported now if missing.

    Raises:
        ConfigError: the existing export holds other folds, or is older than one of their checkpoints.
        CheckpointError: the existing file is damaged, has no export JSON, or is not a model of this run
            (other classes, input size or normalisation: :func:`~.model_check.check_model`).
        MaskclsError: an INT8 export made now lost more than the default --max-drop (nothing written).
    """
    if check_backend(backend) == "torch":
        return None
    run, folds = Path(run), [f.fold for f in loaded]
    path = run / "export" / EXPORTED[backend]
    if not path.is_file():
        log.info("no %s yet: exporting folds %s", path, folds)
        _export_now(run, folds, backend)
        return path
    _check_existing_export(path, run, loaded, export_command(run, folds, int8=backend == "onnx-int8"))
    return path


def _export_now(run: Path, folds: list[int], backend: str) -> None:
    spec = ",".join(str(f) for f in folds)
    if backend == "onnx":
        export_run(run, fmt="onnx", folds=spec)
        return
    from .quantize import Int8Refused, export_int8
    try:
        export_int8(run, folds=spec)
    except Int8Refused as e:  # export's own fixes (--force, --calib-method) are not predict's flags
        other = export_command(run, folds, int8=True, more=f"--calib-method {e.other_methods[0]}")
        raise MaskclsError(f"--backend onnx-int8 made the INT8 model now, and it was refused: {e.measured}, so "
                           f"nothing was written to {e.out}; predict with --backend onnx (fp32), or make the INT8 "
                           f"model yourself with {other} (export also takes --max-drop and --force)") from None


def _check_existing_export(path: Path, run: Path, loaded: list[LoadedFold], again: str) -> None:
    """The export in RUN/export/ is of the chosen folds, newer than their checkpoints, and a model of this run."""
    folds = [f.fold for f in loaded]
    spec = read_json(path.with_suffix(".json"))
    if not is_export_spec(spec):
        raise CheckpointError(f"{path} has no export description beside it ({path.with_suffix('.json').name} is "
                              f"missing or was not written by maskcls export), so which run and folds it holds is "
                              f"unknown; move it (and any JSON beside it) away, then export again with {again}")
    have = spec.get("folds")
    if have != folds:
        listed = ",".join(map(str, have)) if isinstance(have, list) else ""
        raise ConfigError(f"{path} holds folds {have}, not the chosen {folds}: export these with {again}"
                          + (f", or pass --folds {listed}" if listed else ""))
    checkpoints = [run / f"fold{f}" / "best.pt" for f in folds]
    if any(c.stat().st_mtime > path.stat().st_mtime for c in checkpoints):
        raise ConfigError(f"{path} is older than the run's checkpoints (trained again since): export it again with "
                          f"{again}")
    fix = f"export it again with {again}"
    session = onnx_session(path, fix=fix)
    check_model(path, lambda x: session.run(None, {"image": x})[0], loaded[0].meta, spec, fix=fix)


def onnx_probs(path: Path, loader, *, tta: str = "none", progress: bool = True) -> np.ndarray:
    """Class probabilities of an exported ONNX model over ``loader`` (and of the mirrored view with tta='hflip')."""
    check_tta(tta)
    session = onnx_session(path)
    out = []
    for x, _, _ in track(loader, desc="predict", enabled=progress):
        x = x.numpy()
        p = session.run(None, {"image": x})[0]
        if tta == "hflip":
            p = (p + session.run(None, {"image": np.ascontiguousarray(x[..., ::-1])})[0]) / 2
        out.append(p.astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, session.get_outputs()[0].shape[1]), np.float32)
