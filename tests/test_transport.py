"""Counts equal the documented rule for every op, on 2 and 4 gloo ranks; results are right."""

from __future__ import annotations

import pytest
import torch

from suite import costmodel
from suite.launcher import launch
from suite.transport import Transport

N_BYTES = 5 * 4  # the payload below: 5 float32


def _exercise() -> dict:
    """Run every op in its own counting channel; return counts and results of this rank."""
    t = Transport()
    r, n = t.rank, t.world_size
    x = torch.full((1, 5), float(r + 1))
    out: dict = {"rank": r, "world": n, "results": {}}

    def measure(name, fn):
        with t.channel(name):
            out["results"][name] = fn()
        out[name] = t._counters.channels[name].to_dict()

    measure("all_reduce", lambda: t.all_reduce(x.clone()).tolist())
    measure("all_reduce_mean", lambda: t.all_reduce(x.clone(), op="mean").tolist())
    measure("reduce", lambda: t.reduce(x.clone(), dst=1).tolist())
    measure("broadcast", lambda: t.broadcast(x.clone(), src=1).tolist())
    measure("all_gather", lambda: [p.tolist() for p in t.all_gather(x)])
    measure(
        "gather", lambda: None if (g := t.gather(x, dst=0)) is None else [p.tolist() for p in g]
    )
    measure(
        "gather_async",
        lambda: None if (g := t.gather_async(x, dst=0).wait()) is None else [p.tolist() for p in g],
    )
    ragged = torch.arange(r + 1, dtype=torch.float32)
    measure("ragged_all_gather", lambda: [p.tolist() for p in t.all_gather(ragged)])
    sizes = list(range(1, n + 1))
    measure(
        "ragged_gather",
        lambda: (
            None if (g := t.gather(ragged, 0, sizes=sizes)) is None else [p.tolist() for p in g]
        ),
    )

    def ring():
        right, left = (r + 1) % n, (r - 1) % n
        a, b = torch.empty(5), torch.empty(5)
        sends = [
            t.isend(torch.full((5,), 10.0 * r), right, tag=3),
            t.isend(torch.full((5,), 10.0 * r + 1), right, tag=4),
        ]
        recv_b = t.irecv(b, left, tag=4)  # posted in the other order: tags must match
        recv_a = t.irecv(a, left, tag=3)
        for w in [*sends, recv_a, recv_b]:
            w.wait()
        return [a[0].item(), b[0].item()]

    measure("p2p", ring)
    with t.channel("barrier"):
        t.barrier()
    out["barrier"] = t._counters.channels["barrier"].to_dict()
    out["harness"] = t.harness_stats.to_dict()
    with t.harness():
        t.all_reduce(torch.ones(3))
    out["harness_after"] = t.harness_stats.to_dict()
    out["algorithm"] = t.stats.to_dict()
    return out


@pytest.fixture(scope="module", params=[2, 4])
def runs(request) -> list[dict]:
    return launch(_exercise, request.param)


def test_collective_results_are_right(runs: list[dict]) -> None:
    n = len(runs)
    total = sum(range(1, n + 1))
    for out in runs:
        r, res = out["rank"], out["results"]
        assert res["all_reduce"] == [[float(total)] * 5]
        assert res["all_reduce_mean"] == [[total / n] * 5]
        if r == 1:
            assert res["reduce"] == [[float(total)] * 5]
        assert res["broadcast"] == [[2.0] * 5]
        assert res["all_gather"] == [[[float(k + 1)] * 5] for k in range(n)]
        assert res["gather"] == ([[[float(k + 1)] * 5] for k in range(n)] if r == 0 else None)
        assert res["gather_async"] == res["gather"]
        expected_ragged = [list(map(float, range(k + 1))) for k in range(n)]
        assert res["ragged_all_gather"] == expected_ragged
        assert res["ragged_gather"] == (expected_ragged if r == 0 else None)
        left = (r - 1) % n
        assert res["p2p"] == [10.0 * left, 10.0 * left + 1]


def _op(out: dict, channel: str, op: str) -> dict:
    return out[channel]["ops"][op]


def test_collective_counts_follow_the_rule(runs: list[dict]) -> None:
    n = len(runs)
    for out in runs:
        r = out["rank"]
        assert _op(out, "all_reduce", "all_reduce") == {
            "calls": 1,
            "messages": 1,
            "bytes_sent": N_BYTES,
            "bytes_recv": N_BYTES,
            "seconds": _op(out, "all_reduce", "all_reduce")["seconds"],
        }
        red = _op(out, "reduce", "reduce")
        root = r == 1
        assert (red["bytes_sent"], red["bytes_recv"], red["messages"]) == (
            (0, N_BYTES, 0) if root else (N_BYTES, 0, 1)
        )
        assert out["reduce"]["links"] == (
            {} if root else {f"{r}->1": {"messages": 1, "bytes": N_BYTES}}
        )
        bc = _op(out, "broadcast", "broadcast")
        assert (bc["bytes_sent"], bc["bytes_recv"], bc["messages"]) == (
            (N_BYTES, 0, 1) if root else (0, N_BYTES, 0)
        )
        ag = _op(out, "all_gather", "all_gather")
        assert (ag["calls"], ag["bytes_sent"], ag["bytes_recv"], ag["messages"]) == (
            1,
            N_BYTES,
            (n - 1) * N_BYTES,
            1,
        )
        for channel in ("gather", "gather_async"):  # counted alike, issued or waited for
            ga = _op(out, channel, "gather")
            assert (ga["calls"], ga["bytes_sent"], ga["bytes_recv"], ga["messages"]) == (
                (1, 0, (n - 1) * N_BYTES, 0) if r == 0 else (1, N_BYTES, 0, 1)
            )
            assert out[channel]["links"] == (
                {} if r == 0 else {f"{r}->0": {"messages": 1, "bytes": N_BYTES}}
            )


