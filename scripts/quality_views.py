"""Re-score the quality bench's cached fold-0 models under other evaluation views, without retraining.

Each view is a centre crop of the photo's centre square (a fraction of its side; 1.0 = the whole square,
what validation uses) resized to the bench's 128 px, optionally averaged with its mirror image (suffix
``f``: flip TTA). The models are the ``best.pt`` of the cached runs of ``maskcls bench quality`` for the
given config (``--set`` as there), so nothing trains and the first view, ``1.0``, must reproduce the
bench's own best-epoch F1 (printed beside it). Inference is fp32 on the CPU, as ``maskcls predict``.

    python scripts/quality_views.py --sets agegender6dev --seeds 5 --views 1.0,0.9,1.0f
    python scripts/quality_views.py --sets agegender6dev --seeds 5 --views 1.0,1.0f \\
        --set optim.head_lr_mult=10 --set train.ema=false --set train.valid_tta=none
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from maskcls.bench.quality import BUDGET, _key, prepared_set
from maskcls.config_io import load_config
from maskcls.data import fastaug as A
from maskcls.data.dataset import FileSource, ImageDataset
from maskcls.data.loader import build_loader
from maskcls.data.transforms import to_chw
from maskcls.engine.fold_data import fold_rows
from maskcls.infer.loading import ensemble_probs
from maskcls.metrics import confusion, macro_f1
from maskcls.rundir.models import load_fold


class CentreCrop:
    """The photo's centre square, then its centre ``frac`` of the side, resized to ``size``."""

    writes_out = True

    def __init__(self, size: int, frac: float):
        self.size, self.frac = size, frac

    def __call__(self, img, rng=None, out=None):
        img = A.center_square(img)
        if self.frac < 1:
            side = img.shape[0]
            keep = int(round(side * self.frac))
            o = (side - keep) // 2
            img = img[o:o + keep, o:o + keep]
        return to_chw(A.resize(img, self.size), out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="agegender6dev,mask3dev")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--views", default="1.0,1.0f", help="comma-separated crop fractions; suffix f = with flip TTA")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="the bench config's overrides")
    ap.add_argument("--work", default=".cache/quality")
    ap.add_argument("--data", default=".cache/devdata")
    args = ap.parse_args(argv)
    views = args.views.split(",")
    if "1.0" not in views:
        views.insert(0, "1.0")  # the reference every other view is compared with
    work = Path(args.work)
    cfg0 = load_config(None, [f"data.image_size={BUDGET['image_size']}", f"train.epochs={BUDGET['epochs']}"]
                       + args.overrides)
    for name in args.sets.split(","):
        prep = prepared_set(Path(args.data), name, work)
        _, va = fold_rows(prep, 0)
        labels = va["label"].to_numpy()
        scores: dict[str, list[float]] = {v: [] for v in views}
        for i in range(args.seeds):
            cfg0.train.seed = 719 + i
            result = work / "results" / f"{_key(cfg0, name, prep)}.json"
            if not result.is_file():
                print(f"{name} seed {719 + i}: no cached run for this config ({result}); run maskcls bench quality "
                      "with the same --set first", file=sys.stderr)
                return 2
            r = json.loads(result.read_text())
            fold = load_fold(Path(r["run_dir"]) / "fold0" / "best.pt", 0)
            for v in views:
                ds = ImageDataset(FileSource(prep.abs_paths(va), va["fast"].to_numpy()), labels,
                                  CentreCrop(BUDGET["image_size"], float(v.rstrip("f"))), seed=0)
                loader = build_loader(ds, batch_size=64, sampler=range(len(ds)), workers=0)
                p = ensemble_probs([fold], loader, tta="hflip" if v.endswith("f") else "none", progress=False)
                scores[v].append(macro_f1(confusion(labels, p.argmax(1), prep.task.num_classes)))
            print(f"{name} seed {719 + i}: bench best {r['best_f1']:.4f}; "
                  + ", ".join(f"{v} {scores[v][-1]:.4f}" for v in views), flush=True)
        for v in views:
            d = 100 * (np.array(scores[v]) - np.array(scores["1.0"]))
            print(f"{name} view {v:<5} F1 {np.mean(scores[v]):.4f}  vs 1.0 {d.mean():+.2f} points "
                  f"({', '.join(f'{x:+.2f}' for x in d)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
