"""The ``maskcls`` command line: one console script, one subcommand per step.

Errors a user can fix print one line ``maskcls: error: …`` and exit 2 (set MASKCLS_DEBUG=1
for the traceback). Printing happens here only; library modules log.
"""
from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import sys

from .. import progress
from ..errors import MaskclsError
from . import audit_cmds, predict_cmds, prep_cmds, serve_cmds, tools_cmds, train_cmds, tune_cmds
from .common import one_line_error

# Each module registers its subcommands (parsers and handlers); the order is the help's order.
COMMAND_MODULES = (prep_cmds, train_cmds, tune_cmds, predict_cmds, audit_cmds, serve_cmds, tools_cmds)

EPILOG = """\
examples:
  maskcls synth demo-data --people 40            # synthetic dataset, competition layout
  maskcls prepare demo-data --out prepared       # manifest + person-grouped folds
  maskcls stats prepared                         # exact mean / pooled std
  maskcls faces prepared                         # optional MTCNN face crops
  maskcls train prepared --folds 0 --set train.epochs=3 --set data.image_size=128
  maskcls predict runs/mobilenetv2_100-1 --tta hflip
  maskcls report runs/mobilenetv2_100-1
  maskcls audit runs/mobilenetv2_100-1     # likely label errors + fixes.csv (after --folds all)
  maskcls demo                                   # all of the above, small, in minutes
  maskcls --log-every 50 train prepared > train.log 2>&1   # plain progress lines, every 50 batches

progress: bars on a terminal; redirected (nohup, a cluster job, | tee) a plain line every ~30 s.
  --log-every N (batches) or Ns (seconds) asks for plain lines; MASKCLS_PROGRESS=bar|plain|off|auto.
"""
LOG_EVERY_HELP = ("plain progress lines instead of bars: every N batches, or every N seconds with a trailing s "
                  "(30s); default: bars on a terminal, a line every ~30 s otherwise")
# loggers whose INFO lines the CLI shows: the training log, the demo's steps, progress lines
INFO_LOGGERS = ("maskcls.engine", "maskcls.demo", "maskcls.progress")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="maskcls", description="Face-attribute classification: mask state x gender x "
                                "age (18 classes, macro F1), or any CSV-described task.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                                exit_on_error=False)  # parse_args turns the errors into one line
    p.error = functools.partial(one_line_error, p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--log-every", type=_log_every, metavar="N", help=LOG_EVERY_HELP)
    subs = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subs)
    for sp in _commands(p):  # also after the command: `maskcls train … --log-every 50`, `maskcls bench train …`
        sp.add_argument("--log-every", type=_log_every, metavar="N", default=argparse.SUPPRESS, help=LOG_EVERY_HELP)
    return p


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command's parser, the sub-commands of a command (``bench quality``) included."""
    found = []
    for sp in _subparsers(parser).choices.values():
        found.append(sp)
        if any(isinstance(a, argparse._SubParsersAction) for a in sp._actions):
            found += _commands(sp)
    return found


def _log_every(text: str) -> tuple[int, float | None]:
    try:
        return progress.parse_log_every(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--log-every ")) from None


def setup_logging(verbose: bool, log_every: tuple[int, float | None] | None) -> None:
    """Library modules log; the CLI shows warnings, plus training's lines, the demo's and progress lines.

    Progress lines and the training log share stderr, one record per line, so a redirected log reads
    in order. ``--log-every`` switches bars to plain lines (:mod:`maskcls.progress`).
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        for name in INFO_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    progress.reset()  # each invocation starts from MASKCLS_PROGRESS / auto
    if log_every is not None:
        every, seconds = log_every
        progress.configure(every=every, seconds=seconds)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, with a mistyped command answered in one line: ``maskcls: error: unknown command
    'trian'; did you mean 'train'?`` and exit status 2 (argparse would list every command)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        if e.argument_name == "COMMAND":
            word = _command_word(argv)
            close = difflib.get_close_matches(word, list(_subparsers(parser).choices), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "see maskcls --help for the commands"
            parser.exit(2, f"maskcls: error: unknown command {word!r}; {hint}\n")
        parser.error(str(e))
    if extra:  # named by the command that took them: `maskcls bench train: error: unrecognized arguments: …`
        _command_parser(parser, argv).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the deepest command ``argv`` names (``maskcls bench train``), else ``parser``."""
    for word in argv:
        subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subs is not None and word in subs.choices:
            parser = subs.choices[word]
    return parser


def _command_word(argv: list[str]) -> str:
    """The first word of ``argv`` that is neither a top-level option nor its value."""
    it = iter(argv)
    for a in it:
        if a == "--log-every":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return ""


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    setup_logging(args.verbose, args.log_every)
    if args.cmd is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
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
