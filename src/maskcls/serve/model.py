"""The served model: a run's folds behind ONNX Runtime (default) or torch, and what it answers.

ONNX Runtime runs the graph ``maskcls export`` writes (uint8 N×3×S×S in, fold-averaged
probabilities out, normalisation and heads inside). It is exported on first use into
``RUN/export/serve-folds<ids>.onnx`` and, every time it is loaded, checked against the torch
ensemble on the same random batch: a stale or damaged file is exported again, and a graph
that still disagrees (or cannot be exported) falls back to torch with a warning — the answer
never silently differs from what ``maskcls predict`` would say.
"""
from __future__ import annotations

import json
import logging
import queue
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..data.preprocessing import Preprocessing
from ..errors import ConfigError
from ..fsutil import cpu_count
from ..infer.export import EXPORT_TOLERANCE, build_ensemble, export_run
from ..infer.loading import device_for_inference, inference_bf16
from ..infer.model_check import open_onnx
from ..rundir.models import LoadedFold, load_folds
from ..rundir.summary import read_summary
from ..task import Task

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")
# Largest |ONNX − torch| accepted on probabilities: the export's own check (fp32 both; observed <= 6e-7).
ONNX_TOLERANCE = EXPORT_TOLERANCE

Predictor = Callable[[np.ndarray], np.ndarray]  # uint8 N×3×S×S → float32 N×K probabilities


@dataclass
class ServedModel:
    """What the server needs of a run: the predictor and how to prepare its input."""
    run: Path
    folds: list[int]
    task: Task
    preprocessing: Preprocessing
    predict: Predictor
    backend: str
    face_settings: dict | None = None
    info: dict = field(default_factory=dict)  # what GET /v1/model shows


def torch_predictor(loaded: list[LoadedFold], device: torch.device | None = None) -> Predictor:
    """The fold ensemble on ``device`` (default CPU: the reference an ONNX graph is checked against), in the
    inference precision predict and validation use there (:func:`~..infer.loading.inference_bf16`: fp32 on a CPU)."""
    device = device or torch.device("cpu")
    ensemble = build_ensemble(loaded).to(device)
    bf16 = inference_bf16(loaded, device)

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return ensemble(torch.from_numpy(images).to(device)).float().cpu().numpy()
    return predict


def onnx_session(path: Path, threads: int, *, fix: str = "export it again with `maskcls export RUN`"):
    """One ONNX Runtime session on ``threads`` intra-op threads (the calling thread is one of them); a file that
    cannot be loaded is a CheckpointError naming it and saying ``fix``."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Idle ORT threads spin by default, taking the cores that decode uploads and run the event loop.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return open_onnx(path, opts, fix=fix)


def default_streams() -> int:
    """Sessions when ``--streams`` is not given: one, on every core.

    Measured with ``maskcls bench serve`` (2-core AMD EPYC Zen 4, MobileNetV2 at 128 px, fp32): one
    session of 2 threads served 329 and 255 requests/s at concurrency 8 in two runs, two sessions of one
    thread 232 and 212; two streams won only at concurrency 32 (1.08x, 1.16x), and for INT8 the two runs
    disagreed. Micro-batching already fills one session's batch, and two sessions compete with decoding
    and the event loop for the same two cores.
    """
    return 1


def default_threads(streams: int) -> int:
    """Intra-op threads per session: the cores shared out between the streams (at least one each)."""
    return max(1, cpu_count() // streams)


class SessionPool:
    """``streams`` ONNX Runtime sessions of one graph; each call runs on one that is free.

    OpenVINO's "streams" on a CPU: several batches in parallel, each on a few threads, rather than
    one batch on every core — small convolutions scale poorly across threads. A caller may run up
    to ``streams`` calls at once (the batcher does); a further call waits for a session.
    """

    def __init__(self, path: Path, streams: int = 1, threads: int | None = None, *, fix: str | None = None):
        if streams < 1 or (threads is not None and threads < 1):
            raise ConfigError(f"--streams and --threads must be at least 1, not {streams} and {threads}")
        self.path, self.streams, self.threads = Path(path), streams, threads or default_threads(streams)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(streams):
            self._free.put(onnx_session(self.path, self.threads, **({"fix": fix} if fix else {})))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        session = self._free.get()
        try:
            return session.run(None, {"image": images})[0]
        finally:
            self._free.put(session)


def onnx_predictor(path: Path, streams: int = 1, threads: int | None = None, *, fix: str | None = None) -> SessionPool:
    return SessionPool(path, streams, threads, fix=fix)


def check_batch(image_size: int, n: int = 4) -> np.ndarray:
    """A fixed random uint8 batch for comparing backends."""
    return np.random.default_rng(0).integers(0, 256, (n, 3, image_size, image_size), dtype=np.uint8)


def _disagreement(predict: Predictor, reference: Predictor, image_size: int) -> float:
    x = check_batch(image_size)
    return float(np.abs(predict(x) - reference(x)).max())


def onnx_cache_path(run: Path, folds: list[int]) -> Path:
    return run / "export" / f"serve-folds{'-'.join(map(str, folds))}.onnx"


def _export(run: Path, folds: list[int], path: Path) -> Path:
    """Export into ``path``; a run directory we may not write into gets a temporary copy instead."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return export_run(run, fmt="onnx", folds=",".join(map(str, folds)), out=path)
    except PermissionError:
        tmp = Path(tempfile.mkdtemp(prefix="maskcls-serve-")) / path.name
        log.warning("cannot write %s; exporting to %s (not cached)", path, tmp)
        return export_run(run, fmt="onnx", folds=",".join(map(str, folds)), out=tmp)


