"""Wire bytes: what one op puts on each (src, dst) link, under a documented algorithm.

The transport counts *payload* (what a rank hands to the backend, :mod:`suite.transport`).
This module is the one place that says what the standard algorithms put on the wire for the
same op; the transport records it per rank and per link, :mod:`suite.costmodel` derives its
whole-group formulas from it, and a network model replaying a trace (:mod:`suite.trace`) uses it
to place bytes on links. Ranks on the links are global ranks; positions in a group are the
group's own order (``Transport.ranks``: sorted for subgroups).

``n`` is one rank's payload in bytes (padded, for a ragged gather: what the transport counts),
``N`` the group size, ``i`` a rank's position in the group and ``v = (i - root) mod N`` its
position relative to the root.

all_reduce: ring (reduce-scatter, then all-gather)
    ``n`` is cut into N chunks, chunk ``c`` of ``n // N + (1 if c < n % N else 0)`` bytes
    (exact: the chunks sum to ``n``). In reduce-scatter step ``s`` (0..N-2) position ``i``
    sends chunk ``(i - s) mod N`` to its ring successor ``i + 1``; in all-gather step ``s`` it
    sends chunk ``(i + 1 - s) mod N``. So ``i`` sends ``2n - chunk((i+1) mod N) -
    chunk((i+2) mod N)`` bytes, all on the link to its successor; the group, ``2 (N-1) n``.
all_gather: ring
    Each position forwards N-1 blocks of ``n`` to its successor: ``(N-1) n`` per link,
    ``N (N-1) n`` for the group.
broadcast: binomial tree rooted at the root
    Parent of relative position ``v > 0`` is ``v`` with its lowest set bit cleared (children of
    ``v`` are ``v + 2^k`` for ``2^k`` below ``v``'s lowest set bit; every ``2^k < N`` for the
    root). Every tree edge parent -> child carries ``n``: ``(N-1) n`` for the group.
reduce: the same tree, edges child -> parent, each carrying ``n`` (partial sums): ``(N-1) n``.
gather: the same tree, edges child -> parent; the subtree of ``v`` is the relative positions
    ``[v, min(v + lowbit(v), N))`` and its edge carries the whole subtree's data,
    ``size * n`` (sizes grow toward the root). The group total is ``n`` times the sum of all
    depths, e.g. 12 n on 8 ranks (not (N-1) n: inner ranks forward what they receive).
send: direct, ``n`` on the link (src, dst). recv and barrier put nothing of their own.

A group of one rank puts nothing on the wire.
"""

from __future__ import annotations

import functools

OPS = ("all_reduce", "all_gather", "broadcast", "reduce", "gather", "send")

Links = dict[tuple[int, int], int]


def _lowbit(v: int) -> int:
    return v & -v


def chunk_sizes(n: int, world_size: int) -> list[int]:
    """The ring's N chunks of an ``n``-byte payload (the first ``n % N`` one byte larger)."""
    q, r = divmod(n, world_size)
    return [q + (c < r) for c in range(world_size)]


def tree_parent(v: int) -> int:
    """Parent of relative position ``v > 0`` in the binomial tree (lowest set bit cleared)."""
    return v & (v - 1)


def subtree_size(v: int, world_size: int) -> int:
    """Number of relative positions in the subtree of ``v`` (the root's: all N)."""
    if v == 0:
        return world_size
    return min(_lowbit(v), world_size - v)


def wire_links(op: str, group_ranks: tuple[int, ...] | list[int], root: int, payload: int) -> Links:
    """Bytes one call of ``op`` puts on each (src, dst) link, over the whole group.

    ``group_ranks`` are the group's global ranks in group order; ``root`` is the global root of
    broadcast/reduce/gather (ignored by the ring ops). For ``send``, ``group_ranks`` is
    ``(src, dst)``. Links that carry nothing are left out.
    """
    ranks = tuple(group_ranks)
    n, N = int(payload), len(ranks)
    if op == "send":
        src, dst = ranks
        return {(src, dst): n} if n else {}
    if op not in OPS:
        if op in ("recv", "barrier", "wait"):
            return {}
        raise ValueError(f"no wire model for op {op!r}; valid choices: {', '.join(OPS)}")
    if N == 1 or n == 0:
        return {}
    if op == "all_reduce":
        chunks = chunk_sizes(n, N)
        return {
            (ranks[i], ranks[(i + 1) % N]): 2 * n - chunks[(i + 1) % N] - chunks[(i + 2) % N]
            for i in range(N)
        }
    if op == "all_gather":
        return {(ranks[i], ranks[(i + 1) % N]): (N - 1) * n for i in range(N)}
    r = ranks.index(root)

    def at(v: int) -> int:
        return ranks[(v + r) % N]

    links: Links = {}
    for v in range(1, N):
        parent, child = at(tree_parent(v)), at(v)
        if op == "broadcast":
            links[(parent, child)] = n
        elif op == "reduce":
            links[(child, parent)] = n
        else:  # gather
            links[(child, parent)] = subtree_size(v, N) * n
    return links


@functools.lru_cache(maxsize=4096)
def rank_out_links(
    op: str, group_ranks: tuple[int, ...], root: int, payload: int, rank: int
) -> tuple[tuple[int, int, int], ...]:
    """The per-rank view: ``(src, dst, bytes)`` of the links ``rank`` sends on in one call.

    Summing these over the group's ranks gives :func:`wire_links` without double counting.
    Cached: a training run repeats the same few calls every step."""
    return tuple(
        (src, dst, b) for (src, dst), b in wire_links(op, group_ranks, root, payload).items()
        if src == rank
    )  # fmt: skip


def total(op: str, payload: int, world_size: int) -> int:
    """Whole-group wire bytes of one call on ranks ``0..N-1`` rooted at 0."""
    ranks = (0, 1) if op == "send" else tuple(range(world_size))
    return sum(wire_links(op, ranks, 0, payload).values())
