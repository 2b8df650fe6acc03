"""Every result `maskcls bench quality` has cached, as docs/quality.md's recipe table.

Reads WORK/results/*.json of fold 0 (one per set × seed × resolved config) and groups them by how their
config differs from today's defaults at the fixed budget. Each variant is compared with its
nearest measured base: the row whose settings are the largest subset of its own (the defaults
when none is). A technique tried when the defaults were another backbone is thus compared
with that backbone, not with today's. Per set, base by base, it prints each variant's seeds,
best-epoch validation macro F1 (mean ± half-range), its delta to the base (the seeds both
have), seconds per epoch, the decision tuning's cross-fitted gain from each run's summary.json
(offsets fitted on 4/5 of the validation fold's rows, scored on the fifth), and the macro F1 of
the first two seeds' ensemble (their best-epoch validation probabilities averaged with equal
weights, what ``maskcls predict RUN1 RUN2`` does; nothing is fitted).

Only the development sets themselves are tabled; the held-out sets of scripts/quality_pseudo.py
print their own comparison.

usage: python scripts/quality_table.py [--work .cache/quality]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from maskcls.bench.quality import DEV_SETS, budget_config
from maskcls.config_io import flatten
from maskcls.engine.batch_size import DEFAULT_BATCH
from maskcls.infer.ensemble import common_oof
from maskcls.metrics import confusion, macro_f1
from maskcls.prep.prepared import load_prepared
from maskcls.rundir.files import read_run_info


def variant_of(config: dict, base: dict) -> str:
    """The settings that differ from ``base`` (the seed aside), as KEY=VALUE words."""
    flat = flatten({k: v for k, v in config.items() if k != "run"})
    diff = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sorted(flat.items())
            if k != "train.seed" and base.get(k) != v]
    return " ".join(diff) or "defaults"


def seed_ensemble_f1(run_dirs: list[str]) -> float | None:
    """Macro F1 of the runs' validation probabilities averaged with equal weights (their common rows)."""
    if len(run_dirs) < 2:
        return None
    k = load_prepared(read_run_info(Path(run_dirs[0]))["prepared"]).num_classes
    common = common_oof([Path(d) for d in run_dirs], k)
    if common is None:
        return None
    probs = np.mean([np.stack(common[f"p{i}"]) for i in range(len(run_dirs))], axis=0)
    return macro_f1(confusion(common["label"].to_numpy(), probs.argmax(1), k))


def base_of(variant: str, variants: set[str]) -> str | None:
    """The measured variant whose settings are the largest proper subset of ``variant``'s."""
    if variant == "defaults":
        return None
    words = set(variant.split())
    subsets = [v for v in variants if v != variant and (v == "defaults" or set(v.split()) < words)]
    return max(subsets, key=lambda v: (0 if v == "defaults" else len(v.split()), v), default=None)


def row(label: str, by_seed: dict[int, dict], ref: dict[int, dict]) -> str:
    seeds = sorted(by_seed)
    f1 = np.array([by_seed[x]["best_f1"] for x in seeds])
    common = [x for x in seeds if x in ref]
    if common:
        d = np.array([by_seed[x]["best_f1"] - ref[x]["best_f1"] for x in common])
        delta = f"{d.mean():+.4f} ({', '.join(f'{v:+.4f}' for v in d)})"
    else:
        delta = "-"
    sec = np.mean([np.mean(by_seed[x]["seconds"]) for x in seeds])
    gains = [by_seed[x]["decision"]["gain"] for x in seeds if by_seed[x]["decision"]]
    gain = f"{np.mean(gains):+.4f}" if gains else "-"
    spread = (f1.max() - f1.min()) / 2
    ens = seed_ensemble_f1([by_seed[x]["run_dir"] for x in seeds[:2]])
    return (f"{label:<44}{','.join(map(str, seeds)):>12}{f1.mean():>10.4f} ± {spread:.4f}"
            f"{delta:>38}{sec:>9.1f}{gain:>13}{f'{ens:.4f}' if ens is not None else '-':>10}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=".cache/quality")
    a = ap.parse_args()
    base = flatten({k: v for k, v in budget_config().to_dict().items() if k != "run"})
    base["train.batch_size"] = DEFAULT_BATCH  # auto, as the bench trains it on a CPU
    rows: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for f in sorted(Path(a.work, "results").glob("*.json")):
        r = json.loads(f.read_text())
        if r["set"] not in DEV_SETS or r.get("fold", 0) != 0:  # fold 0 only: the out-of-fold bench prints the rest
            continue
        summary = Path(r["run_dir"]) / "summary.json"
        decision = json.loads(summary.read_text()).get("decision") if summary.is_file() else None
        rows[(r["set"], variant_of(r["config"], base))][r["seed"]] = {**r, "decision": decision}
    header = (f"{'variant':<44}{'seeds':>12}{'F1':>18}{'delta':>38}{'s/epoch':>9}{'tuning gain':>13}"
              f"{'ensemble':>10}")
    for name in sorted({s for s, _ in rows}):
        variants = {v for s, v in rows if s == name}
        children: dict[str | None, list[str]] = defaultdict(list)
        for v in variants:
            children[base_of(v, variants)].append(v)
        print(f"\n{name}: best-epoch validation macro F1, fold 0, 128 px, 3 epochs")
        for parent in sorted(children, key=lambda v: (v is not None, v != "defaults", v or "")):
            print(f"  {'the defaults' if parent is None else 'against ' + parent}")
            print(header)
            ref = rows.get((name, parent), {}) if parent is not None else {}
            for v in sorted(children[parent]):
                label = v if parent in (None, "defaults") else " ".join(w for w in v.split()
                                                                        if w not in parent.split())
                print(row(label, rows[(name, v)], ref))


if __name__ == "__main__":
    main()
