"""``maskcls train | config | models``: training runs and what configures them.

YAML files and ``--set`` overrides become a typed Config here, fold lists become integers.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import ConfigError, MaskclsError
from ..prep.folds import parse_fold_list
from .common import add_config_args, check_prepared_dir, float_range, int_range, sub, view_words


def register(subs) -> None:
    s = sub(subs, "train", "train k-fold on a prepared directory",
             "maskcls train prepared --folds 0 --set train.epochs=3 --set data.image_size=128\n"
             "maskcls train prepared --folds all -c my.yaml\n"
             "maskcls train prepared --resume runs/mobilenetv2_100-1\n"
             "accelerate launch -m maskcls train prepared --folds 0   # multi-GPU")
    s.add_argument("dir", nargs="?", help="prepared directory (optional with --resume)")
    add_config_args(s)
    s.add_argument("--folds", default="all", help="'all', one fold '0', or a list '0,2'")
    s.add_argument("--run-dir", help="new run directory (default runs/<name>-<n>)")
    s.add_argument("--resume", metavar="RUN", help="continue the unfinished folds of RUN from last.pt")
    s.set_defaults(handler=cmd_train)

    s = sub(subs, "lr-find", "learning-rate range test on a run's real set-up: plot, CSV, suggested lr",
             "maskcls lr-find prepared --set data.image_size=128\n"
             "maskcls lr-find prepared -c my.yaml --start 1e-6 --end 1e-1 --steps 150")
    s.add_argument("dir", help="prepared directory (read only: nothing is written into it)")
    add_config_args(s)
    s.add_argument("--fold", type=int_range(0), default=0, help="fold whose training images feed the sweep")
    s.add_argument("--start", type=float_range(1e-12, 10.0), default=1e-7, help="first learning rate")
    s.add_argument("--end", type=float_range(1e-12, 100.0), default=1.0, help="last learning rate")
    s.add_argument("--steps", type=int_range(2, 1000), default=100, help="optimizer steps at most")
    s.add_argument("--out", help="new directory for the plot and CSV (default <run.runs_dir>/lr-find-<n>)")
    s.set_defaults(handler=cmd_lr_find)

    s = sub(subs, "config", "print the default config YAML or the README table",
             "maskcls config > my.yaml\nmaskcls config --table")
    s.add_argument("--table", action="store_true")
    add_config_args(s)
    s.set_defaults(handler=cmd_config)

    s = sub(subs, "distill", "train a student on the averaged probabilities of teacher runs (one model's cost)",
             "maskcls distill prepared --teacher runs/a-1 --teacher runs/a-2 --tta hflip --folds 0\n"
             "maskcls distill prepared --teacher runs/a-1 --set distill.alpha=0.5 --set distill.temperature=2\n"
             "maskcls distill prepared --teacher runs/a-1 --teacher runs/a-2 --online   # teachers see each batch\n"
             "maskcls distill prepared --teacher runs/a-1 --teacher runs/a-2 --init average  # warm start\n"
             "maskcls distill prepared --teacher runs/a-1 --teacher runs/a-2 --unlabelled   # + the eval images")
    s.add_argument("dir", help="prepared directory the teachers trained on (the same folds)")
    s.add_argument("--teacher", action="append", required=True, metavar="RUN",
                   help="a teacher run directory (repeatable; the student of fold f learns their fold-f models)")
    s.add_argument("--tta", choices=("none", "hflip"), help="teachers' test-time augmentation (distill.tta)")
    s.add_argument("--online", action="store_true",
                   help="the teachers label every training batch as the student sees it, augmented (distill.online; "
                        "costs their forward passes at every step)")
    s.add_argument("--init", choices=("pretrained", "teacher", "average"),
                   help="the student's starting weights: a fresh model's, the first teacher's, or the teachers' "
                        "mean (distill.init)")
    s.add_argument("--unlabelled", action="store_true",
                   help="also train on the prepared directory's unlabelled evaluation images, from the teachers' "
                        "probabilities alone (distill.unlabelled)")
    add_config_args(s)
    s.add_argument("--folds", default="all", help="'all', one fold '0', or a list '0,2'")
    s.add_argument("--run-dir", help="new run directory (default runs/<name>-<n>)")
    s.set_defaults(handler=cmd_distill)

    s = sub(subs, "soup", "greedy soup of runs of one config (different seeds): one model, averaged weights",
             "maskcls soup runs/a-1 runs/a-2 runs/a-3 --out runs/a-soup")
    s.add_argument("runs", nargs="+", help="run directories of one config that differ only in train.seed")
    s.add_argument("--out", required=True, help="new run directory for the soup")
    s.set_defaults(handler=cmd_soup)

    s = sub(subs, "models", "list timm architectures (* = offline pretrained weights available)",
             "maskcls models 'eff*'\nmaskcls models --offline")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--offline", action="store_true", help="only architectures with offline weights")
    s.set_defaults(handler=cmd_models)


def parse_folds(spec: str | None, k: int) -> list[int]:
    """'all' → every fold; '0' → [0]; '0,2' → [0, 2]; checked against the k folds."""
    if spec in ("all", "", None):
        return list(range(k))
    folds = parse_fold_list(spec)
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise ConfigError(f"--folds {spec!r}: fold(s) {bad} do not exist; the prepared dir has folds 0..{k - 1}")
    return folds


def format_summary(s: dict, view: str | None = None) -> str:
    """The end-of-run lines; each score names how it was computed (``view``: e.g. "flip TTA, fp32", from
    :func:`~maskcls.report.run_data.validation_view`), as the report, export --int8 and soup name theirs."""
    how = f", {view}" if view else ""
    lines = [f"run: {s['run_dir']}"]
    for f, r in s["folds"].items():
        if r.get("best_f1") is not None:
            lines.append(f"fold {f}: validation macro F1{how}: {r['best_f1']:.4f} (best epoch {r['best_epoch']}, "
                         f"accuracy {r['best_acc']:.4f}, {r['status']})")
        if a := r.get("average"):
            lines.append(f"fold {f}: {a['kind']} {len(a['epochs'])} epochs averaged (epochs "
                         f"{','.join(map(str, a['epochs']))}), validation macro F1{how}: {a['f1']:.4f}"
                         f"{' (the fold model now)' if a['used'] else ' (avg.pt only)'}")
    if s.get("oof_f1") is not None:
        lines.append(f"out-of-fold macro F1{how}: {s['oof_f1']:.4f} (folds {', '.join(map(str, s['folds']))} pooled)")
    if s.get("head_f1"):
        lines.append("per-head F1: " + ", ".join(f"{h} {v:.4f}" for h, v in s["head_f1"].items()))
    if d := s.get("decision"):
        lines.append(f"decision tuning (per-class offsets, cross-fitted over {d['parts']} parts), out-of-fold "
                     f"macro F1{how}: {d['f1_argmax']:.4f} -> {d['f1_tuned_cross_fitted']:.4f} "
                     f"({'applied' if d['apply_by_default'] else 'not applied'} by predict --tune-bias auto)")
    scored = [r for r in s["folds"].values() if r.get("best_f1") is not None]
    if s.get("mean_f1") is not None and len(scored) > 1:
        lines.append(f"mean validation macro F1 of {len(scored)} folds{how}: {s['mean_f1']:.4f}")
    return "\n".join(lines)


def next_steps(run: str | Path, folds: list[int], num_folds: int | None, *, report: bool) -> str:
    """What to run after a training: predict, the report (``report``: written), and the audit once every fold
    of the prepared directory (``num_folds``) ran."""
    q = shlex.quote(str(run))
    lines = [f"report: {Path(run) / 'report.html'}" if report else
             f"report: not written (run.report=false, or it failed above); maskcls report {q} writes it"]
    lines.append(f"next: maskcls predict {q}  (a submission: {Path(run) / 'submission.csv'})")
    if num_folds and len(folds) == num_folds and num_folds > 1:
        lines.append(f"      maskcls audit {q}  (likely label errors, from the out-of-fold predictions)")
    return "\n".join(lines)


def _view(run: str | Path) -> str | None:
    from ..report.run_data import validation_view, view_words
    try:
        return view_words(*validation_view(run))
    except (MaskclsError, OSError):  # a summary line without its view, rather than no summary
        return None


def write_report_safely(run: str | Path) -> None:
    """The report after training: a failure is a warning, never a lost training."""
    from ..report.page import write_report
    try:
        write_report(run)
    except Exception as e:  # noqa: BLE001 - a report failure must not lose a finished training
        print(f"maskcls: warning: could not write the report ({e}); run `maskcls report {run}` to retry",
              file=sys.stderr)


def cmd_train(args) -> int:
    from ..config_io import load_config
    from ..engine.run import RunInterrupted, resume_training, run_training
    from ..prep.prepared import load_prepared
    from ..rundir.files import read_run_config
    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume continues a run with its recorded config; drop -c/--set")
        report = write_report_safely if read_run_config(args.resume).run.report else None
        start = lambda: resume_training(args.resume, prepared=args.dir, on_summary=report)  # noqa: E731
    else:
        if not args.dir:
            raise ConfigError("train needs a prepared directory (maskcls prepare SOURCE --out NEW_FOLDER), or "
                              "--resume RUN")
        check_prepared_dir(args.dir, "train")
        cfg = load_config(args.config, args.overrides)
        prep = load_prepared(args.dir)
        folds = parse_folds(args.folds, prep.num_folds)
        report = write_report_safely if cfg.run.report else None
        start = lambda: run_training(cfg, prep, folds=folds, run_dir=args.run_dir, on_summary=report)  # noqa: E731
    try:
        s = start()
    except RunInterrupted as e:  # the report (on_summary) is written, for the trackers too
        print(f"interrupted: completed epochs are saved; continue with maskcls train --resume {e.run}",
              file=sys.stderr)
        return 130
    if s["is_main"]:  # other ranks of a multi-process run stay quiet
        _print_end_of_run(s)
    return 0


def _print_end_of_run(s: dict) -> None:
    from ..rundir.files import read_run_info
    run = s["run_dir"]
    print(format_summary(s, _view(run)))
    try:
        prepared = read_run_info(run).get("prepared")
    except (MaskclsError, OSError):
        prepared = None
    print(next_steps(run, [int(f) for f in s["folds"]], _prepared_folds(prepared),
                     report=(Path(run) / "report.html").is_file()))


def _prepared_folds(prepared) -> int | None:
    from ..fsutil import read_json
    meta = read_json(Path(prepared) / "prepare.json") if isinstance(prepared, str) else None
    return meta.get("folds") if isinstance(meta, dict) and isinstance(meta.get("folds"), int) else None


def cmd_lr_find(args) -> int:
    from ..config_io import load_config
    from ..engine.lr_find import lr_find, summary_lines
    from ..prep.prepared import load_prepared
    check_prepared_dir(args.dir, "lr-find")
    res = lr_find(load_config(args.config, args.overrides), load_prepared(args.dir), fold=args.fold,
                  start=args.start, end=args.end, steps=args.steps, out=args.out)
    same = ([f"-c {shlex.quote(args.config)}"] if args.config else []) + [
        f"--set {shlex.quote(o)}" for o in args.overrides if not o.startswith(res.key + "=")]
    print("\n".join(summary_lines(res)))
    print("use it: " + " ".join(["maskcls train", shlex.quote(args.dir), *same,
                                 f"--set {res.key}={res.suggestion['suggested']:.2g}"]))
    return 0


def cmd_config(args) -> int:
    from ..config_io import config_table, dump_yaml, load_config
    if args.table:
        sys.stdout.write(config_table())
    else:
        sys.stdout.write(dump_yaml(load_config(args.config, args.overrides)))
    return 0


def cmd_distill(args) -> int:
    import json

    from ..config_io import load_config
    from ..engine.run import run_training
    from ..prep.prepared import load_prepared
    overrides = [*args.overrides, "distill.teachers=" + json.dumps([str(Path(t).resolve()) for t in args.teacher])]
    if args.tta:
        overrides.append(f"distill.tta={args.tta}")
    if args.unlabelled:
        overrides.append("distill.unlabelled=true")
    if args.online:
        overrides.append("distill.online=true")
    if args.init:
        overrides.append(f"distill.init={args.init}")
    check_prepared_dir(args.dir, "distill")
    cfg = load_config(args.config, overrides)
    prep = load_prepared(args.dir)
    report = write_report_safely if cfg.run.report else None
    s = run_training(cfg, prep, folds=parse_folds(args.folds, prep.num_folds), run_dir=args.run_dir,
                     on_summary=report)
    if s["is_main"]:
        _print_end_of_run(s)
    return 0


def cmd_soup(args) -> int:
    from ..infer.soup import make_soup
    s = make_soup(args.runs, args.out)
    for f, r in s["folds"].items():
        v = r["soup"]
        print(f"fold {f}: {v['kept']} of {v['of']} runs in the soup; validation macro F1, "
              f"{view_words(v['tta'], v['precision'])}: {r['best_f1']:.4f} (best run alone "
              f"{v['best_ingredient_f1']:.4f}, as its training validated it)")
    print(f"soup: {s['run_dir']}")
    print(f"next: maskcls predict {shlex.quote(s['run_dir'])}  (predict, export, serve and report it like a run)")
    return 0


def cmd_models(args) -> int:
    from ..models.factory import list_models
    for name, offline in list_models(args.pattern, offline_only=args.offline):
        print(f"{'*' if offline else ' '} {name}")
    return 0
