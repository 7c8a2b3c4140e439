"""The network model (suite.netmodel) on hand-built traces: closed forms for one send, a ring
all-reduce and tree collectives, concurrent flows sharing a rank's uplink and downlink (max-min
fair), gloo's rendezvous (a send's bytes move once the receiver's notice has arrived, and that
notice waits behind what the receiver already sends on the pair), a straggler holding a
collective, compute_scale, the switch cap, harness ops; and the per-round bytes sum to
suite.wire's links.

A point-to-point message whose receive is posted when it is sent costs two latencies (the
receiver's notice, then the bytes): several expected values below carry that ``2 * LAT``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import last_json, suite_cmd

from suite import netmodel, trace, wire
from suite.config import RunConfig, apply_overrides
from suite.errors import ConfigError
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.netmodel import Link, Network, replay
from suite.network import NetworkSpec
from suite.stragglers import StragglerConfig, StragglerModel, VirtualClock
from suite.trace import DTYPE, KIND, Trace
from suite.transport import Transport

BW = 1e9  # bits/s
LAT = 1e-3
NET = NetworkSpec(BW, LAT)
B = BW / 8  # bytes/s


def _trace(world: int, ranks: dict[int, list[tuple]], groups=None) -> Trace:
    """Records as (step, kind, peer, payload, tag, gap[, ref[, channel[, group[, cpu[, other]]]]]),
    group 0 = everyone, cpu NaN (unknown: the gap) and other (other_cpu) NaN unless given."""
    arrays = []
    for r in range(world):
        rows = []
        for rec in ranks.get(r, []):
            step, kind, peer, n, tag, gap, *rest = rec
            ref = rest[0] if rest else -1
            channel = rest[1] if len(rest) > 1 else 0
            group = rest[2] if len(rest) > 2 else 0
            cpu = rest[3] if len(rest) > 3 else math.nan
            other_cpu = rest[4] if len(rest) > 4 else math.nan
            rows.append(
                (step, KIND[kind], group, peer, n, tag, channel, gap, 0.0, ref, cpu, other_cpu)
            )
        arrays.append(np.array(rows, dtype=DTYPE))
    return Trace(world, groups or (tuple(range(world)),), ("algorithm", "harness"), tuple(arrays))


def _p2p(*pairs: tuple[str, int, int]) -> list[tuple]:
    """Blocking sends/recvs (kind, peer, bytes), each an issue plus its wait, step 0."""
    out = []
    for kind, peer, n in pairs:
        out.append((0, kind, peer, n, 0, 0.0))
        out.append((0, "wait", peer, n, 0, 0.0, len(out) - 1))
    return out


def test_one_send_costs_latency_plus_bytes_over_bandwidth() -> None:
    n = 1_000_000
    tl = replay(_trace(2, {0: _p2p(("send", 1, n)), 1: _p2p(("recv", 0, n))}), NET)
    # the receiver's notice (one latency), then the bytes (latency + bytes / bandwidth)
    assert tl.finish[1] == pytest.approx(2 * LAT + n / B)
    assert tl.finish[0] == pytest.approx(LAT + n / B)  # done when its bytes have left
    assert tl.network_seconds == pytest.approx(2 * LAT + n / B)
    # a receive posted a latency before the send: the notice is there, one latency is left
    early = {0: [(0, "send", 1, n, 0, LAT), (0, "wait", 1, n, 0, 0.0, 0)],
             1: _p2p(("recv", 0, n))}  # fmt: skip
    assert replay(_trace(2, early), NET).finish[1] == pytest.approx(LAT + LAT + n / B)


@pytest.mark.parametrize("N", [2, 4])
def test_ring_all_reduce_costs_its_rounds(N: int) -> None:
    n = 4_000_000
    tr = _trace(N, {r: [(0, "all_reduce", -1, n, 0, 0.0)] for r in range(N)})
    expected = 2 * (N - 1) * (LAT + n / N / B)
    assert replay(tr, NET).network_seconds == pytest.approx(expected)


def test_all_gather_and_tree_collectives_cost_their_rounds() -> None:
    n, N = 1000, 8
    for kind, expected in [
        ("all_gather", (N - 1) * (LAT + n / B)),
        ("broadcast", 3 * (LAT + n / B)),
        ("reduce", 3 * (LAT + n / B)),
        ("gather", 3 * LAT + (1 + 2 + 4) * n / B),  # subtrees grow toward the root
        ("barrier", 3 * LAT),
    ]:
        tr = _trace(N, {r: [(0, kind, 0, n, 0, 0.0)] for r in range(N)})
        assert replay(tr, NET).network_seconds == pytest.approx(expected), kind


@pytest.mark.parametrize("N", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("op", ["all_reduce", "all_gather", "broadcast", "reduce", "gather"])
def test_rounds_sum_to_the_wire_links(op: str, N: int) -> None:
    group = tuple(range(10, 10 + N))
    for root in (group[0], group[-1]):
        total: dict[tuple[int, int], int] = {}
        for links in netmodel.rounds(op, group, root, 1003):
            for link, b in links.items():
                total[link] = total.get(link, 0) + b
        assert total == wire.wire_links(op, group, root, 1003)


def test_two_sends_from_one_rank_share_its_uplink() -> None:
    n = 1_000_000
    tr = _trace(
        3,
        {
            0: [(0, "send", 1, n, 0, 0.0), (0, "send", 2, n, 0, 0.0),
                (0, "wait", 1, n, 0, 0.0, 0), (0, "wait", 2, n, 0, 0.0, 1)],
            1: _p2p(("recv", 0, n)),
            2: _p2p(("recv", 0, n)),
        },
    )  # fmt: skip
    tl = replay(tr, NET)
    # fair share (was first come first served): each at half the rate, both done together
    assert tl.finish[1:] == pytest.approx([2 * LAT + 2 * n / B] * 2)


def test_two_sends_into_one_rank_share_its_downlink() -> None:
    n = 1_000_000
    tr = _trace(
        3,
        {
            0: _p2p(("send", 2, n)),
            1: _p2p(("send", 2, n)),
            2: [(0, "recv", 0, n, 0, 0.0), (0, "recv", 1, n, 0, 0.0),
                (0, "wait", 0, n, 0, 0.0, 0), (0, "wait", 1, n, 0, 0.0, 1)],
        },
    )  # fmt: skip
    tl = replay(tr, NET)
    assert tl.finish[2] == pytest.approx(2 * LAT + 2 * n / B)
    assert tl.finish[:2] == pytest.approx([LAT + 2 * n / B] * 2)  # fair share, as above


def test_a_flow_that_finishes_frees_its_share_for_the_other() -> None:
    n = 1_000_000  # rank 0 sends n to rank 1 and 3n to rank 2, both notices there at LAT
    tr = _trace(
        3,
        {
            0: [(0, "send", 1, n, 0, 0.0), (0, "send", 2, 3 * n, 0, 0.0),
                (0, "wait", 1, n, 0, 0.0, 0), (0, "wait", 2, 3 * n, 0, 0.0, 1)],
            1: _p2p(("recv", 0, n)),
            2: _p2p(("recv", 0, 3 * n)),
        },
    )  # fmt: skip
    tl = replay(tr, NET)
    # half the uplink each until n has left (2n/B), then the rest (2n) at the full rate
    assert tl.finish[1] == pytest.approx(2 * LAT + 2 * n / B)
    assert tl.finish[2] == pytest.approx(2 * LAT + 4 * n / B)
    assert tl.finish[0] == pytest.approx(LAT + 4 * n / B)


def test_max_min_fair_share_gives_a_slow_links_leftover_to_the_other_flow() -> None:
    n = 1_000_000  # rank 1's downlink at a quarter of the rate: 0->1 gets B/4, 0->2 the rest
    tr = _trace(
        3,
        {
            0: [(0, "send", 1, n, 0, 0.0), (0, "send", 2, n, 0, 0.0),
                (0, "wait", 1, n, 0, 0.0, 0), (0, "wait", 2, n, 0, 0.0, 1)],
            1: _p2p(("recv", 0, n)),
            2: _p2p(("recv", 0, n)),
        },
    )  # fmt: skip
    tl = replay(tr, Network(NET, links={1: Link(down_bps=BW / 4)}))
    assert tl.finish[2] == pytest.approx(2 * LAT + n / (0.75 * B))
    assert tl.finish[1] == pytest.approx(2 * LAT + n / (0.25 * B))


def _max_min_reference(flows: list[tuple[int, ...]], capacity: list[float]) -> list[float]:
    """Max-min fair rates of flows (each a tuple of the links it crosses) from scratch, by
    textbook progressive filling: raise all unfrozen rates alike until a link is full."""
    rate, frozen, left = [0.0] * len(flows), set(), list(capacity)
    while len(frozen) < len(flows):
        counts = {}
        for i, links in enumerate(flows):
            if i not in frozen:
                for link in links:
                    counts[link] = counts.get(link, 0) + 1
        share = min(left[link] / c for link, c in counts.items())
        full = {link for link, c in counts.items() if left[link] / c <= share * (1 + 1e-12)}
        for i, links in enumerate(flows):
            if i not in frozen and full & set(links):
                frozen.add(i)
                rate[i] = share
                for link in links:
                    left[link] -= share
    return rate


@pytest.mark.parametrize("switch", [None, 3e9])
@pytest.mark.parametrize("seed", range(4))
def test_link_rates_stay_max_min_fair_through_starts_and_finishes(seed: int, switch) -> None:
    """The link model recomputes rates only where a start or a finish can change them (a flow
    alone on its links takes their rate; a notice with no bytes takes no share): after every
    event, every moving flow's rate equals a from-scratch max-min fair allocation."""
    rng = np.random.default_rng(seed)
    W = 6
    slow = {r: Link(up_bps=float(rng.choice([1e8, 1e9])), down_bps=float(rng.choice([2e8, 1e9])))
            for r in range(W) if rng.random() < 0.5}  # fmt: skip
    links = netmodel.Links(Network(NET, links=slow, switch_bps=switch), W)
    t, started = 0.0, 0
    while started < 60 or links.active:
        if started < 60 and (not links.active or rng.random() < 0.5):
            src, dst = rng.choice(W, size=2, replace=False)
            n = 0 if rng.random() < 0.3 else int(rng.integers(1, 2_000_000))
            t = max(t, links.now) + float(rng.exponential(1e-3))
            links.start(int(src), int(dst), n, t)
            started += 1
        else:
            links.pop()
        moving = sorted(links.moving)
        want = _max_min_reference([links.flows[f][5] for f in moving], links.capacity)
        got = [links.flows[f][3] for f in moving]
        assert got == pytest.approx(want, rel=1e-9), (seed, started)


