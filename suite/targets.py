"""Targets: what ``suite run TARGET`` and a recipe's rows name (an algorithm or a preset of
one), and the papers ``suite reproduce``/``report`` take; checked, then resolved to a config.

The checks read :mod:`suite.names`, the plain table of names, so a typo exits 2 at once without
importing torch; only :func:`resolve_target` reaches the registry.
"""

from __future__ import annotations

from suite import names
from suite.config import RunConfig, apply_overrides, make_component
from suite.errors import ConfigError, did_you_mean
from suite.registry import ALGORITHMS


def check_target(target: str) -> None:
    """An unknown algorithm (or preset) name is bad input."""
    if target not in names.ALGORITHMS:
        hint = "; recipes run with `suite reproduce PAPER`" if target in names.RECIPES else ""
        raise ConfigError(
            f"unknown target {target!r}{did_you_mean(target, names.ALGORITHMS)}; valid "
            f"choices: {', '.join(names.ALGORITHMS)}{hint}"
        )


def check_paper(target: str) -> None:
    """An unknown paper (of ``PAPER`` or ``PAPER/LABEL``) is bad input, checked against
    suite.names and the folders of reproduce/ (a paper is a folder there, so one added since
    the table was generated is known too); a bad LABEL is left to suite.reproduce."""
    paper = target.split("/", 1)[0]
    known = sorted({*names.PAPERS, *names.paper_folders()})
    if paper not in known:
        raise ConfigError(
            f"no recipes for paper {paper!r}{did_you_mean(paper, known)}; valid "
            f"choices: {', '.join(known)}"
        )


def resolve_target(target: str) -> tuple[RunConfig, str]:
    """(base config, paper) of an algorithm (or preset) name."""
    check_target(target)
    entry = ALGORITHMS.get(target)
    cfg = RunConfig(algorithm=make_component("algorithm", target))
    world = entry.meta.get("world_size")
    if world is not None:
        cfg = apply_overrides(cfg, {"nproc": world})
    return cfg, entry.paper or "baseline"
