"""Single-process SGD: the reference the distributed methods must agree with."""

from __future__ import annotations

from dataclasses import dataclass

from suite.algorithms.base import Algorithm
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class SingleConfig:
    """No knobs: one process, no communication. Give it the union batch (nproc x batch_size) to
    compare against a data-parallel run."""


@ALGORITHMS.register("single", config=SingleConfig, paper="baseline", world_size=1)
class Single(Algorithm):
    """One process, plain local training (the reference for the distributed methods)."""