def test_ragged_counts_include_size_exchange_and_padding(runs: list[dict]) -> None:
    n = len(runs)
    padded = n * 4  # every payload padded to the largest: n float32
    for out in runs:
        ag = _op(out, "ragged_all_gather", "all_gather")
        # one 8-byte size exchange plus the padded gather
        assert ag["calls"] == 2
        assert ag["bytes_sent"] == 8 + padded
        assert ag["bytes_recv"] == (n - 1) * (8 + padded)
        ga = out["ragged_gather"]["ops"]
        assert set(ga) == {"gather"}  # sizes given: no exchange
        expect = (0, (n - 1) * padded) if out["rank"] == 0 else (padded, 0)
        assert (ga["gather"]["bytes_sent"], ga["gather"]["bytes_recv"]) == expect


def test_point_to_point_counts_and_links(runs: list[dict]) -> None:
    n = len(runs)
    for out in runs:
        r = out["rank"]
        p2p = out["p2p"]
        assert p2p["ops"]["send"]["messages"] == 2
        assert p2p["ops"]["send"]["bytes_sent"] == 2 * N_BYTES
        assert p2p["ops"]["recv"]["bytes_recv"] == 2 * N_BYTES
        assert p2p["ops"]["recv"]["messages"] == 0
        assert p2p["links"] == {f"{r}->{(r + 1) % n}": {"messages": 2, "bytes": 2 * N_BYTES}}


def test_harness_traffic_is_kept_apart(runs: list[dict]) -> None:
    for out in runs:
        assert out["barrier"]["calls"] == 0  # barriers always count as harness
        assert out["harness"]["ops"]["barrier"]["calls"] == 1
        assert out["harness"]["bytes_sent"] == 0
        assert out["harness_after"]["ops"]["all_reduce"]["bytes_sent"] == 12
        assert out["algorithm"]["calls"] == 0  # everything above ran in named channels


def _subgroups() -> dict:
    t = Transport()
    n = t.world_size
    groups = [list(range(0, n, 2)), list(range(1, n, 2))]
    sub = t.subgroups(groups)
    x = torch.tensor([float(t.rank)])
    sub.all_reduce(x)
    root = sub.ranks[0]
    y = sub.broadcast(torch.tensor([float(t.rank)]), src=root)
    return {
        "rank": t.rank,
        "ranks": sub.ranks,
        "sum": x.item(),
        "bcast": y.item(),
        "shared": t.stats.bytes_sent,
    }


@pytest.mark.parametrize("nproc", [2, 4])
def test_subgroups_reduce_within_the_group_and_share_counters(nproc: int) -> None:
    for out in launch(_subgroups, nproc):
        mine = [r for r in range(nproc) if r % 2 == out["rank"] % 2]
        assert out["ranks"] == mine
        assert out["sum"] == float(sum(mine))
        assert out["bcast"] == float(mine[0])
        # all_reduce (4 bytes) on all, broadcast (4 bytes) on the root; a group of one: nothing
        expected = (4 + 4 * (out["rank"] == mine[0])) if len(mine) > 1 else 0
        assert out["shared"] == expected


def _alone() -> dict:
    t = Transport()
    x = torch.ones(4)
    t.all_reduce(x)
    t.broadcast(x, 0)
    parts = t.all_gather(x) + t.gather_async(x, dst=0).wait()
    return {"calls": t.stats.calls, "bytes": t.stats.bytes_sent, "parts": len(parts)}


def test_a_single_rank_communicates_nothing() -> None:
    assert launch(_alone, 1) == [{"calls": 0, "bytes": 0, "parts": 2}]


# -- the analytic model -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4, 8])
def test_wire_bytes_formulas(n: int) -> None:
    payload = 1000.0
    assert costmodel.wire_bytes_per_rank("all_reduce", payload, n) == pytest.approx(
        2 * (n - 1) / n * payload
    )
    assert costmodel.wire_bytes("all_gather", payload, n) == n * (n - 1) * payload
    for op in ("broadcast", "reduce"):
        assert costmodel.wire_bytes(op, payload, n) == (n - 1) * payload
    # a tree gather forwards: n times the sum of the binomial tree's depths
    assert costmodel.wire_bytes("gather", payload, n) == {2: 1, 4: 4, 8: 12}[n] * payload
    assert costmodel.wire_bytes("send", payload, n) == payload
    assert costmodel.wire_bytes("all_reduce", payload, 1) == 0
