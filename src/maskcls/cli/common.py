"""What the command modules share: subparser creation, config arguments, checked numeric types."""
from __future__ import annotations

import argparse
import functools
import math
import textwrap
from typing import Callable, NoReturn


def sub(subs, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=help, description=help, epilog="examples:\n" + textwrap.indent(examples, "  "),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.error = functools.partial(one_line_error, p)  # a usage mistake: one line, like every other error
    return p


def one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """``maskcls predict: error: argument --batch-size: 0 is out of range; …`` and exit status 2 (argparse
    would print the whole usage block first; ``--help`` shows it)."""
    parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config file (see configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")


def _bounds(lo, hi) -> str:
    if hi is None:
        return f">= {lo}"
    return f"between {lo} and {hi}" if lo is not None else f"<= {hi}"


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer within [lo, hi] (either bound optional).

    A value out of range (``--batch-size 0``, ``--folds -1``) is a usage error naming the
    flag and the valid range — argparse's one line and exit status 2, never a traceback
    from deep inside the library.
    """
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use a whole number "
                                             f"{_bounds(lo, hi)}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value} is out of range; use a whole number {_bounds(lo, hi)}")
        return value
    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def float_range(lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite number within [lo, hi] (either bound optional)."""
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number; use a number {_bounds(lo, hi)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; use a number {_bounds(lo, hi)}")
        return value
    parse.__name__ = "number"
    return parse
