"""Pseudo-labels measured on a development set (issue 12): hold part of it out as an unlabelled "eval" split.

For one development set: a fraction of its groups (photos / persons; chosen by a hash of the
group, so the same every time) becomes ``split=eval`` with its labels removed, in a new manifest
under the work folder (the images are reached through a symlink; the dev set is only read). Then,
for each seed at the fixed budget of ``maskcls bench quality`` (fold 0, 128 px, 3 epochs):

1. train fold 0 on the labelled part (the baseline);
2. ``maskcls pseudo`` that run at ``--min-prob``: confident held-out images join every fold's training;
3. train fold 0 again, same seed, on the pseudo-labelled directory.

Printed per seed: validation macro F1 (fold 0: the same labelled images in both runs) and macro F1
on the held-out images against their hidden labels (fold-0 model, flip TTA), for both runs, and
how many images were added and how many of those labels are right. The last line is the mean gain.

    python scripts/quality_pseudo.py --set mask3dev --seeds 2 [--hold 0.3] [--min-prob 0.9]

Needs the development sets (docs/quality.md); never run by the tests.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from maskcls.bench.quality import budget_config, prepared_set, train_one
from maskcls.infer.predict import eval_probabilities, run_and_data
from maskcls.infer.pseudo import make_pseudo
from maskcls.metrics import confusion, macro_f1
from maskcls.prep.prepared import load_prepared

LABEL_COLUMNS = ("label", "label_name", "mask", "gender", "age")


def held_out_manifest(src: Path, dst: Path, hold: float) -> pd.DataFrame:
    """Write ``dst/manifest.csv``: ``src``'s rows, ``hold`` of the groups as unlabelled eval rows; return the truth."""
    man = pd.read_csv(src / "manifest.csv")
    frac = man["group"].astype(str).map(lambda g: int(hashlib.sha1(g.encode()).hexdigest()[:8], 16) / 16**8)
    held = frac < hold
    truth = man.loc[held, ["path", "label"]].copy()
    out = man.copy()
    out["split"] = np.where(held, "eval", "train")
    for c in LABEL_COLUMNS:
        if c in out:
            out[c] = out[c].astype(object).where(~held, None)
    dst.mkdir(parents=True, exist_ok=True)
    link = dst / "images"
    if not link.exists():
        os.symlink((src / "images").resolve(), link)
    out.to_csv(dst / "manifest.csv", index=False)
    return truth


def held_out_f1(run_dir: str, prep, truth: pd.DataFrame) -> float:
    loaded, prep, _ = run_and_data(run_dir, folds="all", data=prep.dir)
    rows = prep.eval_rows()
    probs = eval_probabilities(loaded, prep, rows, tta="hflip")
    y = rows["path"].map(truth.set_index("path")["label"]).to_numpy(np.int64)
    k = prep.task.num_classes
    return macro_f1(confusion(y, probs.argmax(1), k))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", required=True, choices=["mask3dev", "agegender6dev"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--hold", type=float, default=0.3, help="fraction of groups held out as unlabelled eval")
    ap.add_argument("--min-prob", type=float, default=0.9)
    ap.add_argument("--data", default=".cache/devdata")
    ap.add_argument("--work", default=".cache/quality")
    args = ap.parse_args()
    work = Path(args.work)
    name = f"{args.set}-held{int(args.hold * 100)}"
    truth = held_out_manifest(Path(args.data) / args.set, work / "pseudo-data" / name, args.hold)
    prep = prepared_set(work / "pseudo-data", name, work)
    lines = [f"pseudo-labels on {args.set}: {len(prep.train_rows())} labelled images, {len(prep.eval_rows())} held out "
             f"unlabelled ({args.hold:.0%} of groups); fold 0, 128 px, 3 epochs; min_prob {args.min_prob}"]
    gains, eval_gains = [], []
    for i in range(args.seeds):
        base = budget_config()
        cfg = replace(base, train=replace(base.train, seed=base.train.seed + i))
        r0 = train_one(cfg, name, prep, work)
        out = work / "pseudo-prepared" / f"{name}-{cfg.train.seed}-p{args.min_prob:g}"
        if not (out / "prepare.json").is_file():
            make_pseudo(r0.run_dir, out, min_prob=args.min_prob, folds="all", tta="hflip")
        pprep = load_prepared(out)
        added = pprep.pseudo_rows()
        hidden = added["path"].map(truth.set_index("path")["label"])
        right = float((hidden == added["label"]).mean()) if len(added) else 0.0
        r1 = train_one(cfg, f"{name}-pseudo-{cfg.train.seed}-p{args.min_prob:g}", pprep, work)
        e0, e1 = held_out_f1(r0.run_dir, prep, truth), held_out_f1(r1.run_dir, pprep, truth)
        gains.append(r1.best_f1 - r0.best_f1)
        eval_gains.append(e1 - e0)
        lines.append(f"  seed {cfg.train.seed}: added {len(added)} of {len(prep.eval_rows())} ({right:.1%} right); "
                     f"validation F1 {r0.best_f1:.4f} -> {r1.best_f1:.4f} ({gains[-1]:+.4f}); "
                     f"held-out F1 {e0:.4f} -> {e1:.4f} ({eval_gains[-1]:+.4f})")
    lines.append(f"pseudo gain ({args.set}): validation {np.mean(gains):+.4f}, held-out {np.mean(eval_gains):+.4f} "
                 f"(mean of {args.seeds} seeds)")
    print("\n".join(lines))
    print(json.dumps({"set": args.set, "validation_gain": gains, "held_out_gain": eval_gains}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
