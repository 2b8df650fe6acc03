"""Exceptions for mistakes a user can fix.

The CLI turns every :class:`MaskclsError` (and ``FileNotFoundError`` / ``FileExistsError``)
into one line ``maskcls: error: …`` and exit status 2; anything else is a bug and keeps
its traceback. Messages name the file or key at fault and say what to do instead.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class MaskclsError(Exception):
    """Base class of errors caused by user input (files, config, command line)."""


class ConfigError(MaskclsError, ValueError):
    """A configuration key or value is invalid."""


class DataError(MaskclsError, ValueError):
    """Input data (dataset folder, CSV, image, prepared directory) is invalid."""


class CheckpointError(MaskclsError, ValueError):
    """A checkpoint or run directory cannot be used."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean X?)' for the closest choices, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
