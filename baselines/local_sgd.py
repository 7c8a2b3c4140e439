"""Local SGD: every rank steps on its own gradients and the models are averaged every H steps
(Stich 2019, "Local SGD converges fast and communicates little"; Lin et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import assign_params, flatten_params, trainable
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class LocalSGDConfig:
    """Knobs of local SGD.

    period: H, steps between parameter averages. Communication is 1/H of all-reduce SGD's
        (same payload, H times rarer); the price is the models drifting apart between averages,
        which grows with H, the learning rate and how different the ranks' data are. H = 1 is
        parameter-averaging SGD, equal to all-reduce SGD for plain SGD without momentum.
    buffers: also average floating-point buffers (BatchNorm running statistics) at each
        average. Off by default: most implementations average only the parameters.
    """

    period: int = 8
    buffers: bool = False

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError(f"period must be >= 1, got {self.period}")


@ALGORITHMS.register("local_sgd", config=LocalSGDConfig, paper="baseline")
class LocalSGD(Algorithm):
    """Local steps, with all ranks' parameters averaged every H steps (algorithm.period)."""

    def __init__(self, config: LocalSGDConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.params = trainable(self.model.parameters())
        self.buffers = [b for b in self.model.buffers() if b.is_floating_point()]
        self.averaged = 0.0

    def mix_parameters(self, step: int) -> None:
        self.averaged = float((step + 1) % self.config.period == 0)
        if not self.averaged:
            return
        flat = self.transport.all_reduce(flatten_params(self.params), op="mean")
        assign_params(self.params, flat)
        if self.config.buffers:
            for buf in self.buffers:
                self.transport.all_reduce(buf, op="mean")

    def step_metrics(self) -> dict[str, float]:
        return {"averaged": self.averaged}
