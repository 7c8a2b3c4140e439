"""Consensus SGD with backup workers, on the virtual clock of suite.stragglers.

Decentralized (consensus) SGD in which each rank averages only with the neighbours whose models
arrived first: the DyBW paper's setting (Xiong, Yan, Singh, Li, arXiv 2102.06280) with a static
number b of backup workers per rank. Every step, on every rank:

1. the virtual clock (pure and identical on every rank: no communication) advances one
   iteration under the straggler model and says which n_i = deg_i - b neighbours each rank
   waits for, and when each rank's iteration ends;
2. every rank sends its model to all its out-peers (a real worker cannot know whether it will be
   used, so every message is counted) and receives from all its in-peers;
3. x_i <- (x_i + sum of the used neighbours' models) / (1 + n_i): uniform weights over self and
   the used neighbours; the late models are dropped for this iteration;
4. optimizer.step() with the gradient taken at the pre-averaging x_i (D-PSGD's order:
   average, then step with the local gradient; baselines.dpsgd).

With b = 0 and uniform topology weights (ring: 1/3 each) it is exactly D-PSGD. Virtual time
(``algo.vtime``), the time spent waiting and the neighbours used are logged per step, so
accuracy can be read against virtual time whatever machine ran the job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import assign_params, flatten_params, trainable
from suite.algorithms.gossip import exchange
from suite.registry import ALGORITHMS
from suite.stragglers import Iteration, StragglerConfig, StragglerModel, VirtualClock
from suite.topologies import build_topology, check_topology


@dataclass(frozen=True)
class ConsensusBackupConfig:
    """Knobs of consensus SGD with backup workers.

    topology: the static graph whose neighbours a rank may average with (``suite list
        topologies``); complete gives every rank N - 1 candidates, ring two.
    backups [b]: neighbours each rank does not wait for (clipped so a rank always averages
        with at least one). 0 is full wait (D-PSGD); more backups cut the time lost to
        stragglers but average over fewer models, so consensus is slower.
    straggler: the compute-time and link-delay model of the virtual clock (knobs under
        ``algorithm.straggler.*``; virtual seconds).
    """

    topology: str = "complete"
    backups: int = 1
    straggler: StragglerConfig = field(default_factory=StragglerConfig)

    def __post_init__(self) -> None:
        check_topology(self.topology)
        if self.backups < 0:
            raise ValueError(f"backups must be >= 0, got {self.backups}")

    def check_world(self, nproc: int) -> None:
        """Ranks named in the straggler model must exist (checked before any rank starts)."""
        bad = [r for r in self.straggler.slow_ranks if not 0 <= r < nproc]
        if bad:
            raise ValueError(f"straggler.slow_ranks {bad}: valid ranks are 0..{nproc - 1}")


@ALGORITHMS.register("consensus_backup", config=ConsensusBackupConfig, paper="baseline")
class ConsensusBackup(Algorithm):
    """Consensus SGD that waits only for the fastest neighbours (static b), in virtual time."""

    def __init__(self, config: ConsensusBackupConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        topology = build_topology(config.topology, self.world_size)
        if not topology.static:
            raise ValueError(f"topology {config.topology!r} changes per step; need a static one")
        n = self.world_size
        self.in_peers = [topology.in_peers(i) for i in range(n)]
        self.out_peers = topology.out_peers(self.rank)
        self.clock = VirtualClock(StragglerModel(config.straggler, n), self.in_peers)
        self.params = trainable(self.model.parameters())
        self.last: Iteration | None = None
        self.waited_total = 0.0
        self._recv: dict[int, torch.Tensor] = {}  # receive buffers, reused every step

    def backups(self, step: int) -> list[int]:
        """b_i of every rank at ``step`` (the same list on every rank)."""
        return [self.config.backups] * self.world_size

    def required(self, step: int) -> list[set[int]] | None:
        """Neighbours each rank must wait for at ``step``, whatever its b (None: none)."""
        return None

    def observe(self, it: Iteration) -> None:
        """What a dynamic rule learns from an iteration's timing (nothing, for a static b)."""

    def reduce_gradients(self, step: int) -> None:
        # Average before optimizer.step(), which then applies the gradient of the pre-averaging
        # parameters (D-PSGD's order).
        self.last = it = self.clock.step(self.backups(step), self.required(step))
        self.waited_total += float(it.waited[self.rank])
        self.observe(it)
        if self.world_size == 1:
            return
        mine = flatten_params(self.params)  # a fresh copy: mixed into in place below
        sends = dict.fromkeys(self.out_peers, mine)
        received = exchange(self.transport, sends, self.in_peers[self.rank], mine, self._recv)
        used = it.used[self.rank]
        for j in used:
            mine.add_(received[j])
        assign_params(self.params, mine.div_(1 + len(used)))

    def step_metrics(self) -> dict[str, float]:
        it, r = self.last, self.rank
        if it is None:
            return {}
        return {
            "vtime": float(it.end[r]),
            "waited": float(it.waited[r]),
            "neighbours_used": float(len(it.used[r])),
            "backups": float(len(self.in_peers[r]) - len(it.used[r])),
        }

    def totals(self) -> dict[str, float]:
        vtime = float(self.last.end[self.rank]) if self.last is not None else 0.0
        return {"vtime_sum": vtime, "waited_sum": self.waited_total, "ranks": 1.0}

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        """Virtual seconds of the run and spent waiting, means over ranks."""
        ranks = max(totals["ranks"], 1.0)
        return {"virtual_seconds": totals["vtime_sum"] / ranks,
                "waiting_seconds": totals["waited_sum"] / ranks}  # fmt: skip
