"""Analytic wire-cost model, beside (never instead of) the counts in :mod:`suite.transport`.

The transport counts what each rank hands to the backend. This module says what standard
algorithms put on the wire for the same op, and how long that takes on a network with per-message
latency ``alpha`` (seconds) and per-link bandwidth ``bandwidth`` (bytes/second), the usual
alpha-beta model with beta = 1/bandwidth (Thakur, Rabenseifner and Gropp 2005):

============  =======================  ===============================  =========================
op            algorithm                wire bytes sent, whole group     time
============  =======================  ===============================  =========================
all_reduce    ring                     2 (N-1) n                        2(N-1) a + 2(N-1)/N n b
all_gather    ring (n per rank)        N (N-1) n                        (N-1) a + (N-1) n b
broadcast     binomial tree            (N-1) n                          ceil(log2 N) (a + n b)
reduce        binomial tree            (N-1) n                          ceil(log2 N) (a + n b)
gather        binomial tree            n x (sum of tree depths)         ceil(log2 N) a + (N-1) n b
send          direct                   n                                a + n b
============  =======================  ===============================  =========================

``n`` is the payload of one rank's contribution (the op's ``bytes_sent`` on a sending rank).
The wire column is derived from :func:`suite.wire.wire_links`, the one definition of each
algorithm's links (the transport records the same per rank and link). Per-rank wire bytes are
the group total divided by N (ring ops are symmetric; for rooted ops it is an average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from suite import wire
from suite.transport import CommStats, OpStats
from suite.wire import OPS


def _check(op: str, world_size: int) -> None:
    if op not in OPS:
        raise ValueError(f"no cost model for op {op!r}; valid choices: {', '.join(OPS)}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")


def wire_bytes(op: str, payload: float, world_size: int) -> float:
    """Bytes the whole group puts on the wire for one call with ``payload`` bytes per rank."""
    _check(op, world_size)
    # every algorithm's group total is linear in n (the ring's uneven chunks sum to n)
    return payload * wire.total(op, 1, world_size)


def wire_bytes_per_rank(op: str, payload: float, world_size: int) -> float:
    """Average wire bytes each rank sends for one call (ring all-reduce: 2(N-1)/N n)."""
    if op == "send":
        return wire_bytes(op, payload, world_size)
    return wire_bytes(op, payload, world_size) / world_size


@dataclass(frozen=True)
class Network:
    """A homogeneous network: per-message latency (s) and per-link bandwidth (bytes/s)."""

    latency: float = 50e-6
    bandwidth: float = 10e9 / 8  # 10 Gbit/s

    def time(self, op: str, payload: float, world_size: int) -> float:
        """Seconds for one call of ``op`` with ``payload`` bytes per rank."""
        _check(op, world_size)
        a, b, n, N = self.latency, 1.0 / self.bandwidth, payload, world_size
        if op == "send":
            return a + n * b
        if N == 1:
            return 0.0
        depth = math.ceil(math.log2(N))
        if op == "all_reduce":
            return 2 * (N - 1) * a + 2 * (N - 1) / N * n * b
        if op == "all_gather":
            return (N - 1) * a + (N - 1) * n * b
        if op == "gather":
            return depth * a + (N - 1) * n * b
        return depth * (a + n * b)  # broadcast, reduce

    def estimate(self, stats: CommStats, world_size: int) -> float:
        """Modelled seconds for one rank's counted traffic, op by op.

        Every formula is linear in the number of calls and in the payload, so a rank's totals
        suffice. Collectives are assumed to span ``world_size`` ranks; receives cost nothing
        here (their sender pays).
        """
        total = 0.0
        for op, s in stats.ops.items():
            if op not in OPS or s.calls == 0:
                continue
            total += s.calls * self.time(op, payload_per_call(op, s, world_size), world_size)
        return total


def payload_per_call(op: str, s: OpStats, world_size: int) -> float:
    """The per-rank payload n of one call, recovered from any participant's counters."""
    if op in ("broadcast", "reduce"):  # the root sees n on the other side
        return max(s.bytes_sent, s.bytes_recv) / s.calls
    if op == "gather":
        return max(s.bytes_sent, s.bytes_recv / max(world_size - 1, 1)) / s.calls
    return s.bytes_sent / s.calls
