"""What `train.patience` would have done to the runs `maskcls bench quality` cached: replayed on their recorded
validation F1 curves, nothing retrained.

For each patience P the fold stops after P epochs without a better validation F1 (as the trainer does); its best.pt
is then the best epoch seen until the stop. Printed per set, over every cached run of that many epochs (all configs,
folds and seeds): the mean best-epoch F1 with and without patience, and the share of the epochs saved.
A patience that loses no F1 and saves epochs is worth having on by default; one that loses F1 is not.

usage: python scripts/quality_patience.py [--work .cache/quality] [--epochs 10]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def replay(f1: list[float], patience: int) -> tuple[float, int]:
    """(the best F1 seen, epochs run) when training stops after ``patience`` epochs without a better one."""
    best, bad = -1.0, 0
    for e, v in enumerate(f1, 1):
        if v > best:
            best, bad = v, 0
        else:
            bad += 1
        if patience and bad >= patience:
            return best, e
    return best, len(f1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=".cache/quality")
    ap.add_argument("--epochs", type=int, default=10, help="replay the cached runs of this many epochs")
    args = ap.parse_args()
    curves: dict[str, list[list[float]]] = defaultdict(list)
    for p in sorted(Path(args.work, "results").glob("*.json")):
        r = json.loads(p.read_text())
        if len(r["f1"]) == args.epochs:
            curves[r["set"]].append(r["f1"])
    for name, runs in sorted(curves.items()):
        full = np.mean([max(c) for c in runs])
        print(f"{name}: {len(runs)} cached runs of {args.epochs} epochs (every config and fold), best-epoch F1 "
              f"{full:.4f} without patience")
        for patience in range(1, 6):
            res = [replay(c, patience) for c in runs]
            f1 = np.mean([b for b, _ in res])
            saved = 1 - sum(e for _, e in res) / (args.epochs * len(runs))
            print(f"  patience {patience}: best-epoch F1 {f1:.4f} ({f1 - full:+.4f}), {saved:.0%} of the epochs "
                  "saved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