def test_a_receivers_notice_waits_behind_what_it_already_sends_on_the_pair() -> None:
    """gloo: rank 1's bytes to rank 0 move first (rank 0's notice came at LAT); rank 1 posts its
    receive at 2 LAT and that notice leaves on the same connection behind its bytes, so rank
    0's bytes start only when rank 1's have arrived: the exchange takes both transfers."""
    n = 1_000_000  # n / B = 8 ms, LAT = 1 ms
    tr = _trace(
        2,
        {
            0: [(0, "recv", 1, n, 0, 0.0), (0, "send", 1, n, 0, 0.0),
                (0, "wait", 1, n, 0, 0.0, 0), (0, "wait", 1, n, 0, 0.0, 1)],
            1: [(0, "send", 0, n, 0, 0.0), (0, "recv", 0, n, 0, 2 * LAT),
                (0, "wait", 0, n, 0, 0.0, 0), (0, "wait", 0, n, 0, 0.0, 1)],
        },
    )  # fmt: skip
    tl = replay(tr, NET)
    assert tl.finish[0] == pytest.approx(2 * LAT + 2 * n / B)  # its bytes have left
    assert tl.finish[1] == pytest.approx(3 * LAT + 2 * n / B)  # rank 0's bytes arrived


def test_recv_matches_sends_by_tag_and_order() -> None:
    small, big = 1000, 1_000_000
    # rank 0 sends tag 1 (big) first, then tag 0 (small); rank 1 waits for tag 0 only: gloo
    # moves only bytes a receive was posted for, so the big one does not hold the small one
    tr = _trace(
        2,
        {
            0: [(0, "send", 1, big, 1, 0.0), (0, "send", 1, small, 0, 0.0)],
            1: [(0, "recv", 0, small, 0, 0.0), (0, "wait", 0, small, 0, 0.0, 0)],
        },
    )
    assert replay(tr, NET).finish[1] == pytest.approx(2 * LAT + small / B)


