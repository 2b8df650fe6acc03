"""What the command modules share: subparser creation, config arguments, checked numeric types, the check that a
prepared directory is one."""
from __future__ import annotations

import argparse
import functools
import math
import shlex
import textwrap
from pathlib import Path
from typing import Callable, NoReturn

from ..errors import ConfigError


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


def check_prepared_dir(path: str, command: str) -> None:
    """Refuse, before anything loads, a folder given where ``maskcls COMMAND`` reads a prepared directory: a raw
    dataset (a competition folder or a CSV) with the command that prepares it into a new folder beside it, never
    into the dataset; any other existing folder without prepare.json (a run directory, say) saying what belongs
    there. A missing path is left to :func:`~maskcls.prep.prepared.load_prepared`."""
    from ..prep.sources import detect_kind
    p = Path(path)
    if not p.exists() or (p / "prepare.json").is_file():
        return
    try:
        kind = detect_kind(p)
    except FileNotFoundError:
        kind = None
    if kind is None:
        if p.is_dir() and not (p / "manifest.csv").is_file():
            raise ConfigError(f"{path} is not a prepared directory (no prepare.json); maskcls {command} reads the "
                              "folder that `maskcls prepare SOURCE --out NEW_FOLDER` writes")
        return
    out = shlex.quote(str(suggested_prepared_dir(p)))
    what = "a competition folder (train/, eval/)" if kind == "competition" else "a CSV manifest"
    raise ConfigError(f"{path} is {what}, not a prepared directory; prepare it into a new folder first: "
                      f"maskcls prepare {shlex.quote(path)} --out {out}, then maskcls {command} {out}")


def suggested_prepared_dir(source: Path) -> Path:
    """A new folder beside the dataset ``source`` for its prepared directory: ``data`` → ``data-prepared``,
    ``my.csv`` → ``my-prepared`` (``-2``, ``-3`` … when taken); never inside the dataset."""
    from ..fsutil import free_name
    name = source.stem if source.is_file() else source.name
    if name in ("", ".", ".."):
        source = source.resolve()
        name = source.name
    return free_name(source.with_name(f"{name}-prepared"))


def view_words(tta: str, precision: str | None) -> str:
    """How a score or prediction was computed, in its printed line: ``flip TTA, fp32`` (the report's rule,
    :func:`maskcls.report.run_data.view_words`, imported when first used: the CLI starts without pandas)."""
    from ..report.run_data import view_words as words
    return words(tta, precision)
