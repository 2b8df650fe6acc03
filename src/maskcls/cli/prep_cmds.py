"""``maskcls synth | prepare | stats | faces``: making and preparing datasets."""
from __future__ import annotations

import shlex
from pathlib import Path

from .common import check_prepared_dir, float_range, int_range, sub


def register(subs) -> None:
    s = sub(subs, "synth", "write a synthetic dataset in the competition layout",
             "maskcls synth demo-data --people 120 --seed 0\n"
             "maskcls synth noisy-data --people 300 --label-noise 0.05   # truth in train/noise.csv")
    s.add_argument("out")
    s.add_argument("--people", type=int_range(1), default=120, help="training persons (7 photos each)")
    s.add_argument("--eval-people", type=int_range(0), default=None,
                   help="evaluation persons (default 2/3 of --people)")
    s.add_argument("--seed", type=int_range(0), default=0)
    s.add_argument("--size", type=int_range(32, 2048), nargs=2, default=(384, 512), metavar=("W", "H"),
                   help="photo size in pixels, each side 32..2048 (the competition's: 384 512)")
    s.add_argument("--workers", type=int_range(1), default=None)
    s.add_argument("--label-noise", type=float_range(0.0, 0.5), default=0.0, metavar="RATE",
                   help="give this fraction of training persons one wrong label (gender, age group, or "
                   "incorrect_mask/normal swapped); the truth goes to train/noise.csv (a fixes file)")
    s.set_defaults(handler=cmd_synth)

    s = sub(subs, "prepare", "index a dataset: check images, make person-grouped folds, write a manifest",
             "maskcls prepare /data/mask --out prepared --folds 5 --seed 719\n"
             "maskcls prepare my_faces.csv --out prepared-mine      # CSV: path,label[,group]\n"
             "maskcls prepare /data/mask --out prepared --fixes fixes.csv --old-age 59")
    s.add_argument("source", help="competition folder (train/, eval/) or a CSV manifest")
    s.add_argument("--out", required=True, help="new directory for manifest.csv and prepare.json")
    s.add_argument("--folds", type=int_range(2), default=5, help="K of the person-grouped K-fold")
    s.add_argument("--seed", type=int_range(0), default=719)
    s.add_argument("--old-age", type=int_range(31), default=None,
                   help="first age of the oldest group (default 60, the competition's rule; 58/59 help training); "
                        "must lie within the data's ages")
    s.add_argument("--fixes", help="label-fixes CSV: folder,field,value (field gender|age|swap_incorrect_normal)")
    s.add_argument("--skip-bad", action="store_true", help="exclude bad files (recorded) instead of stopping")
    s.add_argument("--allow-absolute", action="store_true", help="accept absolute paths in a CSV manifest")
    s.add_argument("--group-missing", choices=["error", "row"], default="error",
                   help="CSV rows with a blank/NaN group: stop and list them (default), or make each its own group")
    s.add_argument("--trust", choices=["csv", "folder"], default=None,
                   help="competition folder names that disagree with train.csv on gender/age: label from this side "
                        "(default: stop and list them)")
    s.add_argument("--num-classes", type=int_range(2), default=None, help="K for a CSV label column (labels 0..K-1)")
    s.add_argument("--workers", type=int_range(1), default=None)
    s.set_defaults(handler=cmd_prepare)

    s = sub(subs, "stats", "exact per-channel mean / pooled std of the training images -> stats.json",
             "maskcls stats prepared\nmaskcls stats prepared --faces")
    s.add_argument("dir")
    s.add_argument("--faces", action="store_true", help="over the face crops instead of the photos")
    s.add_argument("--workers", type=int_range(1), default=None)
    s.set_defaults(handler=cmd_stats)

    s = sub(subs, "faces", "crop faces with MTCNN (offline weights) into the prepared directory",
             "maskcls faces prepared --margin 0.2 --size 256")
    s.add_argument("dir")
    s.add_argument("--margin", type=float_range(0, 2), default=0.2, help="box widening, fraction of the box per side")
    s.add_argument("--size", type=int_range(16, 1024), default=256, help="side of the stored square crops")
    s.add_argument("--batch-size", type=int_range(1), default=32)
    s.add_argument("--workers", type=int_range(1), default=None)
    s.set_defaults(handler=cmd_faces)