def test_a_straggler_holds_a_collective_for_everyone() -> None:
    n, slow = 4_000_000, 0.5
    tr = _trace(4, {r: [(0, "all_reduce", -1, n, 0, slow if r == 2 else 0.01)] for r in range(4)})
    tl = replay(tr, NET)
    assert tl.finish == pytest.approx([slow + 6 * (LAT + n / 4 / B)] * 4)


def test_compute_scale_scales_only_compute() -> None:
    n, gap = 4_000_000, 0.2
    tr = _trace(4, {r: [(s, "all_reduce", -1, n, 0, gap) for s in range(3)] for r in range(4)})
    comm = 6 * (LAT + n / 4 / B)
    assert replay(tr, NET).network_seconds == pytest.approx(3 * (gap + comm))
    assert replay(tr, NET, compute_scale=0.25).network_seconds == pytest.approx(
        3 * (gap / 4 + comm)
    )
    tl = replay(tr, NET, compute_scale=0)
    assert tl.step_end[0] == pytest.approx([comm, 2 * comm, 3 * comm])


def test_ranks_sharing_processors_compute_in_turn() -> None:
    """cpus: 4 ranks, each computing c seconds of CPU before every all-reduce, on 2 shared
    processors take 2c a step (4c on one, c on 4 or with a processor each), not c."""
    n, c = 4_000_000, 0.2
    tr = _trace(4, {r: [(s, "all_reduce", -1, n, 0, c) for s in range(3)] for r in range(4)})
    comm = 6 * (LAT + n / 4 / B)
    for cpus, compute in ((None, c), (4, c), (8, c), (2, 2 * c), (1, 4 * c)):
        tl = replay(tr, Network(NET, cpus=cpus))
        assert tl.network_seconds == pytest.approx(3 * (compute + comm)), cpus
    tl = replay(tr, Network(NET, cpus=2), compute_scale=0.5)
    assert tl.network_seconds == pytest.approx(3 * (c + comm))
    with pytest.raises(ValueError, match="cpus"):
        Network(NET, cpus=0)


