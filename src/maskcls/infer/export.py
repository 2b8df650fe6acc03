"""``maskcls export``: one fold or the fold ensemble as ONNX or TorchScript, preprocessing included.

The exported graph takes uint8 RGB images N×3×S×S and returns class probabilities N×K:
scaling, normalisation, the multi-head combination and the fold average are inside it.
A JSON beside the model documents the crop, size, classes and check values.

Every export is checked before it becomes the result: the written file is run (ONNX Runtime or
TorchScript, fp32 on the CPU) on a fixed random batch and compared with the PyTorch ensemble; a
difference over ``EXPORT_TOLERANCE`` on any probability fails the export and leaves no file (an
earlier export at that place stays as it was). An export writes only its own files: never into a
run directory outside its ``export/`` folder (the run's ``run.json``, checkpoints, ``oof.csv`` …),
never over a file that an earlier export did not write, never to a device, pipe or link.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, MaskclsError
from ..fsutil import atomic_path, atomic_write_json
from ..models.heads import probabilities
from ..rundir.models import LoadedFold, load_folds
from ..task import Task
from .model_check import export_command, load_torchscript, open_onnx

log = logging.getLogger(__name__)

# Largest |exported − PyTorch| accepted on any class probability. Measured fp32 on the CPU (a fixed random
# uint8 batch): ONNX Runtime 1.5e-8 (test model) to 6e-7 (mobilenetv2_100 at 224), TorchScript 0; 1e-4 is
# over 100x what was seen and far below what changes a decision (probabilities are printed to 3 decimals).
EXPORT_TOLERANCE = 1e-4
WRITER = "maskcls export"


class ProbabilityEnsemble(nn.Module):
    """Average of the folds' class probabilities."""

    def __init__(self, models: list[nn.Module], task: Task, heads: str):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.task, self.heads = task, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([probabilities(m(x), self.task, self.heads) for m in self.models]).mean(0)


def build_ensemble(folds: list[LoadedFold]) -> ProbabilityEnsemble:
    return ProbabilityEnsemble([f.model.float().eval() for f in folds], folds[0].task, folds[0].heads).eval()


def _example(size: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


SUFFIXES = {"onnx": (".onnx",), "torchscript": (".ts", ".pt", ".torchscript")}
A_MODEL_FILE = {"onnx": "an ONNX model file", "torchscript": "a TorchScript model file"}


def export_path(run: str | Path, fmt: str, out: str | Path | None) -> Path:
    """Where ``--out`` puts the model: RUN/export/model.<ext> by default, ``out``/model.<ext> for a folder,
    ``out`` + the format's suffix when it has none; a suffix of the other format is refused."""
    default = f"model{SUFFIXES[fmt][0]}"
    if out is None:
        return Path(run) / "export" / default
    out = Path(out)
    if out.is_dir():
        return out / default
    if out.exists() or out.is_symlink():
        _check_writable_target(out)
    if not out.suffix:
        if out.exists():
            raise ConfigError(f"--out {out} exists and is not a folder; give a file name ending in "
                              f"{SUFFIXES[fmt][0]}, or a folder")
        return out.with_name(out.name + SUFFIXES[fmt][0])
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES[fmt]:
        other = [f for f, s in SUFFIXES.items() if suffix in s]
        raise ConfigError(f"--out {out}: {A_MODEL_FILE[fmt]} ends in {' or '.join(SUFFIXES[fmt])}, not {out.suffix}; "
                          f"use --out {out.with_suffix(SUFFIXES[fmt][0])}"
                          + (f", or --format {other[0]}" if other else ""))
    return out


def _check_writable_target(path: Path) -> None:
    """Refuse a link, a device, a pipe or a folder where a model file or its JSON would go."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        what = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise ConfigError(f"--out {path} is {what}; an export writes plain files only: give a new file name "
                          "(or a folder for model.<ext>)")


def is_export_spec(spec) -> bool:
    """Whether ``spec`` (a parsed JSON) is what an export wrote beside its model (this version's or an older one's)."""
    return isinstance(spec, dict) and (spec.get("written_by") == WRITER
                                       or {"format", "input", "output", "check"} <= spec.keys())


def _is_export_spec(path: Path) -> bool:
    """Whether the file ``path`` is the JSON an export wrote beside its model."""
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return is_export_spec(spec)


def _run_owning(path: Path) -> Path | None:
    """The run directory ``path`` lies in (the nearest folder above it with a run.json), if any."""
    for folder in path.resolve().parents:
        if (folder / "run.json").is_file():
            return folder
    return None


def check_export_target(out: Path) -> None:
    """Refuse to write ``out`` (and its JSON) over anything an export did not write.

    Raises:
        ConfigError: ``out`` lies in a run directory outside its ``export/`` folder, names an existing file
            that no export wrote, or is not a regular file.
    """
    spec = out.with_suffix(".json")
    for p in (out, spec):
        _check_writable_target(p)
    owner = _run_owning(out)
    if owner is not None and owner / "export" not in out.resolve().parents:
        raise ConfigError(f"--out {out} lies in the run directory {owner}, whose files are the run's own (run.json, "
                          f"checkpoints, oof.csv …); export into {owner / 'export'}/ (the default) or outside the run")
    if (out.exists() or spec.exists()) and not _is_export_spec(spec):
        theirs = out if out.exists() else spec
        raise ConfigError(f"--out {out}: {theirs} exists and was not written by maskcls export"
                          + (f" (no export JSON {spec.name} beside it)" if theirs == out else "")
                          + "; an export never overwrites other files: choose another --out")


def _write_verified(model: nn.Module, x: torch.Tensor, expected: np.ndarray, out: Path, fmt: str) -> float:
    """Write ``out`` only if the written model's output on ``x`` is within EXPORT_TOLERANCE of ``expected``."""
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # what tracing says of every model (deprecations, Python values frozen into the graph): debug lines
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, torch.jit.TracerWarning))
            if fmt == "onnx":
                torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["image"],
                                  output_names=["probs"], dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}},
                                  opset_version=17)
            else:
                torch.jit.save(torch.jit.trace(model, (x,)), str(tmp))
        got = run_exported(tmp, x.numpy(), fmt=fmt)
        err = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not err <= EXPORT_TOLERANCE:
            raise MaskclsError(f"the {fmt} export differs from the PyTorch model by {err:.2e} on a check batch "
                                  f"(more than {EXPORT_TOLERANCE:.0e}): a wrong model, so nothing was written to "
                                  f"{out}; try the other --format, or report this with your torch/onnx versions")
    return err


