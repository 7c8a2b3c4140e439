"""Wire bytes: every op on 2, 3, 4 and 8 gloo ranks puts on each link what the closed forms of
suite/wire.py's documented algorithms say (ring, binomial tree, direct), subgroups and ragged
gathers included; the trace replays the same totals."""

from __future__ import annotations

import pytest
import torch

from suite import costmodel, wire
from suite.launcher import launch
from suite.transport import Transport

ODD = 13  # bytes of the uint8 payload: not divisible by 2, 3, 4 or 8


def _ops() -> dict:
    """Each op in its own channel; this rank's wire counters per channel, and its trace."""
    t = Transport()
    r, n = t.rank, t.world_size
    out: dict = {"rank": r}

    def measure(name, fn):
        with t.channel(name):
            fn()
        stats = t._counters.channels[name]
        out[name] = {"wire_bytes": stats.wire_bytes, "links": dict(stats.wire_links)}

    measure("all_reduce", lambda: t.all_reduce(torch.ones(ODD, dtype=torch.uint8)))
    measure("all_reduce_f32", lambda: t.all_reduce(torch.ones(5)))
    measure("broadcast", lambda: t.broadcast(torch.ones(5), src=n - 1))
    measure("reduce", lambda: t.reduce(torch.ones(5), dst=1))
    measure("all_gather", lambda: t.all_gather(torch.ones(1, 5)))
    measure("gather", lambda: t.gather(torch.ones(1, 5), dst=0))
    ragged = torch.ones(r + 1)
    sizes = list(range(1, n + 1))
    measure("ragged_all_gather", lambda: t.all_gather(ragged, sizes=sizes))
    measure("ragged_gather", lambda: t.gather(ragged, 0, sizes=sizes))
    measure("ragged_exchange", lambda: t.all_gather(ragged))  # sizes exchanged first

    def ring():
        a = torch.empty(5)
        works = [t.isend(torch.ones(5), (r + 1) % n, tag=2), t.irecv(a, (r - 1) % n, tag=2)]
        for w in works:
            w.wait()

    measure("p2p", ring)
    # subgroups: the odd ranks and the even ranks, each in group (sorted) order
    groups = [list(range(1, n, 2)), list(range(0, n, 2))]
    sub = t.subgroups(groups)
    assert sub is not None
    measure("sub_all_reduce", lambda: sub.all_reduce(torch.ones(ODD, dtype=torch.uint8)))
    measure("sub_broadcast", lambda: sub.broadcast(torch.ones(5), src=sub.ranks[-1]))
    measure("sub_gather", lambda: sub.gather(torch.ones(1, 5), dst=sub.ranks[0]))
    out["trace"] = t.trace_records()
    return out


def _summed(runs: list[dict], name: str) -> dict[tuple[int, int], int]:
    """Wire bytes per link over all ranks (each rank records only its own out-links)."""
    links: dict[tuple[int, int], int] = {}
    for run in runs:
        for link, b in run[name]["links"].items():
            assert link[0] == run["rank"], f"rank {run['rank']} recorded {link}"
            links[link] = links.get(link, 0) + b
    return links


def _ring(ranks: list[int], per_position: list[int]) -> dict[tuple[int, int], int]:
    return {
        (ranks[i], ranks[(i + 1) % len(ranks)]): b
        for i, b in enumerate(per_position)
        if len(ranks) > 1
    }


