"""Helpers shared by gossip algorithms (SGP, Assran et al., ICML 2019; Crossover-SGD): a
point-to-point exchange of flat tensors with in- and out-peers, the consensus distance, and the
figures of one mixing round (drift of the average, distance to the conserved average).

Everything goes through the transport, so every byte is counted; the consensus distance is a
measurement and is counted on the harness channel, never as the algorithm's traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from suite.transport import Transport


def exchange(
    transport: Transport,
    sends: Mapping[int, Tensor],
    sources: Iterable[int],
    like: Tensor,
    buffers: dict[int, Tensor] | None = None,
) -> dict[int, Tensor]:
    """Send ``sends[dst]`` to each ``dst`` and receive one tensor shaped like ``like`` from each
    of ``sources``, all posted before any wait (so no ordering of peers can deadlock). Returns
    {source: received}. ``buffers``, if given, is a pool of receive buffers reused across calls
    (keyed by source) to avoid allocating a model-sized tensor per peer per step."""
    pool = {} if buffers is None else buffers
    received: dict[int, Tensor] = {}
    for src in sources:
        buf = pool.get(src)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = pool[src] = torch.empty_like(like)
        received[src] = buf
    works = [transport.isend(x, dst) for dst, x in sends.items()]
    works += [transport.irecv(buf, src) for src, buf in received.items()]
    for work in works:
        work.wait()
    return received


def consensus_distance(transport: Transport, flat: Tensor) -> float:
    """(1/N) sum_i ||x_i - xbar||^2 over the ranks' ``flat`` vectors, the same on every rank.

    One all-reduce of [x, ||x||^2] (in float64, since the result is a difference of two large
    sums), on the harness channel: (1/N) sum_i ||x_i||^2 - ||xbar||^2."""
    n = transport.world_size
    if n == 1:
        return 0.0
    x = flat.detach().reshape(-1).to(torch.float64)
    packed = torch.cat([x, x.square().sum().reshape(1)])
    with transport.harness():
        transport.all_reduce(packed)
    mean = packed[:-1] / n
    return max(0.0, float(packed[-1]) / n - float(mean.square().sum()))


@dataclass(frozen=True)
class MixingFigures:
    """One gossip round measured over its ``count`` members (x before the round, x' after,
    xbar and xbar' their means): see reproduce/crossover_sgd/NOTES.md#what-gossip-guarantees.

    spread_before: (1/G) sum ||x_g - xbar||^2, the distance to the mean before the round.
    consensus: (1/G) sum ||x'_g - xbar'||^2, the distance to the new mean.
    drift: ||xbar' - xbar||^2, how far the round moved the average (0 for doubly stochastic
        mixing, such as a load-balanced Crossover round)."""

    spread_before: float
    consensus: float
    drift: float

    @property
    def conserved(self) -> float:
        """(1/G) sum ||x'_g - xbar||^2: the distance to the average before the round, the one
        doubly stochastic mixing conserves (= consensus + drift)."""
        return self.consensus + self.drift


def mixing_figures(
    transport: Transport, before: Tensor, after: Tensor, member: bool
) -> MixingFigures:
    """:class:`MixingFigures` of one round over the ranks with ``member`` true (the group
    roots: one model per group), the same on every rank. One all-reduce of [x, x', ||x||^2,
    ||x'||^2] in float64 on the harness channel (not charged to the algorithm)."""
    b = before.detach().reshape(-1).to(torch.float64)
    a = after.detach().reshape(-1).to(torch.float64)
    norms = torch.stack([b.square().sum(), a.square().sum()])
    packed = torch.cat([b, a, norms]) * (1.0 if member else 0.0)
    count = torch.tensor([1.0 if member else 0.0], dtype=torch.float64)
    packed = torch.cat([packed, count])
    with transport.harness():
        transport.all_reduce(packed)
    d, g = b.numel(), float(packed[-1])
    mean_b, mean_a = packed[:d] / g, packed[d : 2 * d] / g
    return MixingFigures(
        spread_before=max(0.0, float(packed[2 * d]) / g - float(mean_b.square().sum())),
        consensus=max(0.0, float(packed[2 * d + 1]) / g - float(mean_a.square().sum())),
        drift=float((mean_a - mean_b).square().sum()),
    )
