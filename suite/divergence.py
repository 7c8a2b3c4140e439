"""Non-finite numbers: a run that diverged, and JSON that stays valid.

:class:`Diverged` is what a rank raises when its loss or parameters stop being finite (the
training loop checks every step); the launcher carries it to ``suite run``, which ends the run
FAILED with ``suite.diverged`` tags. :func:`json_safe` turns NaN and infinities into ``null``
so that every JSON the suite writes (the ``--json`` line, ``summary.json``) parses anywhere.

Kept free of heavy imports: the CLI, the launcher and the loop all import it.
"""

from __future__ import annotations

import math
from typing import Any


class Diverged(RuntimeError):
    """Rank ``rank`` saw a non-finite ``what`` ("loss" or "parameters") at step ``step``
    (0-based, the step index MLflow's per-step metrics use). Picklable, so the launcher can
    hand it back from the rank that raised it."""

    def __init__(self, step: int, rank: int, what: str) -> None:
        super().__init__(step, rank, what)  # BaseException pickles its args
        self.step, self.rank, self.what = step, rank, what

    def __str__(self) -> str:
        return f"diverged at step {self.step} on rank {self.rank} (non-finite {self.what})"


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists, tuples) replaced by None.

    JSON has no NaN or Infinity; ``json.dumps`` would write them as bare literals that strict
    parsers (and most languages other than Python) reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