def _ring_all_reduce(ranks: list[int], n: int) -> dict[tuple[int, int], int]:
    """Closed form: position i sends 2n minus the two chunks it never forwards (ceil/floor)."""
    N = len(ranks)
    chunk = [n // N + (c < n % N) for c in range(N)]
    return _ring(ranks, [2 * n - chunk[(i + 1) % N] - chunk[(i + 2) % N] for i in range(N)])


# The binomial trees by hand: edges (parent, child) in relative positions from the root.
TREES = {
    2: [(0, 1)],
    3: [(0, 1), (0, 2)],
    4: [(0, 1), (0, 2), (2, 3)],
    8: [(0, 1), (0, 2), (2, 3), (0, 4), (4, 5), (4, 6), (6, 7)],
}
# Subtree sizes below each child: what a gather forwards on its edge to the parent.
SUBTREE = {1: 1, 2: 2, 3: 1, 4: 4, 5: 1, 6: 2, 7: 1}


def _tree(ranks: list[int], root: int, n: int, kind: str) -> dict[tuple[int, int], int]:
    N, r = len(ranks), ranks.index(root)
    if N == 1:
        return {}
    at = [ranks[(v + r) % N] for v in range(N)]
    edges = [(p, c) for p, c in TREES[N] if c < N]
    if kind == "broadcast":
        return {(at[p], at[c]): n for p, c in edges}
    if kind == "reduce":
        return {(at[c], at[p]): n for p, c in edges}
    return {(at[c], at[p]): min(SUBTREE[c], N - c) * n for p, c in edges}


@pytest.fixture(scope="module", params=[2, 3, 4, 8])
def runs(request) -> list[dict]:
    return launch(_ops, request.param)


def test_ring_ops_use_only_the_ring_successor(runs: list[dict]) -> None:
    N = len(runs)
    everyone = list(range(N))
    # all_reduce of 13 bytes: not divisible by N, the group total is still exactly 2 (N-1) n
    assert _summed(runs, "all_reduce") == _ring_all_reduce(everyone, ODD)
    assert sum(_summed(runs, "all_reduce").values()) == 2 * (N - 1) * ODD
    assert _summed(runs, "all_reduce_f32") == _ring_all_reduce(everyone, 20)
    assert _summed(runs, "all_gather") == _ring(everyone, [(N - 1) * 20] * N)
    # ragged: the padded block (N floats) is what goes round the ring
    assert _summed(runs, "ragged_all_gather") == _ring(everyone, [(N - 1) * 4 * N] * N)
    # plus the sizes exchanged first: one int64 per rank, also a ring all_gather
    assert _summed(runs, "ragged_exchange") == _ring(everyone, [(N - 1) * (4 * N + 8)] * N)


def test_tree_ops_use_the_binomial_tree_edges(runs: list[dict]) -> None:
    N = len(runs)
    everyone = list(range(N))
    assert _summed(runs, "broadcast") == _tree(everyone, N - 1, 20, "broadcast")
    assert _summed(runs, "reduce") == _tree(everyone, 1, 20, "reduce")
    assert _summed(runs, "gather") == _tree(everyone, 0, 20, "gather")
    assert _summed(runs, "ragged_gather") == _tree(everyone, 0, 4 * N, "gather")
    # gather's closed form: n times the sum of the depths; 8 ranks: 12 n
    depths = sum(bin(v).count("1") for v in range(N))
    assert sum(_summed(runs, "gather").values()) == depths * 20


def test_point_to_point_is_direct(runs: list[dict]) -> None:
    N = len(runs)
    assert _summed(runs, "p2p") == {(r, (r + 1) % N): 20 for r in range(N)}


def test_subgroups_use_their_own_ranks_in_group_order(runs: list[dict]) -> None:
    N = len(runs)
    odd, even = list(range(1, N, 2)), list(range(0, N, 2))
    expect: dict = {}
    for group in (odd, even):
        expect.update(_ring_all_reduce(group, ODD))
    assert _summed(runs, "sub_all_reduce") == expect
    for name, kind, root in (("sub_broadcast", "broadcast", -1), ("sub_gather", "gather", 0)):
        expect = {}
        for group in (odd, even):
            expect.update(_tree(group, group[root], 20, kind))
        assert _summed(runs, name) == expect


def test_costmodel_totals_and_the_links_sum_to_the_closed_forms() -> None:
    n = 1001  # not a multiple of any N: the ring's uneven chunks must still sum to 2 (N-1) n
    for N in (2, 3, 4, 8):
        closed = {
            "all_reduce": 2 * (N - 1) * n,
            "all_gather": N * (N - 1) * n,
            "broadcast": (N - 1) * n,
            "reduce": (N - 1) * n,
            "gather": n * sum(min(SUBTREE[c], N - c) for _, c in TREES[N] if c < N),
            "send": n,
        }
        assert set(closed) == set(wire.OPS)
        for op, expected in closed.items():
            ranks = (0, 1) if op == "send" else tuple(range(N))
            assert sum(wire.wire_links(op, ranks, 0, n).values()) == expected, (op, N)
            assert costmodel.wire_bytes(op, n, N) == expected, (op, N)
    assert costmodel.wire_bytes("gather", 10, 8) == 12 * 10  # the module's own example


def test_the_trace_has_every_op_in_order(runs: list[dict]) -> None:
    from suite.trace import KINDS

    for run in runs:
        records, groups, channels, truncated, _ = run["trace"]
        assert not truncated
        kinds = [KINDS[k] for k in records["kind"]]
        assert kinds[:6] == ["all_reduce", "all_reduce", "broadcast", "reduce", "all_gather",
                             "gather"]  # fmt: skip
        assert (records["gap"] >= 0).all() and (records["seconds"] >= 0).all()
        # the p2p ring: send, recv, then one wait on each, pointing back at them
        i = kinds.index("send")
        assert kinds[i : i + 4] == ["send", "recv", "wait", "wait"]
        assert list(records["ref"][i + 2 : i + 4]) == [i, i + 1]
        assert channels[records["channel"][i]] == "p2p"
        assert tuple(groups[records["group"][0]]) == tuple(range(len(runs)))