def test_shared_processors_are_shared_equally_among_the_ranks_computing() -> None:
    """Processor sharing: demands 1, 1 and 2 s on 2 processors run at 2/3 each until the short
    two end at 1.5 s; the third (1 s done) then has a processor to itself and ends at 2.5 s. A
    rank that computes alone is never faster than one processor."""
    tr = _trace(3, {0: [(0, "all_reduce", -1, 0, 0, 1.0)], 1: [(0, "all_reduce", -1, 0, 0, 1.0)],
                    2: [(0, "all_reduce", -1, 0, 0, 2.0)]})  # fmt: skip
    empty_ring = 4 * LAT  # a 0-byte all-reduce: 2(N-1) rounds of latency
    assert replay(tr, Network(NET, cpus=2)).network_seconds == pytest.approx(2.5 + empty_ring)
    procs = netmodel.Processors(2)
    procs.start(0, 1.0, 0.0)
    assert procs.next_time() == pytest.approx(1.0)
    procs.start(1, 1.0, 0.5)
    procs.start(2, 2.0, 0.5)  # 0: 0.5 left; 1, 2 start: 3 ranks at 2/3
    assert procs.pop() == (0, pytest.approx(0.5 + 0.5 * 1.5))
    assert procs.pop()[1] == pytest.approx(1.25 + (1.0 - 0.5) / 1.0)  # 2 ranks: 1 each


def test_a_gap_on_shared_processors_lasts_its_wall_time_and_its_cpu_seconds_shared() -> None:
    """cpus: 4 ranks on 2 processors. A gap of 0.15 s wall and 0.1 s CPU (its wait for a core
    fell inside an op) lasts 0.2 s, its CPU shared; one of 0.3 s wall (preempted by another
    job, say) still lasts 0.3 s. Unknown CPU (NaN, a version-1 trace): the gap's wall time
    is its CPU. Without cpus every gap is its own, as measured."""
    empty_ring = 6 * LAT  # a 0-byte all-reduce: 2(N-1) rounds of latency

    def seconds(gap: float, cpu: float, cpus: int | None) -> float:
        tr = _trace(4, {r: [(0, "all_reduce", -1, 0, 0, gap, -1, 0, 0, cpu)] for r in range(4)})
        return replay(tr, Network(NET, cpus=cpus)).network_seconds - empty_ring

    assert seconds(0.15, 0.1, None) == pytest.approx(0.15)
    assert seconds(0.15, 0.1, 2) == pytest.approx(0.2)
    assert seconds(0.3, 0.1, 2) == pytest.approx(0.3)
    assert seconds(0.3, math.nan, 2) == pytest.approx(0.6)


def test_a_collectives_own_cpu_holds_its_members_on_shared_processors() -> None:
    """other_cpu of a blocking collective (gloo's threads moving its bytes) must run before its
    members go on: 4 ranks with 0.1 s of it each on 2 processors leave a 0-byte all-reduce after
    0.2 s, on 4 after 0.1 s; it runs beside the links (a longer transfer hides it); without
    cpus (a processor each, idle) it is not modelled, nor is an async op's (issued, then
    waited for: its bytes move while its rank goes on)."""
    c = 0.1

    def seconds(n: int, cpus: int | None, wait: bool = False) -> float:
        op = (0, "all_reduce", -1, n, 0, 0.0, -1, 0, 0, 0.0, c)
        recs = [op, (0, "wait", -1, n, 0, 0.0, 0)] if wait else [op]
        tr = _trace(4, {r: recs for r in range(4)})
        return replay(tr, Network(NET, cpus=cpus)).network_seconds

    assert seconds(0, None) == pytest.approx(6 * LAT)
    assert seconds(0, 2) == pytest.approx(2 * c)
    assert seconds(0, 4) == pytest.approx(c)
    n = 200_000_000  # 6 rounds of 50 MB at 1 Gbit/s: 2.4 s
    assert seconds(n, 2) == pytest.approx(6 * (LAT + n / 4 / B))
    assert seconds(0, 2, wait=True) == pytest.approx(6 * LAT)


