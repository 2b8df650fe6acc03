"""The ``maskcls`` command line: one console script, one subcommand per step.

Errors a user can fix print one line ``maskcls: error: …`` and exit 2 (set MASKCLS_DEBUG=1
for the traceback). Printing happens here only; library modules log.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import MaskclsError
from . import audit_cmds, predict_cmds, prep_cmds, tools_cmds, train_cmds

# Each module registers its subcommands (parsers and handlers); the order is the help's order.
COMMAND_MODULES = (prep_cmds, train_cmds, predict_cmds, audit_cmds, tools_cmds)

EPILOG = """\
examples:
  maskcls synth demo-data --people 40            # synthetic dataset, competition layout
  maskcls prepare demo-data --out prepared       # manifest + person-grouped folds
  maskcls stats prepared                         # exact mean / pooled std
  maskcls faces prepared                         # optional MTCNN face crops
  maskcls train prepared --folds 0 --set train.epochs=3 --set data.image_size=128
  maskcls predict runs/tf_efficientnet_lite0-1 --tta hflip
  maskcls report runs/tf_efficientnet_lite0-1
  maskcls audit runs/tf_efficientnet_lite0-1     # likely label errors + fixes.csv (after --folds all)
  maskcls demo                                   # all of the above, small, in minutes
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskcls", description="Face-attribute classification: mask state x gender x "
                                "age (18 classes, macro F1), or any CSV-described task.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subs = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subs)
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
    try:
        return int(args.run(args) or 0)
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
