"""``maskcls export --int8``: the fp32 ONNX export quantized to INT8, kept only when it scores as well.

ONNX Runtime's static quantization (QDQ format, per-channel INT8 weights, uint8 activations) of the
verified fp32 export. Activation ranges are calibrated on ``calib_images`` training images of the
exported fold, read exactly as prediction reads them (the run's crop and size, uint8 N×3×S×S — the
graph's own input); no label is used. Both models then score the same fold's validation images in the
view the run validated with (``train.valid_tta``, flip TTA by default: the fp32 figure is then training's
for a CPU run), plain argmax without decision offsets, and the INT8 file is kept only when its macro F1 is
at most ``max_drop`` below the fp32 model's (``force`` keeps it anyway). Calibration and validation images
are disjoint. With several folds the ensemble's F1 on fold ``f``'s validation images is not
out-of-fold (the other folds trained on them), but both models see the same images, so the delta
still measures what quantization cost.

The first ``fp32_first`` Conv layers (default 3) stay fp32 too: on the dev sets they caused most of the
disagreement with the fp32 model. The head stays fp32: every node after the last Conv/MatMul/Gemm (the
classifier itself included, then softmax, the multi-head combination and the fold average) is left
unquantized, so the output keeps full-precision probabilities instead of 1/255 steps that would tie the argmax.

The file goes to ``RUN/export/model.int8.onnx`` by default (``maskcls serve RUN --int8`` loads that
path), its JSON beside it, under the fp32 export's rules (:func:`~maskcls.infer.export.check_export_target`).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import platform
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..data.loader import build_loader
from ..engine.fold_data import fold_rows, make_dataset, resolve_loader
from ..errors import ConfigError, MaskclsError, did_you_mean
from ..fsutil import atomic_path, atomic_write_json
from ..metrics import confusion, macro_f1
from ..prep.prepared import Prepared, load_prepared
from ..rundir.models import LoadedFold, load_folds
from .export import check_export_target, export_path, export_run, onnx_session

log = logging.getLogger(__name__)

INT8_NAME = "model.int8.onnx"
DEFAULT_MAX_DROP = 0.005  # 0.5 points of macro F1: the budget for what INT8 may cost
DEFAULT_CALIB_IMAGES = 300
METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
# Measured on the real dev sets (mobilenetv2_100, 128 px, 2 seeds each; docs/quality.md "INT8"): quantizing only the
# first quarter of the network caused most of INT8's disagreement with fp32 (the normalised input re-rounded onto
# one uint8 grid for all three channels, then the early high-resolution layers). Keeping the first 3 convs fp32
# (stem + the first block) cut the rows that differ from torch in bench predict from 14 to 5 of 2,000 and kept
# INT8 at 2.4x fp32 ONNX; with entropy ranges it lost the least F1 (mask3dev +0.14, agegender6dev -0.36 points
# on average). Entropy used to raise ValueError on a short last calibration batch: _Batches(single=True).
DEFAULT_METHOD = "entropy"
DEFAULT_FP32_FIRST = 3
HEAVY = ("Conv", "MatMul", "Gemm")


class Int8Refused(MaskclsError):
    """The INT8 model lost more than ``--max-drop`` of macro F1: nothing was written.

    ``measured`` says what was lost, ``out`` where nothing was written, ``other_methods`` the calibrations
    not tried; the message gives the fixes of ``maskcls export`` (a caller with other flags words its own).
    """

    def __init__(self, measured: str, out: Path, method: str):
        self.measured, self.out = measured, out
        self.other_methods = [m for m in METHODS if m != method]
        super().__init__(f"{measured}, so nothing was written to {out}; use the fp32 export, try --calib-method "
                         f"{' or '.join(self.other_methods)}, or keep it with --force")


def int8_path(run: str | Path, out: str | Path | None) -> Path:
    """RUN/export/model.int8.onnx by default; ``out`` as for the fp32 export (a folder gets model.int8.onnx)."""
    if out is None:
        return Path(run) / "export" / INT8_NAME
    if Path(out).is_dir():
        return Path(out) / INT8_NAME
    return export_path(run, "onnx", out)


def _has_vnni() -> bool:
    """Whether this x86 CPU multiplies u8×s8 without the 16-bit saturation older AVX2 kernels risk."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _reduce_range() -> bool:
    """7-bit weights on x86 without VNNI (ONNX Runtime's advice against u8s8 saturation); 8-bit elsewhere."""
    return platform.machine().lower() in ("x86_64", "amd64", "i686") and not _has_vnni()