def test_the_emulated_network_is_the_hosts_processors_and_measured_links() -> None:
    spec = NetworkSpec(1e9, None, "1gbit")
    measured = {"measured_throughput_bps": 9e8, "measured_rtt_s": 2e-5, "emulated_cpus": 2}
    net = netmodel.emulated_network(spec, measured)
    assert (net.spec.bandwidth_bps, net.latency_s, net.cpus) == (9e8, 1e-5, 2)
    assert net.message_overhead_s == netmodel.GLOO_MESSAGE_OVERHEAD_S


def test_a_switch_cap_slows_concurrent_transfers() -> None:
    n = 1_000_000
    tr = _trace(4, {0: _p2p(("send", 1, n)), 1: _p2p(("recv", 0, n)),
                    2: _p2p(("send", 3, n)), 3: _p2p(("recv", 2, n))})  # fmt: skip
    free = replay(tr, NET).network_seconds
    assert free == pytest.approx(2 * LAT + n / B)  # disjoint links: concurrent
    capped = replay(tr, Network(NET, switch_bps=BW)).network_seconds
    assert capped == pytest.approx(2 * LAT + 2 * n / B)  # one link's rate for both
    assert replay(tr, Network(NET, switch_bps=4 * BW)).network_seconds == pytest.approx(free)


def test_per_rank_link_overrides_and_measured_latency() -> None:
    n = 1_000_000
    tr = _trace(2, {0: _p2p(("send", 1, n)), 1: _p2p(("recv", 0, n))})
    slow_down = Network(NET, links={1: Link(down_bps=BW / 10)})
    assert replay(tr, slow_down).network_seconds == pytest.approx(2 * LAT + 10 * n / B)
    far = Network(NET, links={0: Link(latency_s=0.05)})  # the notice and the bytes both far
    assert replay(tr, far).network_seconds == pytest.approx(2 * 0.05 + n / B)
    unset = NetworkSpec(BW)  # the spec sets no latency: the measured one, else the default
    assert replay(tr, Network(unset, measured_latency_s=2e-3)).network_seconds == pytest.approx(
        2 * 2e-3 + n / B
    )
    assert replay(tr, unset).network_seconds == pytest.approx(
        2 * netmodel.DEFAULT_LATENCY_S + n / B
    )


def test_harness_ops_are_skipped_but_their_gaps_kept() -> None:
    n = 4_000_000
    recs = [(0, "all_reduce", -1, n, 0, 0.1, -1, 1), (0, "all_reduce", -1, 8, 0, 0.2)]
    tr = _trace(2, {r: recs for r in range(2)})
    comm = 2 * (LAT + n / 2 / B), 2 * (LAT + 4 / B)
    assert replay(tr, NET).network_seconds == pytest.approx(0.3 + comm[1])
    assert replay(tr, NET, harness=True).network_seconds == pytest.approx(0.3 + sum(comm))


def test_step_ends_and_seconds_to_target() -> None:
    # step 0 and 2 communicate, step 1 does not: its end shares the gap before step 2's op
    recs = [(0, "barrier", -1, 0, 0, 0.1), (2, "barrier", -1, 0, 0, 0.2)]
    tl = replay(_trace(2, {0: recs, 1: recs}), NetworkSpec(BW, 0.0), steps=4)
    assert tl.step_end[0] == pytest.approx([0.1, 0.2, 0.3, 0.4])  # step 3: mean compute
    assert tl.seconds_to_step(2) == pytest.approx(0.2)
    assert math.isnan(tl.seconds_to_step(5)) and math.isnan(tl.seconds_to_step(0))
    out = netmodel.network_seconds(_trace(2, {0: recs, 1: recs}), "wan", steps_to_target=1)
    assert out["network_seconds_to_target"] == pytest.approx(0.1 + 20e-3)
    assert math.isnan(
        netmodel.network_seconds(_trace(2, {0: recs, 1: recs}), "wan", steps_to_target=math.nan)[
            "network_seconds_to_target"
        ]
    )


