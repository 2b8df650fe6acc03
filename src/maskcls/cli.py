"""The ``maskcls`` command line: one console script, one subcommand per step.

Errors a user can fix print one line ``maskcls: error: …`` and exit 2 (set MASKCLS_DEBUG=1
for the traceback). Printing happens here only; library modules log.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from .errors import MaskclsError

EPILOG = """\
examples:
  maskcls synth demo-data --people 40            # synthetic dataset, competition layout
  maskcls prepare demo-data --out prepared       # manifest + person-grouped folds
  maskcls stats prepared                         # exact mean / pooled std
  maskcls faces prepared                         # optional MTCNN face crops
  maskcls train prepared --folds 0 --set train.epochs=3 --set data.image_size=128
  maskcls predict runs/tf_efficientnet_lite0-1 --tta hflip
  maskcls report runs/tf_efficientnet_lite0-1
  maskcls demo                                   # all of the above, small, in minutes
"""


def _sub(subs, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help, description=help, epilog="examples:\n" + textwrap.indent(examples, "  "),
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config file (see configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskcls", description="Face-attribute classification: mask state x gender x "
                                "age (18 classes, macro F1), or any CSV-described task.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subs = p.add_subparsers(dest="cmd", metavar="COMMAND")

    s = _sub(subs, "synth", "write a synthetic dataset in the competition layout",
             "maskcls synth demo-data --people 120 --seed 0")
    s.add_argument("out")
    s.add_argument("--people", type=int, default=120, help="training persons (7 photos each)")
    s.add_argument("--eval-people", type=int, default=None, help="evaluation persons (default 2/3 of --people)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, nargs=2, default=(384, 512), metavar=("W", "H"), help="photo size")
    s.add_argument("--workers", type=int, default=None)

    s = _sub(subs, "prepare", "index a dataset: check images, make person-grouped folds, write a manifest",
             "maskcls prepare /data/mask --out prepared --folds 5 --seed 719\n"
             "maskcls prepare my_faces.csv --out prepared-mine      # CSV: path,label[,group]\n"
             "maskcls prepare /data/mask --out prepared --fixes fixes.csv --old-age 59")
    s.add_argument("source", help="competition folder (train/, eval/) or a CSV manifest")
    s.add_argument("--out", required=True, help="new directory for manifest.csv and prepare.json")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=719)
    s.add_argument("--old-age", type=int, default=60, help="first age of the oldest group (58/59 help training)")
    s.add_argument("--fixes", help="label-fixes CSV: folder,field,value (field gender|age|swap_incorrect_normal)")
    s.add_argument("--skip-bad", action="store_true", help="exclude bad files (recorded) instead of stopping")
    s.add_argument("--allow-absolute", action="store_true", help="accept absolute paths in a CSV manifest")
    s.add_argument("--num-classes", type=int, default=None, help="K for a CSV label column (labels 0..K-1)")
    s.add_argument("--workers", type=int, default=None)

    s = _sub(subs, "stats", "exact per-channel mean / pooled std of the training images -> stats.json",
             "maskcls stats prepared\nmaskcls stats prepared --faces")
    s.add_argument("dir")
    s.add_argument("--faces", action="store_true", help="over the face crops instead of the photos")
    s.add_argument("--workers", type=int, default=None)

    s = _sub(subs, "faces", "crop faces with MTCNN (offline weights) into the prepared directory",
             "maskcls faces prepared --margin 0.2 --size 256")
    s.add_argument("dir")
    s.add_argument("--margin", type=float, default=0.2, help="box widening, fraction of the box per side")
    s.add_argument("--size", type=int, default=256, help="side of the stored square crops")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--workers", type=int, default=None)

    s = _sub(subs, "train", "train k-fold on a prepared directory",
             "maskcls train prepared --folds 0 --set train.epochs=3 --set data.image_size=128\n"
             "maskcls train prepared --folds all -c my.yaml\n"
             "maskcls train prepared --resume runs/tf_efficientnet_lite0-1\n"
             "accelerate launch -m maskcls train prepared --folds 0   # multi-GPU")
    s.add_argument("dir", nargs="?", help="prepared directory (optional with --resume)")
    _add_config_args(s)
    s.add_argument("--folds", default="all", help="'all', one fold '0', or a list '0,2'")
    s.add_argument("--run-dir", help="new run directory (default runs/<name>-<n>)")
    s.add_argument("--resume", metavar="RUN", help="continue the unfinished folds of RUN from last.pt")

    s = _sub(subs, "predict", "predict a submission (eval/info.csv) or label images",
             "maskcls predict runs/lite0-1                       # submission.csv in the run dir\n"
             "maskcls predict runs/lite0-1 --folds all --tta hflip --out sub.csv\n"
             "maskcls predict runs/lite0-1 photo.jpg photos/     # one line per image\n"
             "maskcls predict runs/lite0-1 photos/ --json")
    s.add_argument("run")
    s.add_argument("images", nargs="*", help="image files or folders (omit to predict the eval set)")
    s.add_argument("--data", help="prepared directory (default: the one the run trained on)")
    s.add_argument("--out", help="submission CSV path (default RUN/submission.csv)")
    s.add_argument("--folds", default="all", help="'all', 'best', or a list '0,1'")
    s.add_argument("--tta", default="none", choices=["none", "hflip"])
    s.add_argument("--json", action="store_true", help="JSON lines output for images")
    s.add_argument("--batch-size", type=int, default=None)

    s = _sub(subs, "report", "write RUN/report.html (curves, confusion matrices, per-class table, gallery)",
             "maskcls report runs/lite0-1")
    s.add_argument("run")

    s = _sub(subs, "export", "export a deployable ONNX / TorchScript model",
             "maskcls export runs/lite0-1 --format onnx\nmaskcls export runs/lite0-1 --format torchscript --folds 0")
    s.add_argument("run")
    s.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    s.add_argument("--folds", default="all", help="'all' (ensemble), 'best', or one fold")
    s.add_argument("--out", help="output file (default RUN/export/model.<ext>)")

    s = _sub(subs, "models", "list timm architectures (* = offline pretrained weights available)",
             "maskcls models 'eff*'\nmaskcls models --offline")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--offline", action="store_true", help="only architectures with offline weights")

    s = _sub(subs, "bench", "benchmarks measured side by side with the reference recipe",
             "maskcls bench loader --images 300\nmaskcls bench stats\nmaskcls bench train\n"
             "maskcls bench faces\nmaskcls bench memory --images 20000")
    s.add_argument("what", choices=["train", "loader", "stats", "faces", "memory"])
    s.add_argument("--images", type=int, default=None)
    s.add_argument("--workers", type=int, default=2)

    s = _sub(subs, "demo", "the whole job on a synthetic dataset, in minutes",
             "maskcls demo\nmaskcls demo --out demo-out --people 120")
    s.add_argument("--out", default="demo-out", help="folder for data, prepared dir and run (new)")
    s.add_argument("--people", type=int, default=120)
    s.add_argument("--epochs", type=int, default=None)

    s = _sub(subs, "config", "print the default config YAML or the README table",
             "maskcls config > my.yaml\nmaskcls config --table")
    s.add_argument("--table", action="store_true")
    _add_config_args(s)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Library modules log; the CLI shows warnings, plus the progress lines of training and the demo.
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        for name in ("maskcls.engine", "maskcls.demo"):
            logging.getLogger(name).setLevel(logging.INFO)
    if args.cmd is None:
        parser.print_help()
        return 2
    from . import commands
    try:
        return int(getattr(commands, f"cmd_{args.cmd}")(args) or 0)
    except (MaskclsError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("MASKCLS_DEBUG"):
            raise
        print(f"maskcls: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maskcls: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