def export_run(run: str | Path, *, fmt: str = "onnx", folds: str = "all", out: str | Path | None = None) -> Path:
    """Export and verify; returns the model path (its JSON sits beside it).

    Raises:
        ConfigError: a format or ``out`` that cannot be written (see :func:`check_export_target`).
        MaskclsError: the written model differs from PyTorch by more than ``EXPORT_TOLERANCE``
            (then no file is left at ``out``).
    """
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format {fmt!r}: choose onnx or torchscript")
    out = export_path(run, fmt, out)
    check_export_target(out)
    loaded = load_folds(run, folds)
    pp = loaded[0].preprocessing
    model = build_ensemble(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = _example(pp.image_size)
    with torch.no_grad():
        expected = model(x).numpy()
    err = _write_verified(model, x, expected, out, fmt)
    meta = loaded[0].meta
    spec = {"written_by": WRITER, "format": fmt, "precision": "fp32", "model": meta["model_name"],
            "folds": [f.fold for f in loaded], "heads": meta["heads"],
            "input": {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                      "height": pp.image_size, "width": pp.image_size},
            "preprocessing": {
                "crop": "MTCNN face crop (maskcls faces) resized to the input size" if pp.faces else
                        "centre square of the photo (side = min(width, height)), resized to the input size",
                "resize": "area interpolation when shrinking, bilinear when enlarging",
                "inside_model": f"x/255, then (x - mean) / std with mean={pp.mean} std={pp.std}"},
            "output": {"name": "probs", "meaning": "class probabilities (fold average)",
                       "class_names": meta["class_names"]},
            "check": {"max_abs_diff_vs_pytorch": err, "tolerance": EXPORT_TOLERANCE}}
    atomic_write_json(out.with_suffix(".json"), spec)
    log.info("exported %s (max |diff| vs PyTorch %.2e)", out, err)
    return out


def run_exported(path: str | Path, images: np.ndarray, fmt: str | None = None) -> np.ndarray:
    """Run an exported model on uint8 N×3×S×S images (onnxruntime or TorchScript; ``fmt`` default: by
    the file's suffix).

    Raises:
        CheckpointError: the file cannot be loaded (damaged, or not a model of that format).
    """
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix.lower() in SUFFIXES["onnx"] else "torchscript")
    if fmt == "onnx":
        return onnx_session(path).run(None, {"image": images})[0]
    module = load_torchscript(path, fix=f"export it again with {export_command('RUN', more='--format torchscript')}")
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()


def onnx_session(path: str | Path, threads: int | None = None, *, fix: str | None = None):
    """An ONNX Runtime CPU session of an exported model (input ``image``, output ``probs``); ``threads``:
    intra-op threads (default: ONNX Runtime's, one per physical core). A file that cannot be loaded is a
    CheckpointError naming it and saying ``fix`` (default: export it again)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return open_onnx(path, opts, fix=fix or f"export it again with {export_command('RUN')}")