def test_a_ranks_tail_is_its_compute_after_its_last_record() -> None:
    # a rank that records nothing (a one-worker run) replays to its tail, shared by its steps
    lone = dataclasses.replace(_trace(1, {}), tail=(2.0,))
    tl = replay(lone, NET, steps=4)
    assert tl.step_end[0] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert tl.network_seconds == pytest.approx(2.0)
    assert replay(lone, NET, steps=4, compute_scale=0.5).network_seconds == pytest.approx(1.0)
    # records up to the last step: the rank finishes its tail after its last record, plus the
    # gaps of harness ops after it (the last evaluation's compute); step ends stay the records'
    recs = [(0, "barrier", -1, 0, 0, 0.1), (1, "barrier", -1, 0, 0, 0.2)]
    evaluation = (1, "all_reduce", -1, 8, 0, 0.25, -1, 1)  # channel 1: harness
    tr = dataclasses.replace(_trace(2, {0: recs, 1: [*recs, evaluation]}), tail=(0.05, 0.5))
    free = NetworkSpec(BW, 0.0)
    tl = replay(tr, free, steps=2)
    assert tl.step_end[:, 1] == pytest.approx([0.3, 0.3])
    assert tl.finish == pytest.approx([0.35, 0.3 + 0.25 + 0.5])
    # steps after the last record share the tail (unknown: each takes the mean compute per step)
    tr = dataclasses.replace(_trace(2, {0: recs, 1: recs}), tail=(0.4, 0.4))
    assert replay(tr, free, steps=4).step_end[0] == pytest.approx([0.1, 0.3, 0.5, 0.7])
    assert replay(_trace(2, {0: recs, 1: recs}), free, steps=4).step_end[0] == pytest.approx(
        [0.1, 0.3, 0.45, 0.6]
    )


def test_a_one_worker_run_replays_to_its_compute() -> None:
    cfg = apply_overrides(
        RunConfig(),
        ["algorithm=allreduce_sgd", "nproc=1", "steps=30", "model.hidden=16", "eval_every=0"],
    )
    summary, artifacts = launch(_train, 1, (cfg,))[0]
    tr = trace.load(artifacts[trace.ARTIFACT])
    assert len(tr.ranks[0]) == 0  # alone, it communicates nothing
    # its tail is the whole training loop: the replay is its compute, on any network
    assert summary["network_seconds"] == pytest.approx(summary["train_seconds"], rel=0.05)
    assert netmodel.network_seconds(tr, "wan", steps=30)["network_seconds"] == pytest.approx(
        summary["network_seconds"]
    )


def test_an_inconsistent_trace_is_refused() -> None:
    tr = _trace(2, {0: [(0, "all_reduce", -1, 8, 0, 0.0)], 1: []})
    with pytest.raises(ValueError, match="rank 0 blocked"):
        replay(tr, NET)


def test_a_network_by_name() -> None:
    n = 1_000_000
    tr = _trace(2, {0: _p2p(("send", 1, n)), 1: _p2p(("recv", 0, n))})
    assert replay(tr, "wan").network_seconds == pytest.approx(2 * 20e-3 + n / (100e6 / 8))
    with pytest.raises(ConfigError, match="datacenter"):
        replay(tr, "fast")


# -- in a run ----------------------------------------------------------------------------------


def _train(cfg: RunConfig) -> tuple | None:
    job = Job(cfg, target="test", paper="test", progress=False)
    summary, artifacts = Trainer(job, Transport(), None).run()
    return None if summary is None else (summary, artifacts)


def test_a_run_summary_has_its_network_seconds() -> None:
    cfg = apply_overrides(
        RunConfig(),
        ["algorithm=dpsgd", "nproc=3", "steps=20", "model.hidden=16", "device=cpu",
         "eval_every=5", "target_accuracy=0.05", "network=wan"],
    )  # fmt: skip
    summary, artifacts = launch(_train, 3, (cfg,))[0]
    art = artifacts[trace.ARTIFACT]
    assert summary["network"] == "wan" and summary["steps_to_target"] == 5
    # the summary's figures are the stored trace's replay (determinism: a second run, below)
    again = netmodel.network_seconds(art, "wan", steps=20, steps_to_target=5)
    assert {k: summary[k] for k in again} == again
    tails = trace.load(art).tail  # each rank's compute after its last op, to training's end
    assert len(tails) == 3 and all(0 <= t < summary["train_seconds"] for t in tails)
    assert 0 < summary["network_seconds_to_target"] < summary["network_seconds"]
    # 20 steps of gossip with 2 neighbours each, at least 20 ms latency per step on wan
    assert summary["network_seconds"] > 20 * 20e-3
    fast = netmodel.network_seconds(art, "datacenter", steps=20)["network_seconds"]
    assert fast < summary["network_seconds"]
    assert "model_comm_seconds" not in summary  # one model: the replay replaced the estimate
    # the same seed gives the same ops, so the same simulated communication time
    art2 = launch(_train, 3, (cfg,))[0][1][trace.ARTIFACT]
    comm = [netmodel.replay(trace.load(a), "wan", compute_scale=0) for a in (art, art2)]
    assert comm[0].network_seconds == comm[1].network_seconds
    assert comm[0].step_end.tolist() == comm[1].step_end.tolist()


