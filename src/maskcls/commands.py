"""Subcommand handlers: turn parsed arguments into library calls and print results."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_synth(args) -> int:
    from .data.synth import synthesize
    s = synthesize(args.out, people=args.people, seed=args.seed, eval_people=args.eval_people,
                   image_size=tuple(args.size), workers=args.workers)
    print(f"wrote {args.out}: {s['train_people']} train persons ({s['train_images']} photos), "
          f"{s['eval_people']} eval persons ({s['eval_images']} photos) in {s['seconds']:.1f}s "
          f"({s['images_per_s']:.0f} img/s)")
    return 0


def cmd_prepare(args) -> int:
    from .data.prepare import prepare
    m = prepare(args.source, args.out, folds=args.folds, seed=args.seed, old_age=args.old_age, fixes=args.fixes,
                skip_bad=args.skip_bad, allow_absolute=args.allow_absolute, num_classes=args.num_classes,
                workers=args.workers)
    c = m["counts"]
    print(f"prepared {args.out}: {c['train_images']} training images of {c['groups']} groups in {m['folds']} folds "
          f"{c['per_fold']}, {c['eval_images']} eval images, {m['num_classes']} classes")
    for w in m["warnings"]:
        print(f"warning: {w}")
    if m["excluded"]:
        print(f"excluded {len(m['excluded'])} bad entr(ies); listed in {Path(args.out) / 'prepare.json'}")
    return 0


def cmd_stats(args) -> int:
    from .data.stats import compute_stats
    r = compute_stats(args.dir, faces=args.faces, workers=args.workers)
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    print(f"{r['images']} images: mean {fmt(r['mean'])} std {fmt(r['std'])} -> {Path(args.dir) / 'stats.json'}")
    return 0


def cmd_faces(args) -> int:
    from .data.faces import build_face_crops
    s = build_face_crops(args.dir, margin=args.margin, size=args.size, batch_size=args.batch_size,
                         workers=args.workers or 2)
    c = s["counts"]
    print(f"face crops in {Path(args.dir) / 'faces'}: {c['images']} images, {c['detected']} detected, "
          f"{c['fallback']} fallback (centre crop)")
    return 0


def cmd_config(args) -> int:
    from .config import config_table, dump_yaml, load_config
    if args.table:
        sys.stdout.write(config_table())
    else:
        sys.stdout.write(dump_yaml(load_config(args.config, args.overrides)))
    return 0


def cmd_bench(args) -> int:
    kw = {"images": args.images} if args.images else {}
    if args.what == "stats":
        from .bench.stats import bench_stats
        r = bench_stats(workers=args.workers, **kw)
    elif args.what == "loader":
        from .bench.loader import bench_loader
        r = bench_loader(workers=args.workers, **kw)
    elif args.what == "faces":
        from .bench.faces import bench_faces
        r = bench_faces(**kw)
    elif args.what == "train":
        from .bench.train import bench_train
        r = bench_train(**kw)
    else:
        from .bench.memory import bench_memory
        r = bench_memory(workers=args.workers, **kw)
    print(r["text"])
    return 0


def cmd_train(args) -> int:
    from .engine.trainer import RunInterrupted, format_summary, run_training
    try:
        s = run_training(prepared=args.dir, config=args.config, overrides=args.overrides, folds=args.folds,
                         run_dir=args.run_dir, resume=args.resume)
    except RunInterrupted as e:
        print(f"interrupted: completed epochs are saved; continue with maskcls train --resume {e.run}",
              file=sys.stderr)
        return 130
    if s["is_main"]:  # other ranks of a multi-process run stay quiet
        print(format_summary(s))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_command
    return predict_command(args)


def cmd_report(args) -> int:
    from .report import write_report
    print(f"report: {write_report(args.run)}")
    return 0


def cmd_export(args) -> int:
    from .export import export_run
    out = export_run(args.run, fmt=args.format, folds=args.folds, out=args.out)
    print(f"exported {out} (preprocessing in {Path(out).with_suffix('.json')})")
    return 0


def cmd_models(args) -> int:
    from .models.factory import list_models
    for name, offline in list_models(args.pattern, offline_only=args.offline):
        print(f"{'*' if offline else ' '} {name}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    summary = run_demo(args.out, people=args.people, epochs=args.epochs)
    print(summary["text"])
    return 0
