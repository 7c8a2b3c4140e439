"""SAEF: step-ahead error feedback, with error averaging, for compressed training with a server.

Xu, Huo, Huang, "Step-Ahead Error Feedback for Distributed Training with Compressed Gradient",
AAAI 2021, arXiv 2008.05823. Semantics follow the authors' code (github.com/anxuthu/SAEF,
``--method r-Sign`` / ``r-TopK``), as read for ../shared/papers/saef.md.

Local error feedback (baselines.ef_sgd) computes the gradient at the common model x_t, while
its analysis tracks x~_t = x_t - mean_j e_j - s: the gradient mismatch. SAEF removes it:

1. error reset (period R): e_i <- 0 when (t + 1) mod R == 0;
2. error averaging, EA (period P): e_i <- mean_j e_j when (t + 1) mod P == 0 (one all-reduce,
   algorithm traffic);
3. step ahead: the gradient of step t is taken at x_t - e_i, and the local optimizer steps from
   there to x'; delta_i = x_t - x' (which is (x_t - e_i - x') + e_i: error feedback on the
   update taken from the step-ahead point);
4. c_i = C(delta_i); e_i <- delta_i - c_i; the server averages, compresses back with its error
   compensation and broadcasts m; x_{t+1} = x_t - m, as in EF.

The mismatch of worker i is then ||(x_t - e_i) - x~_t|| = ||mean_j e_j + s - e_i||, which EA
shrinks further by pulling the e_i together. Between steps the model's parameters hold the
step-ahead point x_t - e_i; evaluation uses x_t (the authors validate x_t), through a shadow
copy of the model, and so does the logged training loss (``train_loss``, like for like with EF
and SGDM, whose gradients are taken at x_t); the loss at the step-ahead point, which the
authors' log prints, is ``algo.train_loss_ahead``.

Start: x_0 is the initial model and e_i = s = 0, so step 0 compresses the first update. The
authors' code starts its record of the last model (``old_p``) at zeros instead, so its step 0
compresses and ships the whole model (reproduce/saef/NOTES.md#start).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from baselines.ef_sgd import EFSGD, EFSGDConfig
from suite.algorithms.base import Context
from suite.algorithms.flat import assign_params, trainable
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class SAEFConfig(EFSGDConfig):
    """Knobs of SAEF (paper symbols in brackets), beside those of ef_sgd.

    average_every [P]: error averaging period. Every P steps the workers' residuals are
        replaced by their mean (an all-reduce of the model size, so 1/P of a dense all-reduce
        per step on top of the compressed traffic). Smaller P keeps the residuals closer and the
        mismatch smaller; the authors use P = 20 with Top-K 5% on ImageNet. 0: never.
    reset_every [R]: error reset period: every R steps the residuals are zeroed (drops what
        the compressor has not sent yet). 0: never (the default; the authors' sample runs do not
        reset).
    """

    average_every: int = 0
    reset_every: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.average_every < 0 or self.reset_every < 0:
            raise ValueError("average_every and reset_every must be >= 0 (0: never)")


@ALGORITHMS.register("saef", config=SAEFConfig, paper="saef")
class SAEF(EFSGD):
    """Step-ahead error feedback: gradients at x_t - e_i, optional error averaging and reset."""

    def __init__(self, config: SAEFConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.shadow: nn.Module | None = None
        self.bytes_ea = 0
        self.averages = 0

    def start_point(self) -> Tensor:
        return self.x - self.error

    def prepare(self, step: int) -> None:
        cfg = self.config
        if cfg.reset_every and (step + 1) % cfg.reset_every == 0:
            self.error.zero_()
        if cfg.average_every and (step + 1) % cfg.average_every == 0:
            sent = self.transport.stats.bytes_sent
            self.transport.all_reduce(self.error, op="mean")
            self.bytes_ea += self.transport.stats.bytes_sent - sent
            self.averages += 1

    def mismatch(self, target_gap: Tensor) -> float:
        return float((target_gap - self.error).norm())

    @torch.no_grad()
    def eval_model(self) -> nn.Module:
        """The model at x_t (its parameters hold x_t - e_i between steps)."""
        if self.shadow is None:
            self.shadow = copy.deepcopy(self.model)
        self.shadow.load_state_dict(self.model.state_dict())
        assign_params(trainable(self.shadow.parameters()), self.x)
        return self.shadow

    def loss_model(self) -> nn.Module:
        """x_t, in the model's mode: the loop logs its loss as train_loss (the loss at the
        step-ahead point, where the gradient is taken, as algo.train_loss_ahead)."""
        return self.eval_model().train(self.model.training)

    def totals(self) -> dict[str, float]:
        return {
            **super().totals(),
            "bytes_ea": float(self.bytes_ea),
            "error_averages": float(self.averages),
        }


ALGORITHMS.preset(
    "saef_ea",
    "saef",
    description="SAEF with error averaging every 20 steps (the authors' ImageNet setting)",
    average_every=20,
)
