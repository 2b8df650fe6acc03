"""``maskcls predict | report | export``: using a trained run."""
from __future__ import annotations

import json
from pathlib import Path

from .common import int_range, sub


def register(subs) -> None:
    s = sub(subs, "predict", "predict a submission (eval/info.csv) or label images",
             "maskcls predict runs/lite0-1                       # submission.csv in the run dir\n"
             "maskcls predict runs/lite0-1 --folds all --tta hflip --out sub.csv\n"
             "maskcls predict runs/lite0-1 photo.jpg photos/     # one line per image\n"
             "maskcls predict runs/lite0-1 photos/ --json")
    s.add_argument("run_dir", metavar="RUN")
    s.add_argument("images", nargs="*", help="image files or folders (omit to predict the eval set)")
    s.add_argument("--data", help="prepared directory, or a competition folder with eval/info.csv / a CSV of images "
                   "(indexed into RUN/predict-data/; default: the prepared directory the run trained on)")
    s.add_argument("--out", help="submission CSV, or a directory for submission.csv (default RUN/submission.csv; "
                   "never overwritten)")
    s.add_argument("--folds", default="all", help="'all', 'best', or a list '0,1'")
    s.add_argument("--tta", default="none", choices=["none", "hflip"])
    s.add_argument("--json", action="store_true", help="JSON lines output for images")
    s.add_argument("--batch-size", type=int_range(1), default=None,
                   help="images per batch (default: the run's validation batch)")
    s.set_defaults(run=cmd_predict)

    s = sub(subs, "report", "write RUN/report.html (curves, confusion matrices, per-class table, gallery)",
             "maskcls report runs/lite0-1")
    s.add_argument("run_dir", metavar="RUN")
    s.set_defaults(run=cmd_report)

    s = sub(subs, "export", "export a deployable ONNX / TorchScript model",
             "maskcls export runs/lite0-1 --format onnx\nmaskcls export runs/lite0-1 --format torchscript --folds 0")
    s.add_argument("run_dir", metavar="RUN")
    s.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    s.add_argument("--folds", default="all", help="'all' (ensemble), 'best', or one fold")
    s.add_argument("--out", help="output file (default RUN/export/model.<ext>)")
    s.set_defaults(run=cmd_export)


def cmd_predict(args) -> int:
    from ..predict import predict_images, predict_submission
    if args.images:
        res = predict_images(args.run_dir, args.images, folds=args.folds, tta=args.tta,
                             batch_size=args.batch_size or 32)
        for r in res:
            if args.json:
                print(json.dumps(r))
            elif "error" in r:
                print(f"{r['path']}\terror: {r['error']}")
            else:
                print(f"{r['path']}\t{r['label']}\tclass {r['class_id']}\tconfidence {r['confidence']:.3f}")
        return 1 if any("error" in r for r in res) else 0
    s = predict_submission(args.run_dir, data=args.data, out=args.out, folds=args.folds, tta=args.tta,
                           batch_size=args.batch_size)
    if s["prepared_now"]:
        print(f"indexed {args.data} into {s['prepared']}")
    print(f"submission: {s['submission']} ({s['rows']} rows, folds {s['folds']}, tta {s['tta']})")
    print(f"probabilities: {s['probabilities']}")
    return 0


def cmd_report(args) -> int:
    from ..report import write_report
    print(f"report: {write_report(args.run_dir)}")
    return 0


def cmd_export(args) -> int:
    from ..export import export_run
    out = export_run(args.run_dir, fmt=args.format, folds=args.folds, out=args.out)
    print(f"exported {out} (preprocessing in {Path(out).with_suffix('.json')})")
    return 0
