"""Measurements of ``maskcls audit`` against known label noise (the commands of docs/audit.md).

    flip-csv SRC.csv OUT_DIR [--rate 0.05 --seed 0]   a copy of a CSV manifest (absolute paths) with a
                                                      seeded fraction of image labels flipped; OUT_DIR/flips.csv
    score-noise AUDIT_DIR NOISE.csv                   injected persons (synth --label-noise) found in the top 2N
    score-flips AUDIT_DIR FLIPS.csv                   flipped images found in the top 2N
    same-folds FROM_PREPARED TO_PREPARED OUT          TO_PREPARED with FROM_PREPARED's folds, as a new prepared
                                                      dir (prepare stratifies on the labels, so fixing labels moves
                                                      persons between folds; a comparison wants the same folds)
    oof-f1 RUN TRUTH_PREPARED                         out-of-fold macro F1 of RUN against the true labels
    eval-f1 RUN DATA                                  fold-ensemble macro F1 on DATA/eval against eval/truth.csv

The source CSV, the dataset and the run are only read; flip-csv writes into a new OUT_DIR.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from maskcls.fsutil import atomic_write_json, atomic_write_text, ensure_new_dir
from maskcls.metrics import confusion, macro_f1
from maskcls.prep.prepared import load_prepared
from maskcls.rundir.oof import read_oof

KIND_OF_FIELD = {"gender": "person_gender", "age": "person_age", "swap_incorrect_normal": "swap_incorrect_normal"}


def flip_csv(src: Path, out: Path, rate: float, seed: int) -> None:
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    df["path"] = [p if Path(p).is_absolute() else str(src.parent.resolve() / p) for p in df["path"]]
    labels = df["label"].astype(int).to_numpy()
    k = labels.max() + 1
    train = np.flatnonzero(df["split"].str.lower() != "eval") if "split" in df.columns else np.arange(len(df))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train, size=int(round(rate * len(train))), replace=False))
    noisy = (labels[chosen] + rng.integers(1, k, len(chosen))) % k  # another class, uniformly
    names = dict(zip(labels, df["label_name"])) if "label_name" in df.columns else None
    df.loc[chosen, "label"] = noisy.astype(str)
    if names:
        df.loc[chosen, "label_name"] = [names[n] for n in noisy]
    ensure_new_dir(out)
    atomic_write_text(out / "manifest.csv", df.to_csv(index=False))
    flips = pd.DataFrame({"path": df["path"].to_numpy()[chosen], "true_label": labels[chosen], "noisy_label": noisy})
    atomic_write_text(out / "flips.csv", flips.to_csv(index=False))
    print(f"{out / 'manifest.csv'}: {len(chosen)} of {len(train)} training labels flipped (seed {seed}); "
          f"list in {out / 'flips.csv'}")


def _findings(audit: Path) -> pd.DataFrame:
    return pd.read_csv(audit / "audit.csv", dtype={"group": str}, keep_default_na=False)


def _cut_report(name: str, found: np.ndarray, hits_in_top: int, n: int, cut: int) -> None:
    print(f"{name}: {found.sum()}/{n} found in the top {cut} = {found.mean():.3f} recall; "
          f"precision at {cut}: {hits_in_top}/{cut} = {hits_in_top / cut:.3f}")


def score_noise(audit: Path, noise_csv: Path) -> None:
    noise = pd.read_csv(noise_csv, dtype=str, keep_default_na=False)
    f = _findings(audit)
    n, cut = len(noise), 2 * len(noise)
    truth = {(r.folder, KIND_OF_FIELD[r.field]) for r in noise.itertuples()}
    for order, ranked in (("audit order (confident first)", f),
                          ("by score alone", f.sort_values("score", ascending=False, kind="stable"))):
        top = ranked.head(cut)
        keys = set(zip(top["group"], top["kind"]))
        found = np.array([(r.folder, KIND_OF_FIELD[r.field]) in keys for r in noise.itertuples()])
        hits = sum((g, k) in truth for g, k in zip(top["group"], top["kind"]))
        _cut_report(f"injected persons, {order}", found, hits, n, cut)
    rank = {(g, k): r for g, k, r in zip(f["group"], f["kind"], f["rank"])}
    ranks = sorted(rank.get((r.folder, KIND_OF_FIELD[r.field]), 0) for r in noise.itertuples())
    at_n = sum((g, k) in truth for g, k in zip(f["group"].head(n), f["kind"].head(n)))
    print(f"ranks of the injected persons in audit.csv (0 = not listed): {ranks}; precision at {n}: {at_n}/{n}")
    by_kind = {k: [] for k in KIND_OF_FIELD.values()}
    listed = set(zip(f["group"], f["kind"]))
    for r in noise.itertuples():
        by_kind[KIND_OF_FIELD[r.field]].append((r.folder, KIND_OF_FIELD[r.field]) in listed)
    print("listed anywhere in audit.csv, per kind: "
          + ", ".join(f"{k} {sum(v)}/{len(v)}" for k, v in by_kind.items()) + f" (audit.csv has {len(f)} findings)")


def score_flips(audit: Path, flips_csv: Path) -> None:
    flips = pd.read_csv(flips_csv)
    f = _findings(audit)
    n, cut = len(flips), 2 * len(flips)
    flipped = set(flips["path"])
    for order, ranked in (("audit order (confident first)", f),
                          ("by score alone", f.sort_values("score", ascending=False, kind="stable"))):
        top = ranked.head(cut)
        files = {p for fs in top["files"] for p in fs.split(";")}
        found = np.array([p in files for p in flips["path"]])
        hits = sum(any(p in flipped for p in fs.split(";")) for fs in top["files"])
        _cut_report(f"flipped images, {order}", found, hits, n, cut)
    at_n = sum(any(p in flipped for p in fs.split(";")) for fs in f["files"].head(n))
    listed = {p for fs in f["files"] for p in fs.split(";")}
    print(f"precision at {n}: {at_n}/{n} = {at_n / n:.3f}; flipped images listed anywhere in audit.csv: "
          f"{sum(p in listed for p in flipped)}/{n} ({len(f)} findings, {int(f['confident'].sum())} confident)")


def same_folds(src: Path, dst: Path, out: Path) -> None:
    a, b = load_prepared(src), load_prepared(dst)
    if list(a.manifest["image_id"]) != list(b.manifest["image_id"]):
        raise SystemExit(f"{src} and {dst} do not list the same images in the same order")
    moved = int((a.manifest["fold"] != b.manifest["fold"]).sum())
    man = b.manifest.assign(fold=a.manifest["fold"].to_numpy())
    meta = dict(b.meta)
    train = man[man["split"] == "train"]
    meta["counts"] = {**meta["counts"], "per_fold": np.bincount(train["fold"], minlength=a.num_folds).tolist()}
    meta["folds"], meta["seed"] = a.num_folds, a.meta["seed"]
    meta["warnings"] = meta.get("warnings", []) + [f"folds copied from {src} (audit_measure.py same-folds)"]
    ensure_new_dir(out)
    atomic_write_text(out / "manifest.csv", man.to_csv(index=False))
    atomic_write_json(out / "prepare.json", meta)
    print(f"{out}: {dst}'s labels with {src}'s folds ({moved} of {len(man)} images had moved fold)")


def oof_f1(run: Path, truth_prepared: Path) -> None:
    truth = load_prepared(truth_prepared).train_rows()
    oof = read_oof(run, range(load_prepared(truth_prepared).num_folds))
    merged = oof.merge(truth[["image_id", "label"]], on="image_id", suffixes=("_given", "_true"))
    k = load_prepared(truth_prepared).num_classes
    f_true = macro_f1(confusion(merged["label_true"], merged["pred"], k))
    f_given = macro_f1(confusion(merged["label_given"], merged["pred"], k))
    print(f"{run}: out-of-fold macro F1 {f_true:.4f} against the true labels ({len(merged)} images, "
          f"{oof['fold'].nunique()} folds); {f_given:.4f} against the labels it trained on")


def eval_f1(run: Path, data: Path) -> None:
    from maskcls.infer.predict import predict_submission
    res = predict_submission(run, folds="all")
    truth = pd.read_csv(data / "eval" / "truth.csv", dtype={"ImageID": str})
    sub = pd.read_csv(res["submission"], dtype={"ImageID": str})
    merged = truth.merge(sub, on="ImageID", suffixes=("_true", "_pred"))
    f1 = macro_f1(confusion(merged["ans_true"], merged["ans_pred"], 18))
    print(f"{run}: eval-set macro F1 {f1:.4f} against eval/truth.csv ({len(merged)} images, "
          f"{len(res['folds'])}-fold ensemble)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = p.add_subparsers(dest="what", required=True)
    s = subs.add_parser("flip-csv")
    s.add_argument("src", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--rate", type=float, default=0.05)
    s.add_argument("--seed", type=int, default=0)
    s = subs.add_parser("same-folds")
    for name in ("src", "dst", "out"):
        s.add_argument(name, type=Path)
    for name, a, b in (("score-noise", "audit", "noise"), ("score-flips", "audit", "flips"),
                       ("oof-f1", "run", "truth"), ("eval-f1", "run", "data")):
        s = subs.add_parser(name)
        s.add_argument(a, type=Path)
        s.add_argument(b, type=Path)
    args = p.parse_args(argv)
    if args.what == "flip-csv":
        flip_csv(args.src, args.out, args.rate, args.seed)
    elif args.what == "score-noise":
        score_noise(args.audit, args.noise)
    elif args.what == "score-flips":
        score_flips(args.audit, args.flips)
    elif args.what == "same-folds":
        same_folds(args.src, args.dst, args.out)
    elif args.what == "oof-f1":
        oof_f1(args.run, args.truth)
    else:
        eval_f1(args.run, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
