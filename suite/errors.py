"""The suite's errors for bad input, and the "did you mean" hint their messages share.

On the ground floor (the standard library only), so every module that checks input, the network
grammar and the registry included, raises the same errors without importing the config.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad configuration input; the message names the problem and the valid choices."""


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where we looked and how to get them."""

    def __str__(self) -> str:
        return self.args[0]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``name``, or ""."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