def test_suite_replay_reads_a_tracked_run_and_agrees_with_its_summary(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = suite_cmd(
        "run", "allreduce_sgd", "--nproc", "2", "--steps", "10", "--json", "--quiet",
        "--tracking-uri", uri, "--set", "model.hidden=16", "--set", "eval_every=5",
        "--set", "target_accuracy=0.05", "--set", "network=wan", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert summary["network"] == "wan" and summary["steps_to_target"] == 5
    proc = suite_cmd(
        "replay", summary["run_id"], "--network", "wan", "--network", "datacenter", "--json",
        "--tracking-uri", uri, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    wan, datacenter = (json.loads(line) for line in proc.stdout.splitlines())
    for key in ("network_seconds", "network_seconds_per_step", "network_seconds_to_target"):
        assert wan[key] == pytest.approx(summary[key], rel=1e-12)
    assert datacenter["network_seconds"] < wan["network_seconds"]
    bad = suite_cmd("replay", summary["run_id"], "--network", "10mb", cwd=tmp_path)
    assert bad.returncode == 2 and "wan (100mbit:20ms)" in bad.stderr
    # at another host's speed: the compute scaled by the ratio of the reference steps
    half = summary["reference_step_ms"] / 2
    proc = suite_cmd(
        "replay", summary["run_id"], "--network", "wan", "--json", "--host-speed", str(half),
        "--tracking-uri", uri, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    faster = json.loads(proc.stdout)
    assert faster["compute_scale"] == pytest.approx(0.5)
    assert faster["network_seconds"] < wan["network_seconds"]


# -- the straggler clock on the same links -----------------------------------------------------


@pytest.mark.parametrize("slow", [(), (1,)])
@pytest.mark.parametrize("peers", ["ring", "complete"])
def test_the_straggler_clock_and_the_replay_agree(slow: tuple[int, ...], peers: str) -> None:
    """Full wait (b = 0), constant compute: a rank's iteration ends when its neighbours' models
    have crossed the links, on both clocks. The clock answers a step's messages before the
    next step's are known, so it is exact while no message shares a link with a later step's;
    on the ring a slow rank's neighbours start their next step while their bytes to it still
    move unless compute is long enough (0.02 s) to let them land."""
    W, n, steps = 4, 500_000, 6
    tau = 0.02 if peers == "ring" and slow else 0.002
    in_peers = [
        sorted({(i - 1) % W, (i + 1) % W}) if peers == "ring" else [j for j in range(W) if j != i]
        for i in range(W)
    ]
    cfg = StragglerConfig(kind="constant", base=tau, slow_ranks=slow, slow_factor=3.0,
                          network="1gbit:1ms")  # fmt: skip
    clock = VirtualClock(StragglerModel(cfg, W), in_peers, message_bytes=n)
    ends = np.array([clock.step([0] * W).end.tolist() for _ in range(steps)]).T
    records: dict[int, list[tuple]] = {}
    for r in range(W):
        gap = tau * (3.0 if r in slow else 1.0)
        outs = [i for i in range(W) if r in in_peers[i]]
        mine: list[tuple] = []
        for t in range(steps):
            mine += [(t, "send", i, n, t, gap if k == 0 else 0.0) for k, i in enumerate(outs)]
            first = len(mine)
            mine += [(t, "recv", j, n, t, 0.0) for j in in_peers[r]]
            mine += [(t, "wait", j, n, t, 0.0, first + k) for k, j in enumerate(in_peers[r])]
        records[r] = mine
    tl = replay(_trace(W, records), "1gbit:1ms")
    assert tl.step_end == pytest.approx(ends, rel=1e-9)
    # the links are what makes an iteration long: 1 ms latency plus the model's transfers
    assert ends[0, 0] > tau + 1e-3 + n / B


def test_consensus_backup_clock_crosses_the_network() -> None:
    base = ["algorithm=consensus_backup", "nproc=3", "steps=5", "model.hidden=16", "device=cpu",
            "eval_every=0", "eval_per_rank=false", "algorithm.straggler.scale=0"]  # fmt: skip
    seconds = {}
    for net in ("", "wan"):
        cfg = apply_overrides(RunConfig(), [*base, f"algorithm.straggler.network={net}"])
        seconds[net] = launch(_train, 3, (cfg,))[0][0]["virtual_seconds"]
    assert seconds[""] == pytest.approx(5 * 1.0)  # constant 1 s compute, instant links
    # each iteration: 20 ms latency plus two models (one per peer) serialised on an uplink
    assert seconds["wan"] > 5 * (1.0 + 20e-3)


def test_the_network_knobs_and_a_runs_identity() -> None:
    """``network`` only reports: it stays out of the hash reproduce skips by; the straggler
    clock's network changes training, so it is in, except at '' (as runs stored before it)."""
    from suite.recipes import config_hash

    dybw = apply_overrides(RunConfig(), ["algorithm=dybw"])
    assert config_hash("t", dybw) == config_hash("t", apply_overrides(dybw, ["network=wan"]))
    slowed = apply_overrides(dybw, ["algorithm.straggler.network=wan"])
    assert config_hash("t", dybw) != config_hash("t", slowed)


def test_op_seconds_give_the_alpha_beta_costs() -> None:
    """One call on an idle network (what costmodel's Network.time gave): the same replay."""
    net = NetworkSpec(8e6, 1e-3)  # 1 MB/s
    # ring all-reduce of 1 MB on 4 ranks: 6 latencies + 2*3/4 MB at 1 MB/s
    assert netmodel.op_seconds("all_reduce", 10**6, 4, net) == pytest.approx(6e-3 + 1.5)
    assert netmodel.op_seconds("broadcast", 10**6, 4, net) == pytest.approx(2 * (1e-3 + 1.0))
    assert netmodel.op_seconds("gather", 10**6, 4, net) == pytest.approx(2e-3 + 3.0)
    # a send and its receive posted together: the notice, then the bytes
    assert netmodel.op_seconds("send", 10**6, 4, net) == pytest.approx(2e-3 + 1.0)
    with pytest.raises(ValueError, match="valid choices"):
        netmodel.op_seconds("alltoall", 1, 2, net)


def test_an_emulated_run_gets_the_models_prediction_beside_its_time(tmp_path: Path) -> None:
    """--emulate: the model's seconds for the emulated network from the run's own trace (needs
    root and iproute2, as tests/test_emulate.py's runs). Ring all-reduce of a 1.2 MB model on 2
    ranks at 100 Mbit/s: about 0.1 s a step, measured and predicted (generous bounds). Its trace
    has the CPU seconds the model shares the host's processors with: the main thread's, and
    gloo's threads' (which move a collective's bytes)."""
    proc = suite_cmd(
        "run", "allreduce_sgd", "--nproc", "2", "--steps", "10", "--emulate", "100mbit",
        "--json", "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", "model.hidden=512,512", "--set", "eval_every=0", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = last_json(proc.stdout)
    predicted = out["emulated_model_seconds_per_step"]
    assert predicted == pytest.approx(out["emulated_model_seconds"] / 10)
    n = out["num_params"] * 4  # 2 rounds of n/2 bytes each at 12.5 MB/s
    assert predicted > n / 12.5e6
    # generous: 10 steps here include the first's connections, on a shared 2-core machine; the
    # tight band (0.85-1.15, longer runs) is in benchmarks/test_bench_netmodel_emulation.py
    assert 0.5 < out["train_seconds"] / 10 / predicted < 2.0
    assert out["emulated_cpus"] == len(os.sched_getaffinity(0))  # the model's shared processors
    (path,) = tmp_path.glob(f"mlartifacts/*/artifacts/{trace.ARTIFACT}")
    for records in trace.load(path).ranks:
        reduces = records[(records["kind"] == KIND["all_reduce"]) & (records["step"] >= 0)]
        assert len(reduces) >= 10
        assert np.isfinite(reduces["cpu"]).all() and np.isfinite(reduces["other_cpu"]).all()
        assert reduces["other_cpu"].sum() > 0


def test_suite_replay_of_a_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from suite import cli

    recs = [(0, "all_reduce", -1, 10**6, 0, 0.1, -1, 1), (0, "all_reduce", -1, 8, 0, 0.2)]
    tr = _trace(2, {r: recs for r in range(2)})
    path = tmp_path / trace.ARTIFACT
    path.write_text(trace.encode(2, list(tr.groups), list(tr.channels), list(tr.ranks)))
    rows = {}
    for flags in ((), ("--harness",)):
        assert cli.main(["replay", str(path), "--network", "1gbit:1ms", "--json", *flags]) == 0
        rows[flags] = json.loads(capsys.readouterr().out)
    comm = 2 * (LAT + 10**6 / 2 / B), 2 * (LAT + 4 / B)
    assert rows[()]["network_seconds"] == pytest.approx(0.3 + comm[1])
    assert rows[("--harness",)]["network_seconds"] == pytest.approx(0.3 + sum(comm))
    assert cli.main(["replay", str(path), "--network", "fast"]) == 2
    assert "wan (100mbit:20ms)" in capsys.readouterr().err
    # a trace file carries no host speed to rescale from
    assert cli.main(["replay", str(path), "--host-speed", "0.3"]) == 2
    assert "has none (a trace file" in capsys.readouterr().err
    assert cli.main(["replay", str(path), "--host-speed", "-1"]) == 2
    assert "--host-speed must be finite and > 0" in capsys.readouterr().err
