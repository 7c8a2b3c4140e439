"""The suite's errors for bad input, and what their checks share: the "did you mean" hint, and
whether a folder named on the command line can be written.

On the ground floor (the standard library only), so every module that checks input, the network
grammar and the registry included, raises the same errors without importing the config.
"""

from __future__ import annotations

import difflib
import os
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


def unwritable_folder(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a folder this user writes to (its nearest existing ancestor is a
    file, or not writable), or None if it is one or can be made one. For flags naming an output
    folder, checked before the job starts rather than found at its first write."""
    ancestor = os.path.abspath(path)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        return f"{ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable by this user"
    return None
