"""Helpers shared by gossip algorithms (SGP, Assran et al., ICML 2019; Crossover-SGD): a
point-to-point exchange of flat tensors with in- and out-peers, and the consensus distance.

Everything goes through the transport, so every byte is counted; the consensus distance is a
measurement and is counted on the harness channel, never as the algorithm's traffic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
