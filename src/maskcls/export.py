"""``maskcls export``: one fold or the fold ensemble as ONNX or TorchScript, preprocessing included.

The exported graph takes uint8 RGB images N×3×S×S and returns class probabilities N×K:
scaling, normalisation, the multi-head combination and the fold average are inside it.
A JSON beside the model documents the crop, size, classes and check values.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .fsutil import atomic_path, atomic_write_json
from .inference import LoadedFold, load_folds
from .labels import Task
from .models.heads import probabilities

log = logging.getLogger(__name__)


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


def export_path(run: str | Path, fmt: str, out: str | Path | None) -> Path:
    """Where ``--out`` puts the model: RUN/export/model.<ext> by default, ``out``/model.<ext> for a folder,
    ``out`` + the format's suffix when it has none; a suffix of the other format is refused."""
    default = f"model{SUFFIXES[fmt][0]}"
    if out is None:
        return Path(run) / "export" / default
    out = Path(out)
    if out.is_dir():
        return out / default
    if not out.suffix:
        return out.with_name(out.name + SUFFIXES[fmt][0])
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES[fmt]:
        other = [f for f, s in SUFFIXES.items() if suffix in s]
        raise ConfigError(f"--out {out}: a {fmt} model file ends in {' or '.join(SUFFIXES[fmt])}, not {out.suffix}; "
                          f"use --out {out.with_suffix(SUFFIXES[fmt][0])}"
                          + (f", or --format {other[0]}" if other else ""))
    return out


def export_run(run: str | Path, *, fmt: str = "onnx", folds: str = "all", out: str | Path | None = None) -> Path:
    """Export and verify; returns the model path (its JSON sits beside it)."""
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"--format {fmt!r}: choose onnx or torchscript")
    out = export_path(run, fmt, out)
    loaded = load_folds(run, folds)
    pp = loaded[0].preprocessing
    model = build_ensemble(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = _example(pp.image_size)
    with torch.no_grad():
        expected = model(x).numpy()
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["image"], output_names=["probs"],
                              dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}}, opset_version=17)
        else:
            torch.jit.save(torch.jit.trace(model, (x,)), str(tmp))
    got = run_exported(out, x.numpy(), fmt=fmt)
    err = float(np.abs(got - expected).max())
    meta = loaded[0].meta
    spec = {"format": fmt, "model": meta["model_name"], "folds": [f.fold for f in loaded], "heads": meta["heads"],
            "input": {"name": "image", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                      "height": pp.image_size, "width": pp.image_size},
            "preprocessing": {
                "crop": "MTCNN face crop (maskcls faces) resized to the input size" if pp.faces else
                        "centre square of the photo (side = min(width, height)), resized to the input size",
                "resize": "area interpolation when shrinking, bilinear when enlarging",
                "inside_model": f"x/255, then (x - mean) / std with mean={pp.mean} std={pp.std}"},
            "output": {"name": "probs", "meaning": "class probabilities (fold average)",
                       "class_names": meta["class_names"]},
            "check": {"max_abs_diff_vs_pytorch": err}}
    atomic_write_json(out.with_suffix(".json"), spec)
    log.info("exported %s (max |diff| vs PyTorch %.2e)", out, err)
    return out


def run_exported(path: str | Path, images: np.ndarray, fmt: str | None = None) -> np.ndarray:
    """Run an exported model on uint8 N×3×S×S images (onnxruntime or TorchScript; ``fmt`` default: by
    the file's suffix)."""
    path = Path(path)
    fmt = fmt or ("onnx" if path.suffix.lower() in SUFFIXES["onnx"] else "torchscript")
    if fmt == "onnx":
        import onnxruntime as ort
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {"image": images})[0]
    module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(images)).numpy()
