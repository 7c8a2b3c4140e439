"""DyBW: consensus SGD with a dynamic number of backup workers per rank. STAND-IN for the rule.

Xiong, Yan, Singh, Li, "Straggler-Resilient Distributed Machine Learning with Dynamic Backup
Workers", arXiv 2102.06280. Only the abstract was available (../shared/papers/dybw.md): each
worker waits only for its fastest neighbours and a fully distributed rule picks its number of
backup workers b_i dynamically. The paper's rule was not available to us; the rule below is OURS,
adapting DBW (Xu, Neglia, Sebastianelli, arXiv 2004.14696: the parameter server picks b to
maximise the expected progress per unit time) to neighbour sets:

- each rank keeps, from its own observations only, a window of its last ``window`` iterations:
  its own compute time c and each in-peer's arrival offset (arrival of the peer's model of that
  iteration minus the rank's own start of it; in real time a model not arrived yet counts as
  arrived now, a lower bound that grows until it does);
- for each candidate n in 1..deg it estimates E[T(n)] = mean over the window of
  max(c, n-th smallest offset), and picks the n that maximises gain(n) / E[T(n)] with
  gain(n) = 1 - consensus_weight / (n + 1) (averaging n + 1 models shrinks the disagreement by
  1 / (n + 1)); ties go to the larger n; b_i = deg - n. With no observation yet, b_i = 0;
- connectivity: every edge j -> i must be used (fresh or late) at least once in every
  ``connect_every`` consecutive iterations; an edge that was not used in the last
  connect_every - 1 iterations is required (waited for) at the next one. With ``late="use"``
  (the default here) a straggler's late model counts as a use, so the forcing rarely triggers
  while the straggler's messages are at most ``max_staleness`` iterations old.

On the virtual clock every rank computes every rank's rule from the clock's iteration (only
rank-local quantities enter each rank's rule), which keeps the clock deterministic; in real time
each rank runs only its own. Everything else (clocks, late messages, accounting, metrics) is
baselines.consensus_backup.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from baselines.consensus_backup import ConsensusBackup, ConsensusBackupConfig, Observation
from suite.algorithms.base import Context
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class DyBWConfig(ConsensusBackupConfig):
    """Knobs of DyBW (stand-in rule); the rest as consensus_backup.

    backups: unused (b is chosen per rank and iteration).
    late: "use" by default (a late model counts as a use of its edge).
    window: iterations of a rank's own observations its estimates use.
    consensus_weight: in [0, 1]; gain(n) = 1 - consensus_weight / (n + 1). 0: only time counts
        (wait for one neighbour); 1: averaging over more neighbours is worth more.
    connect_every [B]: every edge is used at least once every B iterations.
    """

    backups: int = 0
    late: Literal["drop", "use"] = "use"
    window: int = 20
    consensus_weight: float = 1.0
    connect_every: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 0.0 <= self.consensus_weight <= 1.0:
            raise ValueError(f"consensus_weight must be in [0, 1], got {self.consensus_weight}")
        if self.connect_every < 1:
            raise ValueError(f"connect_every must be >= 1, got {self.connect_every}")


class DyBWRule:
    """The stand-in rule for the ranks in ``ranks`` (pure: no communication)."""

    def __init__(
        self,
        in_peers: list[list[int]],
        ranks: list[int],
        window: int = 20,
        consensus_weight: float = 1.0,
        connect_every: int = 10,
        clock: Literal["virtual", "real"] = "virtual",
    ) -> None:
        self.in_peers, self.ranks = in_peers, list(ranks)
        self.weight, self.connect_every, self.real = (
            consensus_weight,
            connect_every,
            clock == "real",
        )
        self.windows = {i: deque(maxlen=window) for i in self.ranks}
        self.last_use = {i: dict.fromkeys(in_peers[i], -1) for i in self.ranks}
        self.current = [0] * len(in_peers)

    def choose(self, rank: int) -> int:
        """b of ``rank`` from its window (0 while it is empty)."""
        deg, window = len(self.in_peers[rank]), self.windows[rank]
        if deg == 0 or not window:
            return 0
        now = time.perf_counter() if self.real else math.inf
        totals = [0.0] * deg
        for obs in window:
            c = obs.compute_end - obs.start
            offsets = sorted(min(a, now) - obs.start for a in obs.arrivals.values())
            for n in range(1, deg + 1):
                totals[n - 1] += max(c, offsets[n - 1])
        best, best_score = deg, -math.inf
        for n in range(1, deg + 1):
            mean = totals[n - 1] / len(window)
            gain = 1.0 - self.weight / (n + 1)
            score = gain / mean if mean > 0 else math.inf
            if score >= best_score:
                best, best_score = n, score
        return deg - best

    def backups(self) -> list[int]:
        for i in self.ranks:
            self.current[i] = self.choose(i)
        return list(self.current)

    def required(self, step: int) -> list[set[int]]:
        out: list[set[int]] = [set() for _ in self.in_peers]
        for i in self.ranks:
            out[i] = {j for j, t in self.last_use[i].items() if step - t >= self.connect_every}
        return out

    def observe(self, obs: list[Observation]) -> None:
        for o in obs:
            if o.rank not in self.windows:
                continue
            self.windows[o.rank].append(o)
            for j in o.used:
                self.last_use[o.rank][j] = o.t


@ALGORITHMS.register(
    "dybw",
    config=DyBWConfig,
    paper="dybw",
    stand_in=True,
    description="stand-in: the DyBW paper's rule was not available; per-rank dynamic b maximising "
    "expected consensus progress per unit time (DBW adapted to neighbour sets), every edge used "
    "once every connect_every iterations",
)
class DyBW(ConsensusBackup):
    """Consensus SGD with a dynamic b per rank: STAND-IN rule (DBW adapted), see the module."""

    per_rank_b_metrics = True

    def __init__(self, config: DyBWConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        ranks = [self.rank] if self.real else list(range(self.world_size))
        self.rule = DyBWRule(self.in_peers, ranks, config.window, config.consensus_weight,
                             config.connect_every, config.clock)  # fmt: skip

    def backups(self, step: int) -> list[int]:
        return self.rule.backups()

    def required(self, step: int) -> list[set[int]] | None:
        return self.rule.required(step)

    def observe(self, obs: list[Observation]) -> None:
        self.rule.observe(obs)