def _heavy_depths(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, int]]:
    """Per node: the most Conv/MatMul/Gemm nodes on one path from it to an output, and from an input to it
    (itself included in both). ONNX graphs are stored in topological order."""
    consumers: dict[str, list] = {}
    producer = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        producer.update({name: node for name in node.output})
    below: dict[str, int] = {}
    for node in reversed(model.graph.node):
        nxt = [below[c.name] for out in node.output for c in consumers.get(out, [])]
        below[node.name] = max(nxt, default=0) + (node.op_type in HEAVY)
    above: dict[str, int] = {}
    for node in model.graph.node:
        prev = [above[producer[name].name] for name in node.input if name in producer]
        above[node.name] = max(prev, default=0) + (node.op_type in HEAVY)
    return below, above


def tail_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes from which no Conv/MatMul/Gemm is reachable, plus the last of those (the classifier)."""
    below, _ = _heavy_depths(model)
    return [n.name for n in model.graph.node if below[n.name] == 0 or (n.op_type in HEAVY and below[n.name] == 1)]


def fp32_nodes(model: onnx.ModelProto, *, first: int = 0, last: int = 0) -> list[str]:
    """The nodes left in fp32: the head (:func:`tail_nodes`), the ``first`` Conv/MatMul/Gemm layers from the
    input with what comes before them, and the ``last`` ones before the classifier with what comes after them
    (each counts the non-Conv nodes next to its layers, e.g. the activation after the ``first``-th layer and the
    residual Add before the ``last``-th).

    Layers count along the longest path, per branch, so a fold ensemble keeps the same layers of every fold.
    """
    below, above = _heavy_depths(model)
    tail = set(tail_nodes(model))
    return [n.name for n in model.graph.node
            if n.name in tail or (first > 0 and above[n.name] <= first) or (last > 0 and below[n.name] <= last + 1)]


class _Batches(CalibrationDataReader):
    """The loader's uint8 batches as ONNX Runtime's calibration input.

    ``single``: one image per batch. ONNX Runtime's histogram calibrators (entropy, percentile) stack every
    batch's activations into one array, which fails (ValueError: inhomogeneous shape) when the last batch is
    smaller than the others; images one by one give the same histograms, whatever the image count.
    """

    def __init__(self, loader, *, single: bool = False):
        batches = (b[0].numpy() for b in loader)
        self._it = (b[i:i + 1] for b in batches for i in range(len(b))) if single else batches

    def get_next(self) -> dict | None:
        batch = next(self._it, None)
        return None if batch is None else {"image": batch}


def quantize_onnx(fp32: Path, out: Path, loader, *, method: str = DEFAULT_METHOD, fp32_first: int = DEFAULT_FP32_FIRST,
                  fp32_last: int = 0) -> dict:
    """Write the INT8 model of ``fp32`` to ``out``, calibrated on ``loader``'s batches, with ``fp32_first`` /
    ``fp32_last`` Conv/MatMul/Gemm layers kept fp32 from the input / before the classifier (:func:`fp32_nodes`)."""
    with tempfile.TemporaryDirectory(prefix="maskcls-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))  # shape inference + graph optimisation, as ORT recommends
        graph = onnx.load(str(pre))
        excluded = fp32_nodes(graph, first=fp32_first, last=fp32_last)
        _check_some_layer_left(graph, excluded, fp32_first, fp32_last)
        reduce_range = _reduce_range()
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its calibration steps; a library logs
            quantize_static(str(pre), str(out), _Batches(loader, single=method != "minmax"),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=METHODS[method],
                            extra_options={"CalibMaxIntermediateOutputs": 4})  # bounds min/max calibration's memory
    quantized = quantized_layers(onnx.load(str(out)))
    if not quantized:
        raise MaskclsError(f"the INT8 model of {fp32.name} has no quantized layer (ONNX Runtime quantized none of its "
                           "Conv/MatMul/Gemm inputs), so no INT8 file was written; use the fp32 export")
    return {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8 per tensor",
            "reduce_range": reduce_range, "fp32_first_layers": fp32_first, "fp32_last_layers": fp32_last,
            "fp32_nodes": len(excluded), "int8_layers": len(quantized)}


def _check_some_layer_left(model: onnx.ModelProto, excluded: list[str], first: int, last: int) -> None:
    """Refuse ``--fp32-first`` / ``--fp32-last`` values that keep every Conv/MatMul/Gemm layer fp32."""
    heavy = [n.name for n in model.graph.node if n.op_type in HEAVY]
    if set(heavy) - set(excluded):
        return
    _, above = _heavy_depths(model)
    depth = max((above[n] for n in heavy), default=0)
    raise ConfigError(f"--fp32-first {first} --fp32-last {last} keep all {len(heavy)} Conv/MatMul/Gemm layers of this "
                      f"model fp32 (it is {depth} layers deep, the classifier always stays fp32): nothing would be "
                      f"quantized, so no INT8 file was written; use fewer (the default is --fp32-first "
                      f"{DEFAULT_FP32_FIRST} --fp32-last 0)")


def quantized_layers(model: onnx.ModelProto) -> list[str]:
    """The Conv/MatMul/Gemm nodes of a QDQ graph that read a dequantized (INT8) tensor."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type in HEAVY and dequantized & set(n.input)]


