"""``maskcls predict | report | export``: using a trained run."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from ..errors import ConfigError
from .common import float_range, int_range, sub, view_words


def register(subs) -> None:
    s = sub(subs, "predict", "predict a submission (eval/info.csv) or label images",
             "maskcls predict runs/mobilenetv2_100-1                       # submission.csv in the run dir\n"
             "maskcls predict runs/mobilenetv2_100-1 --folds all --tta hflip --out sub.csv\n"
             "maskcls predict runs/mobilenetv2_100-1 photo.jpg photos/     # one line per image\n"
             "maskcls predict runs/mobilenetv2_100-1 photos/ --json\n"
             "maskcls predict runs/mobilenetv2_100-1 --backend onnx-int8    # RUN/export/model.int8.onnx, on a CPU\n"
             "maskcls predict runs/mobilenetv2_100-1 runs/tf_efficientnet_lite2-1 --tta hflip \\\n"
             "    --out sub.csv                                            # an ensemble of runs")
    s.add_argument("run_dir", metavar="RUN", help="a run directory; several runs (each with run.json) make an ensemble")
    s.add_argument("images", nargs="*", help="more runs, or image files or folders (omit to predict the eval set)")
    s.add_argument("--data", help="prepared directory, or a competition folder with eval/info.csv / a CSV of images "
                   "(indexed into RUN/predict-data/; default: the prepared directory the run trained on)")
    s.add_argument("--out", help="submission CSV, or a directory for submission.csv (default RUN/submission.csv; "
                   "never overwritten)")
    s.add_argument("--folds", default="all", help="'all', 'best', or a list '0,1'")
    s.add_argument("--tta", default="auto", choices=["auto", "none", "hflip"],
                   help="test-time augmentation: hflip averages each photo with its mirror image; auto (default) = "
                        "what the run validated with (train.valid_tta, hflip since 2026-12-03), which its "
                        "out-of-fold scores and decision offsets saw")
    s.add_argument("--json", action="store_true", help="JSON lines output for images (the plain output escapes "
                   "backslashes, tabs, newlines and control characters in file names: \\t, \\n, \\x1b)")
    s.add_argument("--batch-size", type=int_range(1), default=None,
                   help="images per batch (default: the run's validation batch)")
    s.add_argument("--tune-bias", choices=["auto", "on", "off"], default="auto",
                   help="per-class decision offsets fitted for macro F1 on the run's out-of-fold rows "
                        "(decision.json): auto = when they helped cross-fitted")
    s.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="torch: the checkpoints; onnx / onnx-int8: RUN/export/model.onnx / model.int8.onnx through "
                   "ONNX Runtime (exported first when missing; INT8 under the default --max-drop check)")
    s.add_argument("--ensemble-weights", choices=["equal", "oof"], default="equal",
                   help="several runs: equal weights, or weights fitted for macro F1 on their common out-of-fold rows")
    s.set_defaults(handler=cmd_predict)

    s = sub(subs, "pseudo", "pseudo-label confident eval images into a new prepared directory",
            "maskcls pseudo runs/mobilenetv2_100-1 --min-prob 0.9 --out prepared-pseudo\n"
            "maskcls train prepared-pseudo --folds all      # eval images with p >= 0.9 train in every fold")
    s.add_argument("run_dir", metavar="RUN")
    s.add_argument("--out", required=True, help="new prepared directory")
    s.add_argument("--min-prob", type=float_range(0, 1), default=0.9, help="smallest top probability to join training")
    s.add_argument("--folds", default="all", help="'all', 'best', or a list '0,1'")
    s.add_argument("--tta", default="hflip", choices=["none", "hflip"])
    s.add_argument("--data", help="prepared directory to extend (default: the one the run trained on)")
    s.set_defaults(handler=cmd_pseudo)

    s = sub(subs, "report", "write RUN/report.html (curves, confusion matrices, per-class table, gallery)",
             "maskcls report runs/mobilenetv2_100-1")
    s.add_argument("run_dir", metavar="RUN")
    s.set_defaults(handler=cmd_report)

    s = sub(subs, "export", "export a deployable ONNX / TorchScript model, checked against PyTorch: a difference "
            "over 1e-4 on any class probability fails the export and writes nothing (fp32 on the CPU differs by "
            "under 1e-6)",
            "maskcls export runs/mobilenetv2_100-1 --format onnx\n"
            "maskcls export runs/mobilenetv2_100-1 --format torchscript --folds 0")
    s.add_argument("run_dir", metavar="RUN")
    s.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    s.add_argument("--folds", default="all", help="'all' (ensemble), 'best', or one fold")
    s.add_argument("--out", help="output file or folder (default RUN/export/model.<ext>, with --int8 "
                   "RUN/export/model.int8.onnx); never a run's own files, never over a file (or a .json beside it) "
                   "that an earlier export did not write")
    q = s.add_argument_group("INT8 (ONNX Runtime static quantization, scored on the run's validation fold)")
    q.add_argument("--int8", action="store_true", help="quantize the ONNX model to INT8 (QDQ, per-channel weights), "
                   "calibrated on training images of the fold; prints both macro F1s and 'int8 macro F1 delta'")
    q.add_argument("--max-drop", type=float_range(-1, 1), default=0.005,
                   help="largest macro F1 loss (fp32 - int8) that leaves a file (default 0.005; a negative value "
                   "demands a gain)")
    q.add_argument("--calib-images", type=int_range(1), default=300, help="training images to calibrate on")
    q.add_argument("--calib-method", choices=["minmax", "entropy", "percentile"], default="entropy",
                   help="how activation ranges are set (default entropy: it lost the least F1 on the dev sets)")
    q.add_argument("--fp32-first", type=int_range(0), default=3, metavar="K",
                   help="Conv layers from the input kept fp32 (default 3; most of INT8's disagreement with fp32 "
                   "came from the first layers on the dev sets; see docs)")
    q.add_argument("--fp32-last", type=int_range(0), default=0, metavar="K",
                   help="Conv layers before the classifier kept fp32 (the classifier always is; default 0)")
    q.add_argument("--force", action="store_true", help="keep the INT8 file whatever it lost")
    s.set_defaults(handler=cmd_export)


def plain(text: str) -> str:
    """``text`` on one tab-separated field: backslash, tab, newline and other control characters escaped
    (``\\t``, ``\\n``, ``\\x1b`` …) so that a file name cannot break the one-line-per-image output."""
    special = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    return "".join(special.get(ch) or (ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 256 else
                                       f"\\u{ord(ch):04x}") for ch in text)


def _is_run(item: str) -> bool:
    return (Path(item) / "run.json").is_file()


def cmd_predict(args) -> int:
    from ..infer.predict import predict_images, predict_submission
    runs = [args.run_dir] + [i for i in args.images if _is_run(i)]
    if len(runs) > 1:
        if len(runs) != 1 + len(args.images):
            raise ConfigError("predict takes several runs (an ensemble) or one run and images, not both")
        if args.backend != "torch":
            raise ConfigError(f"--backend {args.backend} predicts one run; an ensemble of runs uses --backend torch")
        return _predict_ensemble(args, runs)
    if args.images:
        res = predict_images(args.run_dir, args.images, folds=args.folds, tta=args.tta,
                             batch_size=args.batch_size or 32, backend=args.backend)
        for r in res:
            if args.json:
                print(json.dumps(r))
            elif "error" in r:
                print(f"{plain(r['path'])}\terror: {plain(r['error'])}")
            else:
                print(f"{plain(r['path'])}\t{r['label']}\tclass {r['class_id']}\tconfidence {r['confidence']:.3f}")
        if not args.json:  # on stderr: stdout stays one line per image, for scripts
            print("decision offsets: not applied to single images: each label is the argmax of the folds' averaged "
                  "probabilities; the run's offsets apply to submissions (--tune-bias)", file=sys.stderr)
        return 1 if any("error" in r for r in res) else 0
    s = predict_submission(args.run_dir, data=args.data, out=args.out, folds=args.folds, tta=args.tta,
                           batch_size=args.batch_size, tune_bias=args.tune_bias, backend=args.backend)
    if s.get("prepared_now"):
        print(f"indexed {args.data} into {s['prepared']}")
    print(f"submission: {s['submission']} ({s['rows']} rows, folds {','.join(map(str, s['folds']))}, "
          f"{view_words(s['tta'], s['precision'])}, backend {s['backend']}{' ' + s['model'] if s['model'] else ''})")
    print(decision_line(s["decision"]))
    print(f"probabilities: {s['probabilities']}")
    return 0


def decision_line(d: dict) -> str:
    """Whether predict applied the run's decision offsets, from where, or why not (``d``: predict's record)."""
    f1 = (f"cross-fitted out-of-fold macro F1 {d['f1_argmax']:.4f} -> {d['f1_tuned']:.4f}"
          if isinstance(d.get("f1_argmax"), float) and isinstance(d.get("f1_tuned"), float) else "")
    reason = d["reason"]
    if reason == "off":
        return "decision offsets: not applied (--tune-bias off): plain argmax"
    if reason == "missing":
        return ("decision offsets: not applied: the run has no decision.json (training writes it when it ends with "
                "out-of-fold predictions); plain argmax")
    if reason == "no gain":
        return (f"decision offsets: not applied: they did not raise the {f1 or 'cross-fitted out-of-fold macro F1'} "
                f"in {d['file']}; plain argmax (--tune-bias on applies them anyway)")
    line = (f"decision offsets: applied from {d['file']}"
            + (f" ({f1})" if reason == "gain" and f1 else " (--tune-bias on)" if reason == "on" else ""))
    if d.get("other_view"):
        line += (f"; note: fitted on {view_words(d['fitted_view'], None)} probabilities, and this prediction used "
                 "another view (--tta)")
    return line


def _predict_ensemble(args, runs: list[str]) -> int:
    from ..infer.ensemble import predict_runs
    r = predict_runs(runs, data=args.data, out=args.out, folds=args.folds, tta=args.tta,
                     weights=args.ensemble_weights, tune_bias=args.tune_bias, batch_size=args.batch_size)
    print(f"submission: {r['submission']} ({r['rows']} rows, {len(runs)} runs, weights {r['weights']}, "
          f"{view_words(r['tta'], None) if ',' not in r['tta'] else 'views ' + r['tta']})")
    if "oof_f1_ensemble" in r:
        print(f"common out-of-fold rows: {r['oof_rows']}; macro F1 per run (each run's validation view) "
              f"{', '.join(f'{f:.4f}' for f in r['oof_f1_runs'])}; ensemble {r['oof_f1_ensemble']:.4f}")
    d = r.get("decision")
    if r["decision_offsets"]:
        how = f" ({d['f1_argmax']:.4f} -> {d['f1_tuned_cross_fitted']:.4f} cross-fitted)" if d else ""
        print(f"decision offsets: applied, fitted on the ensemble's common out-of-fold rows{how}")
    elif args.tune_bias == "off":
        print("decision offsets: not applied (--tune-bias off): plain argmax")
    elif d is None:
        print("decision offsets: not applied: the runs share no out-of-fold rows to fit them on (different prepared "
              "splits); plain argmax")
    else:
        print(f"decision offsets: not applied: on the ensemble's common out-of-fold rows they did not raise the "
              f"cross-fitted macro F1 ({d['f1_argmax']:.4f} -> {d['f1_tuned_cross_fitted']:.4f}); plain argmax "
              "(--tune-bias on applies them anyway)")
    return 0


def cmd_report(args) -> int:
    from ..report.page import write_report
    print(f"report: {write_report(args.run_dir)}")
    return 0


def cmd_export(args) -> int:
    if args.int8:
        return _export_int8(args)
    if args.force:
        raise ConfigError("--force belongs to --int8 (it keeps an INT8 model that lost more than --max-drop)")
    from ..infer.export import export_run
    out = export_run(args.run_dir, fmt=args.format, folds=args.folds, out=args.out)
    print(f"exported {out} (preprocessing in {Path(out).with_suffix('.json')})")
    return 0


def _export_int8(args) -> int:
    if args.format != "onnx":
        raise ConfigError(f"--int8 quantizes an ONNX model; use --format onnx, not {args.format}")
    from ..infer.quantize import export_int8
    r = export_int8(args.run_dir, folds=args.folds, out=args.out, max_drop=args.max_drop,
                    calib_images=args.calib_images, method=args.calib_method, fp32_first=args.fp32_first,
                    fp32_last=args.fp32_last, force=args.force)
    print(f"validation macro F1, fold {r['fold']} ({r['validation_images']} images), {view_words(r['tta'], None)}: "
          f"fp32 {r['f1_fp32']:.4f}, int8 {r['f1_int8']:.4f} (calibrated on {r['calibration_images']} training images)")
    if len(r["folds"]) > 1:
        print(f"note: the model averages folds {','.join(map(str, r['folds']))}, and all but fold {r['fold']} trained "
              f"on these images: the F1s measure what INT8 costs, not training's validation figure (--folds "
              f"{r['fold']} scores that fold's model alone)")
    print(f"int8 macro F1 delta: {r['delta']:+.4f}")
    print(f"exported {r['path']} (INT8{', kept with --force' if r['forced'] else ''}; preprocessing and "
          f"calibration in {Path(r['path']).with_suffix('.json')})")
    return 0


def cmd_pseudo(args) -> int:
    from ..infer.pseudo import make_pseudo
    m = make_pseudo(args.run_dir, args.out, min_prob=args.min_prob, folds=args.folds, tta=args.tta, data=args.data)
    p = m["pseudo"]
    if p["added"] == 0:
        print(f"maskcls: warning: 0 of {p['eval_images']} eval images reach p >= {p['min_prob']:g}: the most "
              f"confident has p = {p['max_prob']:.4f} ({view_words(p['tta'], None)}, folds "
              f"{','.join(map(str, p['folds']))}), so nothing was written to {args.out}; lower --min-prob "
              f"(--min-prob {p['lower_min_prob']:g} would add {p['added_at_lower']}), or pseudo-label with a "
              "stronger run (more epochs, all folds)", file=sys.stderr)
        return 1
    print(f"prepared {args.out}: {p['added']} of {p['eval_images']} eval images reach p >= {p['min_prob']:g} and "
          f"train in every fold (per class {p['per_class']}); validation stays on labelled images")
    if (Path(p["from_prepared"]) / "faces").is_dir():
        print(f"note: face crops are not copied; run `maskcls faces {args.out}` before training with data.faces=true")
    print(f"next: maskcls train {shlex.quote(args.out)} --folds all")
    return 0
