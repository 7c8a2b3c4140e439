"""SGP: Stochastic Gradient Push (Assran, Loizou, Ballas, Rabbat, "Stochastic Gradient Push for
Distributed Deep Learning", ICML 2019), synchronous (no overlap).

Each rank keeps a push-sum numerator x and weight w (Kempe et al. 2003); its model holds the
de-biased z = x / w, where the gradient is taken. Per step (Algorithm 1 of the paper): the local
optimizer step is applied to the numerator, x <- x - lr * g(z), then every rank pushes a share
W[j, i] of (x, w) to each out-peer j, keeps its own share and adds what it receives, so the
sums of x and of w over ranks are preserved exactly whatever the (column-stochastic) graph.
On a doubly stochastic graph w stays 1 and SGP is D-PSGD with the update before the mixing.

Also the Crossover-SGD authors' SGP baseline, preset ``sgp_crossover``: synchronous, two peers
per step on a base-3 exponential graph; and ``sgp_graph0``, the graph of Assran et al.'s
published job scripts (``--graph_type 0``: one peer per step, cycling +1, -1, +2, -2, ...), for
comparisons against their SGP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import assign_params, flatten_params, trainable
from suite.algorithms.gossip import consensus_distance, exchange
from suite.registry import ALGORITHMS
from suite.topologies import build_topology, check_topology


@dataclass(frozen=True)
class SGPConfig:
    """Knobs of SGP.

    topology: the gossip graph (``suite list topologies``); read by columns, W[j, i] is the
        share of i's mass that j receives, so each column must sum to 1. The paper's default,
        exponential_one_peer, sends one model per rank per step whatever N is; the static
        ``exponential`` sends floor(log2(N-1)) + 1 and mixes faster per step.
    measure_every: steps between measurements of the consensus distance (1/N) sum ||z_i -
        zbar||^2 (one all-reduce of the model on the harness channel: not charged to SGP, but
        it costs time); 0 = never. Between measurements the last value is reported.
    """

    topology: str = "exponential_one_peer"
    measure_every: int = 1

    def __post_init__(self) -> None:
        check_topology(self.topology)
        if self.measure_every < 0:
            raise ValueError(f"measure_every must be >= 0, got {self.measure_every}")


@ALGORITHMS.register("sgp", config=SGPConfig, paper="baseline")
class SGP(Algorithm):
    """Push-sum gossip of (x, w) after each local step; the model holds the de-biased x / w."""

    def __init__(self, config: SGPConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.topology = build_topology(config.topology, self.world_size)
        self.params = trainable(self.model.parameters())
        first = self.params[0]
        # [x, w] in one buffer: the message to a peer is a scaled copy of it, so x and w travel
        # together in one message of d + 1 elements
        self.state = torch.cat(
            [flatten_params(self.params), torch.ones(1, dtype=first.dtype, device=first.device)]
        )
        self._plans: dict[int, tuple[dict[int, float], float, list[int]]] = {}
        self._recv: dict[int, Tensor] = {}
        self.consensus = math.nan

    @property
    def numerator(self) -> Tensor:
        """The push-sum numerator x (a view into the state)."""
        return self.state[:-1]

    @property
    def weight(self) -> float:
        """The push-sum weight w."""
        return float(self.state[-1])

    def debiased(self) -> Tensor:
        """z = x / w, what the model holds."""
        return self.numerator / self.state[-1]

    def _plan(self, step: int) -> tuple[dict[int, float], float, list[int]]:
        """({out-peer: share sent}, share kept, in-peers) of this rank at ``step``, built once
        per step of the topology's period (each is an N x N construction)."""
        key = step % self.topology.period
        if key not in self._plans:
            t, me = self.topology, self.rank
            column = t.mixing_matrix(key)[:, me].tolist()
            shares = {j: column[j] for j in t.out_peers(me, key)}
            self._plans[key] = (shares, column[me], t.in_peers(me, key))
        return self._plans[key]

    def mix_parameters(self, step: int) -> None:
        # the optimizer moved the parameters from z to z'; take the same step on the numerator
        # (Assran's Algorithm 1 steps x, not z): x <- x + (z' - z)
        self.numerator.add_(flatten_params(self.params) - self.debiased())
        if self.world_size > 1:
            shares, kept, sources = self._plan(step)
            scaled: dict[float, Tensor] = {}  # one scaled copy per distinct share, not per peer
            for share in (kept, *shares.values()):
                if share not in scaled:
                    scaled[share] = self.state * share
            sends = {j: scaled[share] for j, share in shares.items()}
            received = exchange(self.transport, sends, sources, self.state, self._recv)
            mixed = scaled[kept]  # safe to add into even if it was sent: the sends completed
            for buf in received.values():
                mixed.add_(buf)
            self.state = mixed
        assign_params(self.params, self.debiased())
        every = self.config.measure_every
        if every and step % every == 0:
            self.consensus = consensus_distance(self.transport, self.debiased())

    def step_metrics(self) -> dict[str, float]:
        metrics = {"push_weight": self.weight}
        if self.config.measure_every:
            return {"consensus": self.consensus, **metrics}
        return metrics


ALGORITHMS.preset(
    "sgp_crossover",
    "sgp",
    description="SGP as the Crossover-SGD authors ran it: synchronous, 2 peers on a base-3 "
    "exponential graph",
    topology="exponential3_two_peer",
)
ALGORITHMS.preset(
    "sgp_graph0",
    "sgp",
    description="SGP as Assran et al.'s job scripts ran it (graph_type 0): one peer per step, "
    "cycling +1, -1, +2, -2, +4, -4, ...",
    topology="exponential_one_peer_pm",
)
