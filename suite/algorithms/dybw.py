"""DyBW: consensus SGD with a dynamic number of backup workers per rank. STAND-IN for the rule.

Xiong, Yan, Singh, Li, "Straggler-Resilient Distributed Machine Learning with Dynamic Backup
Workers", arXiv 2102.06280. Only the abstract was available (reproduce/dybw/NOTES.md): each
worker waits only for its fastest neighbours and a fully distributed rule picks its number of
backup workers b_i dynamically. The paper's rule was not available to us; the rule below is OURS,
DBW's (Xu, Neglia, Sebastianelli, arXiv 2004.14696: the parameter server waits for as many
gradients as maximise the expected loss decrease per unit time) carried over to neighbour sets;
its derivation is in reproduce/dybw/NOTES.md#the-stand-in-rule:

- progress of rank i when it averages its model with n neighbours' (descent lemma with
  L = 1/lr, the largest step with guaranteed descent):
      gain(n) = lr/2 (G - S / (n + 1)) + D / (4 lr) * n / (n + 1)
  G ~ ||grad f||^2 and S ~ the gradient noise, from exponential averages (``beta``) of the
  rank's own mini-batch gradients; D ~ the mean squared distance between its model and the
  models it averaged with (the disagreement that averaging n + 1 models shrinks by n / (n + 1));
- time: from the last ``window`` iterations the rank saw (its compute time and the sorted
  arrival offsets of its neighbours' models: empirical order statistics), it picks a deadline
  theta maximising  E[gain(n(theta))] / E[T(theta)],  where n(theta) is how many models arrived
  by max(compute, theta) and T(theta) when it stops (the deadline, all arrived, or the first
  arrival, never before its own compute ends). At an iteration it takes every model that
  arrived by the deadline: b_i rises exactly at the iterations when a neighbour is slow. No
  observation or estimate yet, or no positive gain: full wait;
- connectivity without forced waits: a neighbour's model that arrived after the deadline is
  mixed in at a later iteration as that neighbour's newest arrived model (``late="use"``, at
  most ``max_staleness`` iterations old);
- skip ahead (``skip_ahead``): a rank so far behind that a neighbour's iteration-t model reached
  it before it started t skips that iteration: it takes the mean of the newer models plus its
  own last update, sends nothing and computes nothing, rather than mixing its stale model in.

On the virtual clock every rank computes every rank's rule (each rank's (lr, G, S, D) is shared
by an all-gather of four numbers every ``share_every`` steps on the harness channel, so not
counted as algorithm traffic),
which keeps the clock deterministic; in real time each rank runs only its own. Everything else
(clocks, late messages, accounting, metrics) is baselines.consensus_backup.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from baselines.consensus_backup import ConsensusBackup, ConsensusBackupConfig, Observation
from suite.algorithms.base import Context
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class DyBWConfig(ConsensusBackupConfig):
    """Knobs of DyBW (stand-in rule); the rest as consensus_backup.

    backups: unused (b is chosen per rank and iteration).
    late: "use" by default (keeps every edge in use without forcing waits).
    window: iterations of a rank's own observations its time estimates use.
    beta: weight of the past in the exponential averages of G, S and D (in [0, 1)).
    skip_ahead: a rank that falls behind skips ahead (virtual clock only).
    share_every: virtual clock: the ranks' estimates are all-gathered every ``share_every``
        steps and every rule uses the last ones shared (they are slow exponential averages;
        a collective every step would double the lock-step syncs of a run).
    """

    backups: int = 0
    late: Literal["drop", "use"] = "use"
    window: int = 20
    beta: float = 0.9
    skip_ahead: bool = True
    share_every: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        if self.share_every < 1:
            raise ValueError(f"share_every must be >= 1, got {self.share_every}")


def progress(n: int, lr: float, grad_sq: float, noise: float, disagreement: float) -> float:
    """Expected progress of one iteration that averages with ``n`` neighbours (NOTES.md)."""
    return lr / 2 * (grad_sq - noise / (n + 1)) + disagreement / (4 * lr) * n / (n + 1)


class DyBWRule:
    """The stand-in rule for the ranks in ``ranks`` (pure: no communication)."""

    def __init__(
        self,
        in_peers: list[list[int]],
        ranks: list[int],
        window: int = 20,
        clock: Literal["virtual", "real"] = "virtual",
    ) -> None:
        self.in_peers, self.ranks, self.real = in_peers, list(ranks), clock == "real"
        self.windows = {i: deque(maxlen=window) for i in self.ranks}
        # per rank: (lr, G, S, D); None until the rank has averaged once
        self.estimates: dict[int, tuple[float, float, float, float] | None] = dict.fromkeys(
            self.ranks
        )
        self.current = [math.inf] * len(in_peers)

    def update(self, rank: int, lr: float, grad_sq: float, noise: float, disagreement: float):
        self.estimates[rank] = (lr, grad_sq, noise, disagreement)

    def deadline(self, rank: int) -> float:
        """Seconds after its start until which ``rank`` takes what arrived (inf: wait for
        all)."""
        deg, window, est = len(self.in_peers[rank]), self.windows[rank], self.estimates[rank]
        if deg == 0 or not window or est is None:
            return math.inf
        gains = torch.tensor([0.0] + [progress(n, *est) for n in range(1, deg + 1)],
                             dtype=torch.float64)  # fmt: skip
        if float(gains.max()) <= 0:
            return math.inf  # averaging is all the progress there is: wait for all
        c = torch.tensor([o.compute_end - o.start for o in window], dtype=torch.float64)
        a = torch.tensor(
            [sorted(x - o.start for x in o.arrivals.values()) for o in window], dtype=torch.float64
        )  # fmt: skip  (inf: never arrived)
        theta = torch.cat([c, a.flatten()])
        theta = torch.unique(theta[torch.isfinite(theta)])  # candidate deadlines, ascending
        # when each observed iteration would have stopped under each deadline [K, W]
        last = torch.minimum(theta[:, None], a[None, :, -1])
        stop = torch.maximum(torch.maximum(c, a[:, 0])[None, :], last)
        n = (a[None] <= stop[..., None]).sum(-1)
        rate = gains[n].mean(1) / stop.mean(1)
        best = int(torch.nonzero(rate >= rate.max() - 1e-12 * abs(float(rate.max())))[-1])
        return float(theta[best])  # ties: the later deadline (more averaging)

    def deadlines(self) -> list[float]:
        for i in self.ranks:
            self.current[i] = self.deadline(i)
        return list(self.current)

    def backups(self) -> list[int]:
        """No fixed b: every rank waits for all but what misses its deadline."""
        return [0] * len(self.in_peers)

    def required(self, step: int) -> None:
        """No forced waits: connectivity comes from late models (module docstring)."""
        return None

    def observe(self, obs: list[Observation]) -> None:
        for o in obs:
            if o.rank in self.windows and o.compute_end > o.start:  # a skipped one says nothing
                self.windows[o.rank].append(o)


@ALGORITHMS.register(
    "dybw",
    config=DyBWConfig,
    paper="dybw",
    stand_in=True,
    description="stand-in: the DyBW paper's rule was not available; per-rank deadline for "
    "neighbours' models maximising expected progress per unit time (DBW adapted to neighbour "
    "sets), late models keep every edge in use, a rank that falls behind skips ahead",
)
class DyBW(ConsensusBackup):
    """Consensus SGD with a dynamic b per rank: STAND-IN rule (DBW adapted), see the module."""

    per_rank_b_metrics = True

    def __init__(self, config: DyBWConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        ranks = [self.rank] if self.real else list(range(self.world_size))
        self.rule = DyBWRule(self.in_peers, ranks, config.window, config.clock)
        self.grad_mean: Tensor | None = None  # exponential averages of the gradient and its
        self.grad_sq = 0.0  # squared norm (G, S) and of the disagreement (D)
        self.disagreement = 0.0
        self.averaged = False

    def _estimate(self) -> list[float]:
        """This rank's (lr, G, S, D) from its gradient of this step (before any wait)."""
        beta = self.config.beta
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                       for p in self.params]).double()  # fmt: skip
        if self.grad_mean is None:
            self.grad_mean, self.grad_sq = g.clone(), float(g @ g)
        else:
            self.grad_mean.mul_(beta).add_(g, alpha=1 - beta)
            self.grad_sq = beta * self.grad_sq + (1 - beta) * float(g @ g)
        grad = float(self.grad_mean @ self.grad_mean)
        lr = float(self.optimizer.param_groups[0]["lr"])
        return [lr, grad, max(self.grad_sq - grad, 0.0), self.disagreement]

    def deadlines(self, step: int) -> list[float]:
        mine = self._estimate()
        if step == 0 or (self.real and not self.averaged):
            return [math.inf] * self.world_size  # no disagreement seen yet: full wait
        if self.real or self.world_size == 1:
            self.rule.update(self.rank, *mine)
        elif (step - 1) % self.config.share_every == 0:  # the same steps on every rank
            with self.transport.harness():
                every = self.transport.all_gather(torch.tensor(mine, dtype=torch.float64))
            for i, est in enumerate(every):
                self.rule.update(i, *est.tolist())
        return self.rule.deadlines()

    def backups(self, step: int) -> list[int]:
        return self.rule.backups()

    def observe(self, obs: list[Observation]) -> None:
        self.rule.observe(obs)

    def _mix(self, mine: Tensor, fresh: list[Tensor], late: list[Tensor]) -> None:
        models = [*fresh, *late]
        if models:  # D: mean squared distance to the models averaged with
            d = sum(float((x - mine).double().square().sum()) for x in models) / len(models)
            beta = self.config.beta if self.averaged else 0.0
            self.disagreement = beta * self.disagreement + (1 - beta) * d
            self.averaged = True
        super()._mix(mine, fresh, late)
