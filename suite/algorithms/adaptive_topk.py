"""Adaptive Top-K: a per-step K under a total communication budget. STAND-IN for the paper's rule.

Ruan, Yan, Xiao, Song, Xu, "Adaptive Top-K in SGD for Communication-Efficient Distributed
Learning", arXiv 2210.13532 (GLOBECOM 2023; IEEE JSTSP 18(3), 2024). Only the abstract was
available (../shared/papers/adaptive_topk.md): K_t is chosen to minimise a convergence bound
under a communication budget, and depends on the gradient norm and the budget. The rule below is
OUR derivation of such a choice, not the paper's; every knob of it (the K bounds, the smoothing)
is ours too. reproduce/adaptive_topk/NOTES.md carries the same derivation and the measurements.

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

With error feedback the bound's cost is sum_t ||e_{t+1}||^2 = sum_t (||v_t||^2 - E^v_t(k_t)),
v = g + residual: the same water-filling on v (NOTES.md, "Error feedback").

Online (the future gradients are unknown), every rank, every step, after choosing this K:

1. it updates moving averages (factor ``smoothing``) of log(eta_t ||g_t||^2) and of its fall
   per step r;
2. it forecasts step s ahead as this step's weights eta v_i^2 times m(s) = c + (1 - c)
   exp(-r tau (1 - exp(-s / tau))), tau = 1 / (1 - smoothing): the trend extrapolated as far
   ahead as its average looks back, the error-feedback residual's share c carried as it is;
3. it finds the level at which that forecast spends the budget left over the steps left
   (:func:`water_fill`) and proposes its count above the level for the next step;
4. the proposal rides in its all-gather message (one float32, counted; no round of its own) and
   the next K is the mean of the proposals, the same on every rank;
5. a pacer clips K into [K_min, K_max] and into what the remaining budget allows, so the run
   spends exactly B: K_t >= R_t - K_max (T - t - 1) and K_t <= R_t - K_min (T - t - 1) with
   R_t the budget left; by induction both bounds stay feasible and the last step spends the
   rest. The first step spends K-bar.

K_min = floor(k_min K-bar) (may be 0) and K_max = ceil(k_max K-bar) (ours: 0.1 and 10); the
smoothing is ours (0.97). The earlier rule (a level pulled toward the even pace) lagged on
shrinking gradients and spent less early than late: NOTES.md, "The earlier rule".
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
        if not 0 <= k_min <= k_max:
            raise ValueError(f"need 0 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
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


class LogTrend:
    """Exponential moving averages of a log-scale series and of its fall per step."""

    def __init__(self, smoothing: float) -> None:
        self.beta = smoothing
        self.level: float | None = None
        self.rate = 0.0  # fall per step (negative: growth)
        self.seen = 0

    def update(self, x: float) -> None:
        self.seen += 1
        if self.level is None:
            self.level = x
            return
        new = self.beta * self.level + (1 - self.beta) * x
        self.rate = self.beta * self.rate + (1 - self.beta) * (self.level - new)
        self.level = new

    def horizon(self) -> float:
        """How far ahead the trend is extrapolated: as far as the averages look back (about
        1 / (1 - smoothing) steps), or as far as the series has been seen, if shorter."""
        return min(float(self.seen), 1.0 / (1.0 - self.beta))

    def drop(self) -> float:
        """How far the forecast lets the series fall in all: rate x horizon."""
        return self.rate * self.horizon()


def water_fill(
    weights: Tensor, budget: float, steps: int, drop: float, horizon: float, floor: float = 0.0
) -> float:
    """Entries the next step should keep if the next ``steps`` steps spend ``budget`` entries
    by water-filling, each step's weights forecast as ``weights`` x m(s) for s = 1..steps with
    m(s) = floor + (1 - floor) exp(-drop (1 - exp(-s / horizon))): the part of the weights that
    follows the trend falls at drop / horizon per step (in log) at first and levels off, at most
    ``drop`` lower; the ``floor`` share (the error-feedback residual) is carried as it is.
    Returns the count of ``weights`` at or above the level lambda at which the forecast spends
    ``budget``: the water-filling K."""
    n = weights.numel()
    if steps <= 0 or n == 0:
        return 0.0
    if budget >= n * steps:
        return float(n)
    logw = weights.double().clamp_min(1e-300).log().sort().values
    s = torch.arange(1, steps + 1, dtype=torch.float64)
    if steps > 128:  # a grid of the horizon (the forecast is smooth in s): less work a step
        s = torch.linspace(1, steps, 128, dtype=torch.float64)

    def log_m(s: Tensor) -> Tensor:
        trend = torch.exp(-drop * (1 - torch.exp(-s / max(horizon, 1.0))))
        return (floor + (1 - floor) * trend).clamp_min(1e-300).log()

    shift = -log_m(s)  # a weight w counts at step s if log w + log m(s) >= log lambda
    per_point = steps / s.numel()

    def spend(levels: Tensor) -> Tensor:  # entries the forecast spends at each level
        counts = n - torch.searchsorted(logw, levels[:, None] + shift[None, :])
        return counts.sum(1).double() * per_point

    lo = float(logw[0]) - float(shift.abs().max()) - 1.0  # spends n every step: over budget
    hi = float(logw[-1]) + float(shift.abs().max()) + 1.0  # spends nothing
    for _ in range(4):  # a grid of 64 levels, refined where the spend crosses the budget
        grid = torch.linspace(lo, hi, 64, dtype=torch.float64)
        over = int((spend(grid) > budget).sum())  # spend falls as the level rises
        lo, hi = float(grid[max(over - 1, 0)]), float(grid[min(over, 63)])
    first = hi - log_m(torch.ones(1, dtype=torch.float64))  # the next step's threshold
    return float(n - torch.searchsorted(logw, first))


@dataclass(frozen=True)
class AdaptiveTopKConfig(TopKSGDConfig):
    """Knobs of adaptive Top-K (the stand-in: none of these is from the paper).

    density [rho]: the budget, as in topk_sgd: the run sends floor(rho d) T entries per rank in
        all, exactly as many as fixed-K Top-K at the same density, spread unevenly.
    error_feedback: as in topk_sgd (the paper compares with and without).
    k_min, k_max: K_t stays within [floor(k_min K-bar), ceil(k_max K-bar)] (K-bar =
        floor(rho d)); K_min may be 0 (a step may send no entries), so a small K-bar still
        leaves the rule room. A wide range lets the budget follow the gradients; a narrow one
        approaches fixed K.
    smoothing: the factor of the moving averages that measure the trend of the gradient
        energy (0.97: about the last 33 steps), which the forecast extrapolates as far ahead.
    """

    k_min: float = 0.1
    k_max: float = 10.0
    smoothing: float = 0.97

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.k_min <= 1.0 <= self.k_max:
            raise ValueError(f"need 0 <= k_min <= 1 <= k_max, got {self.k_min}, {self.k_max}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")


@ALGORITHMS.register(
    "adaptive_topk", config=AdaptiveTopKConfig, paper="adaptive_topk", stand_in=True
)
class AdaptiveTopK(TopKSGD):
    """Adaptive Top-K: per-step K by water-filling under a total budget (stand-in rule)."""

    def __init__(self, config: AdaptiveTopKConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        k_bar = self.k_mean
        k_min = math.floor(config.k_min * k_bar)
        k_max = min(self.d, max(1, math.ceil(config.k_max * k_bar)))
        self.pacer = BudgetPacer(self.budget, ctx.total_steps, k_min, k_max)
        self.trend = LogTrend(config.smoothing)
        self.wanted = float(k_bar)  # agreed at the previous step; the first step spends K-bar
        self.proposal = 0.0  # this rank's K for the next step

    def choose_k(self, v: Tensor, step: int) -> int:
        return self.pacer.take(self.wanted)

    def side_message(self, v: Tensor) -> Tensor:
        """This rank's water-filling K for the next step, from this step's v (one float32,
        carried in the all-gather's message)."""
        lr = self.optimizer.param_groups[0]["lr"]
        g = self.grads.buffer()
        self.trend.update(math.log(max(lr * float(g.pow(2).sum()), 1e-300)))  # g's, not v's
        carried = 0.0  # the residual's share of ||v||^2: it stays until sent, whatever g does
        if self.residual is not None:
            carried = float((v - g).pow(2).sum() / v.pow(2).sum().clamp_min(1e-30))
        left = self.pacer.steps - self.pacer.step
        drop, horizon = self.trend.drop(), self.trend.horizon()
        self.proposal = water_fill(v.pow(2), self.pacer.remaining, left, drop, horizon, carried)
        return torch.tensor([self.proposal], dtype=torch.float32, device=v.device)

    def side_received(self, sides: list[Tensor]) -> None:
        self.wanted = float(torch.cat(sides).mean())

    def step_metrics(self) -> dict[str, float]:
        return {
            **super().step_metrics(),
            "k_wanted": self.wanted,
            "forecast_drop": self.trend.drop() / math.log(10),  # in decades of energy
        }