def cmd_synth(args) -> int:
    from ..synth.dataset import synthesize
    s = synthesize(args.out, people=args.people, seed=args.seed, eval_people=args.eval_people,
                   image_size=tuple(args.size), workers=args.workers, label_noise=args.label_noise)
    print(f"wrote {args.out}: {s['train_people']} train persons ({s['train_images']} photos), "
          f"{s['eval_people']} eval persons ({s['eval_images']} photos) in {s['seconds']:.1f}s "
          f"({s['images_per_s']:.0f} img/s)")
    if s["noise_csv"]:
        print(f"label noise: {s['noisy_people']} person(s) with one wrong label; the truth is in {s['noise_csv']}")
    return 0


def cmd_prepare(args) -> int:
    from ..prep.prepare import prepare
    m = prepare(args.source, args.out, folds=args.folds, seed=args.seed, old_age=args.old_age, fixes=args.fixes,
                skip_bad=args.skip_bad, allow_absolute=args.allow_absolute, num_classes=args.num_classes,
                group_missing=args.group_missing, trust=args.trust, workers=args.workers)
    c = m["counts"]
    print(f"prepared {args.out}: {c['train_images']} training images of {c['groups']} groups in {m['folds']} folds "
          f"{c['per_fold']}, {c['eval_images']} eval images, {m['num_classes']} classes")
    if line := fixes_line(m.get("fixes_file"), m.get("fixes") or []):
        print(line)
    for w in m["warnings"]:
        print(f"warning: {w}")
    if m["excluded"]:
        print(f"excluded {len(m['excluded'])} bad entr(ies); listed in {Path(args.out) / 'prepare.json'}")
    print(f"next: maskcls train {shlex.quote(args.out)}")
    return 0


def fixes_line(path: str | None, applied: list[dict], listed: int = 5) -> str | None:
    """``label fixes from FILE: 3 applied to 21 photos: gender 2 (a, b); swap_incorrect_normal 1 (c)``: the fixes
    that changed a label, by kind, with their person folders (``listed`` per kind); the others are a warning."""
    done = [a for a in applied if a.get("changed", a.get("rows", 0))]
    if not path or not done:
        return None
    kinds: dict[str, list[str]] = {}
    for a in done:
        kinds.setdefault(a["field"], []).append(a["folder"])
    more = lambda ids: f" and {len(ids) - listed} more" if len(ids) > listed else ""  # noqa: E731
    parts = [f"{k} {len(ids)} ({', '.join(ids[:listed])}{more(ids)})" for k, ids in kinds.items()]
    photos = sum(a.get("changed", a.get("rows", 0)) for a in done)
    return f"label fixes from {path}: {len(done)} applied to {photos} photos: {'; '.join(parts)}"


def cmd_stats(args) -> int:
    from ..prep.stats import compute_stats
    check_prepared_dir(args.dir, "stats")
    r = compute_stats(args.dir, faces=args.faces, workers=args.workers)
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    print(f"{r['images']} images: mean {fmt(r['mean'])} std {fmt(r['std'])} -> {Path(args.dir) / 'stats.json'}")
    return 0


def cmd_faces(args) -> int:
    from ..prep.faces import build_face_crops
    check_prepared_dir(args.dir, "faces")
    s = build_face_crops(args.dir, margin=args.margin, size=args.size, batch_size=args.batch_size,
                         workers=args.workers or 2)
    c = s["counts"]
    print(f"face crops in {Path(args.dir) / 'faces'}: {c['images']} images, {c['detected']} detected, "
          f"{c['fallback']} fallback (centre crop)")
    return 0