class Views(NamedTuple):
    """The images scored: ``loader``'s batches alone (``tta='none'``) or averaged with their mirror (``'hflip'``)."""
    loader: object
    tta: str = "none"


def score_models(paths: list[Path], views: Views, k: int) -> list[float]:
    """Macro F1 (argmax of the probabilities averaged over ``views.tta``'s views) of each ONNX model in ``paths``
    on the images and labels of ``views.loader``."""
    sessions = [onnx_session(p) for p in paths]
    preds: list[list[np.ndarray]] = [[] for _ in paths]
    labels = []
    for x, y, _ in views.loader:
        inputs = [x.numpy()] + ([np.ascontiguousarray(x.numpy()[..., ::-1])] if views.tta == "hflip" else [])
        for s, out in zip(sessions, preds):
            out.append(sum(s.run(None, {"image": v})[0] for v in inputs).argmax(1))
        labels.append(y.numpy())
    y = np.concatenate(labels)
    return [macro_f1(confusion(y, np.concatenate(p), k)) for p in preds]


def _fold_loaders(loaded: list[LoadedFold], prep: Prepared, calib_images: int, seed: int):
    """(calibration loader, validation loader, their row counts) of the first exported fold."""
    cfg, pp = loaded[0].cfg, loaded[0].preprocessing
    train_rows, valid_rows = fold_rows(prep, loaded[0].fold)
    calib = train_rows.sample(n=min(calib_images, len(train_rows)), random_state=seed).sort_index()
    workers, kind = resolve_loader(cfg.data)

    def loader(rows):
        ds = make_dataset(prep, rows, cfg.data, pp, training=False, seed=0)
        return build_loader(ds, batch_size=cfg.train.valid_batch_size, sampler=range(len(ds)), workers=workers,
                            kind=kind)
    return loader(calib), loader(valid_rows), len(calib), len(valid_rows)


def _trained_on(fold: LoadedFold) -> Prepared:
    where = Path(fold.meta["prepared"])
    if not (where / "prepare.json").is_file():
        raise FileNotFoundError(f"the INT8 export calibrates and scores on the prepared directory the run trained on, "
                                f"{where}, which is gone; restore it, or export fp32 (without --int8)")
    return load_prepared(where)


