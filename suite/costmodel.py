"""Whole-group wire formulas, beside (never instead of) the counts in :mod:`suite.transport`.

The transport counts what each rank hands to the backend. This module says what standard
algorithms put on the wire for the same op. Time is :mod:`suite.netmodel`'s alone (one model:
a run's trace replayed, or :func:`suite.netmodel.op_seconds` for one call); on an idle network
of latency ``a`` and per-link bandwidth ``1/b`` (bytes/s) its rounds give the usual alpha-beta
costs (Thakur, Rabenseifner and Gropp 2005) in the time column:

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

from suite import wire
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