def cached_onnx(run: Path, folds: list[int], reference: Predictor, image_size: int, streams: int = 1,
                threads: int | None = None) -> tuple[Predictor, dict]:
    """The run's ONNX predictor (``streams`` sessions of ``threads`` threads), exported when missing and
    re-exported when it disagrees with ``reference``."""
    path = onnx_cache_path(run, folds)
    for attempt in ("cached", "exported"):
        if attempt == "exported" or not path.is_file():
            path = _export(run, folds, path)
            attempt = "exported"
        try:
            predict = onnx_predictor(path, streams, threads)
            diff = _disagreement(predict, reference, image_size)
        except Exception as e:  # a damaged file, an ORT that cannot load it
            log.warning("ONNX model %s unusable (%s)", path, e)
            diff = float("inf")
        if diff <= ONNX_TOLERANCE:
            log.info("ONNX model %s (%s), max |diff| vs torch %.1e", path, attempt, diff)
            shown = path.relative_to(run) if path.is_relative_to(run) else path
            return predict, {"file": str(shown), "source": attempt, "max_abs_diff_vs_torch": diff,
                             "precision": "fp32", "streams": predict.streams, "threads": predict.threads}
        log.warning("ONNX model %s differs from the checkpoints by %.2e (> %.0e)", path, diff, ONNX_TOLERANCE)
    raise RuntimeError(f"the ONNX export of {run} disagrees with its checkpoints by {diff:.2e}")


def validation_scores(run: Path, folds: list[int]) -> dict:
    """The run's validation macro F1 of the served folds (summary.json), and its mean / out-of-fold F1."""
    summary = read_summary(run, required=False) or {}  # not written yet (interrupted): the scores are unknown
    per_fold = {str(f): (summary.get("folds", {}).get(str(f)) or {}).get("best_f1") for f in folds}
    return {"macro_f1_per_fold": per_fold, "mean_f1": summary.get("mean_f1"), "oof_f1": summary.get("oof_f1"),
            "head_f1": summary.get("head_f1")}


def load_model(run: str | Path, *, folds: str = "best", backend: str = "onnx", streams: int = 1,
               threads: int | None = None) -> ServedModel:
    """Load ``folds`` of ``run`` ('best', 'all', '0,2') behind ``backend`` ('onnx' or 'torch'); ONNX Runtime
    runs ``streams`` sessions of ``threads`` intra-op threads each (default: the cores shared out)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch" and streams != 1:
        raise ConfigError("--streams applies to the onnx backend only (torch runs one batch at a time)")
    run = Path(run)
    loaded = load_folds(run, folds)
    ids = [f.fold for f in loaded]
    meta, pp = loaded[0].meta, loaded[0].preprocessing
    predict, used, backend_info = None, "torch", {}
    if backend == "onnx":
        try:
            predict, backend_info = cached_onnx(run, ids, torch_predictor(loaded), pp.image_size, streams, threads)
            used = "onnx"
        except Exception as e:  # torch is the fallback: same numbers, slower
            log.warning("serving with torch instead of ONNX Runtime: %s", e)
            backend_info = {"fallback_reason": str(e)}
    if predict is None:  # the torch backend runs on the GPU when there is one
        device = device_for_inference()
        precision = "bf16 autocast" if inference_bf16(loaded, device) else "fp32"
        predict = torch_predictor(loaded, device)
        backend_info = {**backend_info, "device": str(device), "precision": precision}
    return served_model(run, ids, meta, predict, used, {"requested": backend, "name": used, **backend_info})


def served_model(run: Path, ids: list[int], meta: dict, predict: Predictor, used: str, backend: dict) -> ServedModel:
    """The served model of ``run``'s folds ``ids`` from a checkpoint's ``meta``; ``backend``: what /v1/model shows."""
    task, pp = Task.from_meta(meta), Preprocessing(**meta["preprocessing"])
    info = {"maskcls_version": __version__, "run": run.name, "model": meta["model_name"], "heads": meta["heads"],
            "task": {"kind": task.kind, "class_names": list(task.class_names),
                     "attributes": [{"name": a.name, "classes": list(a.classes)} for a in task.attributes],
                     "old_age": task.old_age},
            "preprocessing": {**pp.to_dict(), "face_settings": meta.get("face_settings"),
                              "input": f"uint8 RGB {pp.image_size}x{pp.image_size}"},
            "folds": ids, "validation": validation_scores(run, ids),
            "backend": backend}
    log.debug("serving %s", json.dumps(info))
    return ServedModel(run, ids, task, pp, predict, used, meta.get("face_settings") if pp.faces else None, info)
