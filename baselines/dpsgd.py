"""D-PSGD: decentralized parallel SGD (Lian et al., "Can decentralized algorithms outperform
centralized algorithms?", NeurIPS 2017). Every step each rank averages its parameters with its
neighbours' using the topology's mixing weights, then applies the gradient it computed at its own
pre-mixing parameters: x_i <- sum_j W_ij x_j - lr * g_i(x_i). EventGraD's every-iteration
baseline (h = 0)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import assign_params, flatten_params, trainable
from suite.registry import ALGORITHMS
from suite.topologies import build_topology, check_topology


@dataclass(frozen=True)
class DPSGDConfig:
    """Knobs of D-PSGD.

    topology: the gossip graph (``suite list topologies``); ring sends two messages of the whole
        model per step per rank whatever N is, and mixes slowly (spectral gap ~ 1/N^2);
        complete sends N-1 and equals parameter averaging.
    """

    topology: str = "ring"

    def __post_init__(self) -> None:
        check_topology(self.topology)


@ALGORITHMS.register("dpsgd", config=DPSGDConfig, paper="baseline")
class DPSGD(Algorithm):
    """Neighbour averaging with the topology's weights every step, then the local gradient step."""

    def __init__(self, config: DPSGDConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.topology = build_topology(config.topology, self.world_size)
        self.params = trainable(self.model.parameters())
        self._plan = self._plan_at(0) if self.topology.static else None

    def _plan_at(self, step: int) -> tuple[list[float], list[int], list[int]]:
        """(this rank's row of W, in-peers, out-peers): built once for a static graph, not per
        step (each is an N x N construction)."""
        t = self.topology
        return (
            t.mixing_matrix(step)[self.rank].tolist(),
            t.in_peers(self.rank, step),
            t.out_peers(self.rank, step),
        )

    def reduce_gradients(self, step: int) -> None:
        # Mixing happens here, before optimizer.step(): the step then applies the gradient taken
        # at the pre-mixing parameters, as in Lian et al.
        if self.world_size == 1:
            return
        w, peers, out = self._plan or self._plan_at(step)
        mine = flatten_params(self.params)
        bufs = {j: torch.empty_like(mine) for j in peers}
        works = [self.transport.isend(mine, dst) for dst in out]
        works += [self.transport.irecv(bufs[j], j) for j in peers]
        for work in works:
            work.wait()
        mixed = mine * w[self.rank]
        for j, buf in bufs.items():
            mixed.add_(buf, alpha=w[j])
        assign_params(self.params, mixed)
