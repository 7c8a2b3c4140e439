"""All-reduce SGD: synchronous data-parallel SGD, the reference every method is measured against.

Each step averages the gradients of all ranks with one all-reduce of a flat buffer, then every
rank takes the same optimizer step, so the models stay identical (Goyal et al. 2017; PyTorch DDP
without overlap of communication and backward).
"""

from __future__ import annotations

from dataclasses import dataclass

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import FlatGrads
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class AllReduceSGDConfig:
    """No knobs: it sends the full gradient (4 bytes per parameter) every step."""


@ALGORITHMS.register("allreduce_sgd", config=AllReduceSGDConfig, paper="baseline")
class AllReduceSGD(Algorithm):
    """Gradient averaging through one flat all-reduce per step (synchronous data parallel)."""

    def __init__(self, config: AllReduceSGDConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.grads = FlatGrads(self.model.parameters())

    def reduce_gradients(self, step: int) -> None:
        self.transport.all_reduce(self.grads.buffer(), op="mean")