def export_int8(run: str | Path, *, folds: str = "all", out: str | Path | None = None,
                max_drop: float = DEFAULT_MAX_DROP, calib_images: int = DEFAULT_CALIB_IMAGES, seed: int = 0,
                method: str = DEFAULT_METHOD, fp32_first: int = DEFAULT_FP32_FIRST, fp32_last: int = 0,
                force: bool = False) -> dict:
    """Quantize, score and keep (or refuse) the INT8 model; returns the path and both F1s.

    Args:
        run: a run directory.
        folds: 'all', 'best' or a list like '0,2' (as for the fp32 export).
        out: model file or folder (default RUN/export/model.int8.onnx).
        max_drop: largest macro F1 loss (fp32 − INT8) on the validation fold that leaves a file.
        calib_images: training images of the fold used for calibration (a seeded sample).
        seed: the calibration sample's seed.
        method: calibration: 'entropy' (default, DEFAULT_METHOD), 'minmax' or 'percentile'.
        fp32_first: Conv layers from the input kept fp32 (default DEFAULT_FP32_FIRST).
        fp32_last: Conv layers before the classifier kept fp32 (the classifier always is).
        force: keep the INT8 file whatever it lost.

    Raises:
        ConfigError: a bad method or ``out`` (:func:`check_export_target`), ``fp32_first`` / ``fp32_last`` keeping
            every layer fp32 (nothing written).
        Int8Refused: the INT8 model lost more than ``max_drop`` (nothing written, an earlier file stays).
        MaskclsError: ONNX Runtime quantized no layer (nothing written).
    """
    if method not in METHODS:
        raise ConfigError(f"--calib-method {method!r}: choose one of {', '.join(METHODS)}"
                          f"{did_you_mean(method, METHODS)}")
    if fp32_first < 0 or fp32_last < 0:
        raise ConfigError(f"--fp32-first {fp32_first} / --fp32-last {fp32_last}: use 0 or more layers")
    if calib_images < 1:
        raise ConfigError(f"--calib-images {calib_images}: use at least 1 (a few hundred is typical)")
    out = int8_path(run, out)
    check_export_target(out)
    loaded = load_folds(run, folds)
    prep = _trained_on(loaded[0])
    calib_loader, valid_loader, n_calib, n_valid = _fold_loaders(loaded, prep, calib_images, seed)
    tta = loaded[0].cfg.train.valid_tta  # the view the run validated with: fp32 here = training's figure on a CPU
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maskcls-fp32-") as tmp:
        fp32 = export_run(run, fmt="onnx", folds=",".join(str(f.fold) for f in loaded), out=Path(tmp) / "model.onnx")
        spec = json.loads(fp32.with_suffix(".json").read_text())
        with atomic_path(out) as tmp_out:
            settings = quantize_onnx(fp32, tmp_out, calib_loader, method=method, fp32_first=fp32_first,
                                     fp32_last=fp32_last)
            f1_fp32, f1_int8 = score_models([fp32, tmp_out], Views(valid_loader, tta), loaded[0].task.num_classes)
            delta = f1_int8 - f1_fp32
            if -delta > max_drop and not force:
                raise Int8Refused(f"int8 macro F1 delta: {delta:+.4f} (fp32 {f1_fp32:.4f}, int8 {f1_int8:.4f} on "
                                  f"{n_valid} validation images of fold {loaded[0].fold}, "
                                  f"{'flip TTA' if tta == 'hflip' else 'one view'}) loses more than --max-drop "
                                  f"{max_drop:g}", out, method)
    spec.update(precision="int8", quantization=settings,
                calibration={"images": n_calib, "fold": loaded[0].fold, "rows": "training rows of the fold",
                             "seed": seed, "method": method},
                validation={"fold": loaded[0].fold, "images": n_valid, "macro_f1_fp32": f1_fp32,
                            "macro_f1_int8": f1_int8, "delta": delta, "max_drop": max_drop, "forced": -delta > max_drop,
                            "decision": "argmax (no decision offsets)", "tta": tta},
                check={"fp32_max_abs_diff_vs_pytorch": spec["check"]["max_abs_diff_vs_pytorch"],
                       "note": "the INT8 model is judged by validation macro F1, not by the fp32 export's check"})
    atomic_write_json(out.with_suffix(".json"), spec)
    log.info("INT8 export %s: macro F1 %.4f (fp32 %.4f)", out, f1_int8, f1_fp32)
    return {"path": out, "f1_fp32": f1_fp32, "f1_int8": f1_int8, "delta": delta, "validation_images": n_valid,
            "calibration_images": n_calib, "forced": -delta > max_drop, "fold": loaded[0].fold,
            "folds": [f.fold for f in loaded], "tta": tta}
