"""The peer: timm's own reference ``train.py`` on a prepared set, its inputs made and its output scored.

timm's train.py is never copied into this project: it is taken from a git copy of
huggingface/pytorch-image-models (the bare mirror ``fetch`` brings, or any clone) into a scratch
folder and run from there with the installed ``timm`` package. This module

1. lays a fold of a prepared directory out as an ImageFolder of symlinks (class folders 00..K-1, so
   ImageFolder's class index is our class id): train = the other folds, validation = the fold;
2. saves the offline ImageNet weights maskcls uses (``model.pretrained=package``, matched by tensor
   order) as a timm state dict, for ``--pretrained-path``;
3. builds the command a competent user would run: AdamW 1e-3, cosine without warm-up (its default
   5-epoch warm-up would be the whole budget), label smoothing 0.1, weight decay 0.01; everything
   else its defaults; the input size, epochs, batch × accumulation, seed, workers and precision given;
4. scores a checkpoint's macro F1 on the validation fold with timm's own evaluation transform and
   maskcls' metrics (timm's logged top-1 is not macro F1), and reads its per-epoch training time.

``scripts/peer_timm.py`` (docs/quality.md) and ``maskcls bench time-to-f1`` both run it through here.
"""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..metrics import confusion, macro_f1

log = logging.getLogger(__name__)

# timm's per-update log line; the last one of an epoch carries the average update time over the epoch:
# "Train: 2 [  71/72 (100%)]  Loss: … Time: 0.512s,   58.59/s  (0.640s,   46.88/s)  LR: …"
_TRAIN_LINE = re.compile(r"Train: (\d+) \[\s*(\d+)/(\d+) .*?Time: [\d.]+s,\s*[\d.]+/s\s+\(([\d.]+)s,")


@dataclass(frozen=True)
class PeerSettings:
    """What timm's train.py is told; the fields a comparison must make equal to the other side."""
    arch: str = "tf_efficientnet_lite0"
    img_size: int = 128
    epochs: int = 3
    batch: int = 30
    valid_batch: int = 60
    accum: int = 1
    seed: int = 719
    workers: int = 2
    precision: str = "no"   # 'no', 'bf16' or 'fp16' (what maskcls' resolve_precision returns)
    device: str = "cpu"


def fetch_train_py(timm_repo: str | Path, out: Path, rev: str = "HEAD") -> Path:
    """``rev:train.py`` of the git directory ``timm_repo`` written to ``out/train.py``."""
    r = subprocess.run(["git", "--git-dir", str(timm_repo), "show", f"{rev}:train.py"], capture_output=True)
    if r.returncode != 0:
        raise ConfigError(f"--timm-repo {timm_repo}: cannot read {rev}:train.py from it "
                          f"({r.stderr.decode(errors='replace').strip()}); give the git directory of a copy of "
                          "huggingface/pytorch-image-models (a bare mirror's directory or a clone's .git)")
    path = out / "train.py"
    path.write_bytes(r.stdout)
    return path


def image_folder(prep, out: Path, fold: int = 0) -> tuple[Path, int, int]:
    """train/ and validation/ of symlinks to the prepared images, one folder per class id; returns
    (root, training images, validation images)."""
    root = out / "data"
    k = prep.task.num_classes
    rows = prep.train_rows()
    paths = prep.abs_paths(rows)
    counts = []
    for split, sel in (("train", rows["fold"] != fold), ("validation", rows["fold"] == fold)):
        for c in range(k):
            (root / split / f"{c:02d}").mkdir(parents=True, exist_ok=True)
        for i, (p, y) in enumerate(zip(paths[sel.to_numpy()], rows.loc[sel, "label"])):
            link = root / split / f"{int(y):02d}" / f"{i:06d}{Path(p).suffix.lower()}"
            if not link.exists():
                os.symlink(p, link)
        counts.append(int(sel.sum()))
    return root, counts[0], counts[1]


def class_map(out: Path, k: int) -> Path:
    """Class folder names in id order, so class indices stay fixed even when a class folder is empty."""
    path = out / "classes.txt"
    path.write_text("".join(f"{c:02d}\n" for c in range(k)))
    return path


def timm_weights(out: Path, arch: str = "tf_efficientnet_lite0") -> Path:
    """The offline ImageNet weights of ``arch`` (maskcls' package source) saved as a timm state dict."""
    import timm

    from ..models.weights import load_package_state
    model = timm.create_model(arch, pretrained=False)
    path = out / f"{arch}-imagenet-timm.pth"
    torch.save(load_package_state(arch, model), path)
    return path


def precision_flags(precision: str) -> list[str]:
    """timm train.py's flags for maskcls' resolved precision."""
    flags = {"no": [], "bf16": ["--amp", "--amp-dtype", "bfloat16"], "fp16": ["--amp", "--amp-dtype", "float16"]}
    if precision not in flags:
        raise ConfigError(f"precision {precision!r}: timm's train.py is run with one of {', '.join(flags)}")
    return flags[precision]


def timm_command(train_py: Path, data: Path, s: PeerSettings, *, num_classes: int, classes: Path,
                 weights: Path | None, output: Path) -> list[str]:
    """The command line of timm's train.py; checkpoints of every epoch are kept (``--checkpoint-hist``)."""
    pretrained = ["--pretrained", "--pretrained-path", str(weights)] if weights is not None else []
    return [sys.executable, str(train_py), str(data), "--model", s.arch, *pretrained,
            "--num-classes", str(num_classes), "--class-map", str(classes), "--img-size", str(s.img_size),
            "-b", str(s.batch), "-vb", str(s.valid_batch), "--grad-accum-steps", str(s.accum),
            "--epochs", str(s.epochs), "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01",
            "--sched", "cosine", "--warmup-epochs", "0", "--smoothing", "0.1", "--seed", str(s.seed),
            "--workers", str(s.workers), *precision_flags(s.precision), "--device", s.device,
            "--checkpoint-hist", str(max(s.epochs, 1)), "--output", str(output), "--experiment", "peer",
            "--log-interval", "20"]


def score_checkpoint(path: Path, data: Path, k: int, img_size: int, arch: str) -> float:
    """Macro F1 (maskcls' metrics) of a train.py checkpoint on ``data/validation`` with timm's eval transform."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder
    model = timm.create_model(arch, pretrained=False, num_classes=k)
    ck = torch.load(path, map_location="cpu", weights_only=False)  # train.py pickles its argparse namespace
    model.load_state_dict(ck["state_dict"])
    model.eval()
    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    ds = ImageFolder(str(data / "validation"), transform=create_transform(**cfg, is_training=False),
                     allow_empty=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=60, num_workers=2)
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(model(x).argmax(1).numpy())
            labels.append(y.numpy())
    return macro_f1(confusion(np.concatenate(labels), np.concatenate(preds), k))


def train_seconds(log_text: str) -> dict[int, float]:
    """Training seconds of each epoch (0-based, as train.py counts) from its log: the last update line's
    average update time × updates per epoch. Loader waits count, validation does not."""
    last: dict[int, tuple[int, int, float]] = {}
    for m in _TRAIN_LINE.finditer(log_text):
        last[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), float(m.group(4)))
    return {e: avg * updates for e, (_, updates, avg) in sorted(last.items())}
