"""Adaptive Top-K: a per-step K under a total communication budget. STAND-IN for the paper's rule.

Ruan, Yan, Xiao, Song, Xu, "Adaptive Top-K in SGD for Communication-Efficient Distributed
Learning", arXiv 2210.13532 (GLOBECOM 2023; IEEE JSTSP 18(3), 2024). Only the abstract was
available (../shared/papers/adaptive_topk.md): K_t is chosen to minimise a convergence bound
under a communication budget, and depends on the gradient norm and the budget. The rule below is
OUR derivation of such a choice, not the paper's; every knob of it (the K bounds, the gain) is
ours too. reproduce/adaptive_topk/README.md carries the same derivation.

Derivation
----------
For L-smooth f and SGD with a sparsified step x_{t+1} = x_t - eta_t TopK_{k_t}(g_t), the usual
descent argument gives

    f(x_{t+1}) <= f(x_t) - eta_t <g_t, TopK(g_t)> + (L eta_t^2 / 2) ||TopK(g_t)||^2,

and, since <g, TopK(g)> = ||TopK(g)||^2 = E_t(k) (the energy of the k largest entries), the
bound on sum_t ||grad f||^2 after T steps grows with the *lost energy*

    sum_t eta_t (||g_t||^2 - E_t(k_t)),      subject to   sum_t k_t <= B = rho d T.

E_t is concave in k (the entries are taken largest first) with slope E_t'(k) = g_(k)^2, the
k-th largest squared entry. The Lagrangian sum_t eta_t (||g_t||^2 - E_t(k_t)) + lambda
(sum_t k_t - B) is minimised where eta_t E_t'(k_t) = lambda: *water-filling*. Every step keeps
exactly the entries with eta_t g_i^2 >= lambda, one water level lambda for the whole run. Steps
whose gradient is large, or whose energy is spread over many entries, get a larger K.

Online (the future gradients are unknown), on every rank alike:

1. the first step sets lambda so that it would keep the mean K-bar = floor(rho d) entries
   (each rank's candidate, averaged: one all-reduced scalar, counted);
2. each step every rank counts its entries with eta_t v_i^2 >= lambda (v: the gradient, plus
   the residual with error feedback) and the ranks average the counts (one all-reduced
   scalar, counted): that is the wanted K;
3. a pacer clips it into [K_min, K_max] and into what the remaining budget allows, so the run
   spends exactly B: K_t >= R_t - K_max (T - t - 1) and K_t <= R_t - K_min (T - t - 1) with
   R_t the budget left; by induction both bounds stay feasible and the last step spends the
   rest;
4. lambda follows the pace: log lambda += gain * log(wanted / (R_t / (T - t))), so a run whose
   gradients shrink lowers the level instead of leaving budget unspent.

K_min = k_min K-bar and K_max = k_max K-bar (ours: 0.1 and 10); the gain is ours (0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from baselines.topk_sgd import TopKSGD, TopKSGDConfig
from suite.algorithms.base import Context
from suite.registry import ALGORITHMS


class BudgetPacer:
    """Per-step K within [k_min, k_max] that spends a total budget exactly over ``steps`` steps
    and never more (pure: no communication; every rank holds an identical one)."""

    def __init__(self, budget: int, steps: int, k_min: int, k_max: int) -> None:
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if not k_min * steps <= budget <= k_max * steps:
            raise ValueError(
                f"budget {budget} cannot be spent in {steps} steps of {k_min} to {k_max} entries"
            )
        self.budget, self.steps, self.k_min, self.k_max = budget, steps, k_min, k_max
        self.spent = 0
        self.step = 0

    @property
    def remaining(self) -> int:
        return self.budget - self.spent

    def bounds(self) -> tuple[int, int]:
        """The K this step may take so that the rest of the run can still spend exactly the
        remaining budget within [k_min, k_max] per step."""
        left = self.steps - self.step - 1  # steps after this one
        low = max(self.k_min, self.remaining - self.k_max * left)
        high = min(self.k_max, self.remaining - self.k_min * left)
        return low, high

    def pace(self) -> float:
        """The even share of what is left: remaining / steps left (this one included)."""
        return self.remaining / max(self.steps - self.step, 1)

    def take(self, wanted: float) -> int:
        """Spend K = ``wanted`` rounded and clipped to :meth:`bounds`; return it."""
        if self.step >= self.steps:
            raise RuntimeError(f"the budget covers {self.steps} steps; step {self.step} asked")
        low, high = self.bounds()
        k = int(min(max(round(wanted), low), high))
        self.spent += k
        self.step += 1
        return k


@dataclass(frozen=True)
class AdaptiveTopKConfig(TopKSGDConfig):
    """Knobs of adaptive Top-K (the stand-in: none of these is from the paper).

    density [rho]: the budget, as in topk_sgd: the run sends floor(rho d) T entries per rank in
        all, exactly as many as fixed-K Top-K at the same density, spread unevenly.
    error_feedback: as in topk_sgd (the paper compares with and without).
    k_min, k_max: K_t stays within [k_min K-bar, k_max K-bar] (K-bar = floor(rho d)).
        A wide range lets the budget follow the gradients; a narrow one approaches fixed K.
    gain: how fast the water level follows the budget's pace (0 keeps the first step's level
        for the whole run, so only the pacer's bounds keep the spending on budget).
    """

    k_min: float = 0.1
    k_max: float = 10.0
    gain: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.k_min <= 1.0 <= self.k_max:
            raise ValueError(f"need 0 < k_min <= 1 <= k_max, got {self.k_min}, {self.k_max}")
        if self.gain < 0:
            raise ValueError(f"gain must be >= 0, got {self.gain}")


@ALGORITHMS.register(
    "adaptive_topk", config=AdaptiveTopKConfig, paper="adaptive_topk", stand_in=True
)
class AdaptiveTopK(TopKSGD):
    """Adaptive Top-K: per-step K by water-filling under a total budget (stand-in rule)."""

    def __init__(self, config: AdaptiveTopKConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        k_bar = self.k_mean
        k_min = max(1, math.floor(config.k_min * k_bar))
        k_max = min(self.d, math.ceil(config.k_max * k_bar))
        self.pacer = BudgetPacer(self.budget, ctx.total_steps, k_min, k_max)
        self.log_level: float | None = None  # log lambda, the same on every rank
        self.wanted = 0.0

    def _agree(self, value: float, device: torch.device) -> float:
        """The mean over ranks of one scalar (algorithm traffic: 4 bytes per rank)."""
        t = torch.tensor([value], dtype=torch.float32, device=device)
        return float(self.transport.all_reduce(t, op="mean"))

    def choose_k(self, v: Tensor, step: int) -> int:
        lr = self.optimizer.param_groups[0]["lr"]
        weight = v.pow(2).mul_(lr)  # eta_t v_i^2: the slope of the lost energy
        if self.log_level is None:  # the level that would keep K-bar entries now
            kth = weight.kthvalue(weight.numel() - self.k_mean + 1).values
            self.log_level = self._agree(math.log(max(float(kth), 1e-38)), v.device)
        count = float((weight >= math.exp(self.log_level)).sum())
        self.wanted = self._agree(count, v.device)
        pace = self.pacer.pace()
        k = self.pacer.take(self.wanted)
        ratio = max(self.wanted, 0.5) / pace
        self.log_level += self.config.gain * max(-2.0, min(2.0, math.log(ratio)))
        return k

    def step_metrics(self) -> dict[str, float]:
        return {
            **super().step_metrics(),
            "k_wanted": self.wanted,
            "log10_level": (self.log_level or 0.0) / math.log(10),
        }
