"""What the command modules share: subparser creation, config arguments."""
from __future__ import annotations

import argparse
import textwrap


def sub(subs, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=help, description=help, epilog="examples:\n" + textwrap.indent(examples, "  "),
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config file (see configs/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=3 (repeatable)")
