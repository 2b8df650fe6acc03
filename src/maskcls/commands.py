"""Subcommand handlers: turn parsed arguments into typed library calls and print the results.

This is the command line's edge: YAML files and ``--set`` overrides become a
:class:`~maskcls.config.Config` here, fold lists become integers, and only here is anything printed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import ConfigError


def cmd_synth(args) -> int:
    from .prep.synth import synthesize
    s = synthesize(args.out, people=args.people, seed=args.seed, eval_people=args.eval_people,
                   image_size=tuple(args.size), workers=args.workers)
    print(f"wrote {args.out}: {s['train_people']} train persons ({s['train_images']} photos), "
          f"{s['eval_people']} eval persons ({s['eval_images']} photos) in {s['seconds']:.1f}s "
          f"({s['images_per_s']:.0f} img/s)")
    return 0


def cmd_prepare(args) -> int:
    from .prep.prepare import prepare
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
    from .prep.stats import compute_stats
    r = compute_stats(args.dir, faces=args.faces, workers=args.workers)
    fmt = lambda v: "[" + ", ".join(f"{x:.4f}" for x in v) + "]"  # noqa: E731
    print(f"{r['images']} images: mean {fmt(r['mean'])} std {fmt(r['std'])} -> {Path(args.dir) / 'stats.json'}")
    return 0


def cmd_faces(args) -> int:
    from .prep.faces import build_face_crops
    s = build_face_crops(args.dir, margin=args.margin, size=args.size, batch_size=args.batch_size,
                         workers=args.workers or 2)
    c = s["counts"]
    print(f"face crops in {Path(args.dir) / 'faces'}: {c['images']} images, {c['detected']} detected, "
          f"{c['fallback']} fallback (centre crop)")
    return 0


def cmd_config(args) -> int:
    from .config_io import config_table, dump_yaml, load_config
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


def parse_folds(spec: str | None, k: int) -> list[int]:
    """'all' → every fold; '0' → [0]; '0,2' → [0, 2]; checked against the k folds."""
    if spec in ("all", "", None):
        return list(range(k))
    try:
        folds = sorted({int(s) for s in str(spec).split(",")})
    except ValueError:
        raise ConfigError(f"--folds {spec!r}: use 'all', one fold like 0, or a list like 0,2") from None
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise ConfigError(f"--folds {spec!r}: fold(s) {bad} do not exist; the prepared dir has folds 0..{k - 1}")
    return folds


def format_summary(s: dict) -> str:
    lines = [f"run: {s['run_dir']}"]
    for f, r in s["folds"].items():
        if r.get("best_f1") is not None:
            lines.append(f"fold {f}: best val macro F1 {r['best_f1']:.4f} (acc {r['best_acc']:.4f}, epoch "
                         f"{r['best_epoch']}, {r['status']})")
    if s.get("oof_f1") is not None:
        lines.append(f"out-of-fold macro F1: {s['oof_f1']:.4f}")
    if s.get("head_f1"):
        lines.append("per-head F1: " + ", ".join(f"{h} {v:.4f}" for h, v in s["head_f1"].items()))
    if s.get("mean_f1") is not None:
        lines.append(f"best val macro F1: {s['mean_f1']:.4f}")
    return "\n".join(lines)


def write_report_safely(run: str | Path) -> None:
    """The report after training: a failure is a warning, never a lost training."""
    from .report import write_report
    try:
        write_report(run)
    except Exception as e:  # noqa: BLE001 - a report failure must not lose a finished training
        print(f"maskcls: warning: could not write the report ({e}); run `maskcls report {run}` to retry",
              file=sys.stderr)


def cmd_train(args) -> int:
    from .config_io import load_config
    from .engine.run import RunInterrupted, resume_training, run_training
    from .engine.rundir import read_run_config
    from .prep.prepared import load_prepared
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its recorded config; drop -c/--set")
        report = read_run_config(args.resume).run.report
        start = lambda: resume_training(args.resume, prepared=args.dir)  # noqa: E731
    else:
        if not args.dir:
            raise ConfigError("train needs a prepared directory (maskcls prepare SOURCE --out DIR), or --resume RUN")
        cfg = load_config(args.config, args.overrides)
        prep = load_prepared(args.dir)
        folds = parse_folds(args.folds, prep.num_folds)
        report = cfg.run.report
        start = lambda: run_training(cfg, prep, folds=folds, run_dir=args.run_dir)  # noqa: E731
    try:
        s = start()
    except RunInterrupted as e:
        if report and e.is_main:
            write_report_safely(e.run)
        print(f"interrupted: completed epochs are saved; continue with maskcls train --resume {e.run}",
              file=sys.stderr)
        return 130
    if s["is_main"]:  # other ranks of a multi-process run stay quiet
        if report:
            write_report_safely(s["run_dir"])
        print(format_summary(s))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_images, predict_submission
    if args.images:
        res = predict_images(args.run, args.images, folds=args.folds, tta=args.tta,
                             batch_size=args.batch_size or 32)
        for r in res:
            if args.json:
                print(json.dumps(r))
            elif "error" in r:
                print(f"{r['path']}\terror: {r['error']}")
            else:
                print(f"{r['path']}\t{r['label']}\tclass {r['class_id']}\tconfidence {r['confidence']:.3f}")
        return 1 if any("error" in r for r in res) else 0
    s = predict_submission(args.run, data=args.data, out=args.out, folds=args.folds, tta=args.tta,
                           batch_size=args.batch_size)
    print(f"submission: {s['submission']} ({s['rows']} rows, folds {s['folds']}, tta {s['tta']})")
    print(f"probabilities: {s['probabilities']}")
    return 0


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
