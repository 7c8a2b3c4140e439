"""The network model: replay a run's communication trace on a described network.

:func:`replay` takes a :class:`suite.trace.Trace` (every rank's ops in order and the measured
compute between them) and a network, and gives every rank's simulated timeline
(:class:`Timeline`): the time at the end of each step, per rank, and the run's
``network_seconds`` (the slowest rank's finish). Pure: no torch.distributed, no I/O.

The network (:class:`Network`) is a :class:`suite.network.NetworkSpec` (a preset or
``RATE[:LATENCY]``, see :mod:`suite.network`): every rank has an uplink and a downlink of the
spec's rate to one switch, and a message takes the spec's one-way latency. Where the spec sets
no latency, ``measured_latency_s`` (e.g. half an emulated link's measured round trip) stands in,
else ``DEFAULT_LATENCY_S``. Optional per-rank overrides (:class:`Link`: uplink, downlink,
latency; a message between two ranks takes the larger of their latencies) and an optional cap
on the switch's aggregate rate (``switch_bps``).

Semantics, per rank, record by record (:mod:`suite.trace`'s schema):

* compute: before each op the rank spends the record's measured ``gap`` times
  ``compute_scale`` (e.g. 0.1 for an accelerator ten times faster).
* send (issue): a transfer of the payload from the sender's uplink to the receiver's downlink.
  It starts when both are free (FIFO in the order transfers are issued, in simulated time),
  occupies both for ``bytes / min(uplink, downlink)`` and arrives ``latency`` later. The send
  completes when its bytes have left; a recv completes on arrival of the matching send, matched
  by (src, dst, tag) and order. Issuing costs nothing; a ``wait`` record blocks the rank until
  its op completes (an op without a wait record, e.g. a background wait, never blocks).
* collective: the group's n-th collective starts when its last member arrives (and its links
  are free of earlier transfers) and costs its algorithm's rounds, as :mod:`suite.wire`
  defines the algorithm (ring all_reduce: 2(N-1) rounds, ring all_gather: N-1 rounds, binomial
  tree broadcast/reduce/gather: ceil(log2 N) rounds). A round takes the latency plus its
  busiest rank link's bytes over that link's rate (or the round's total bytes over the switch
  cap, if slower); the per-round bytes come from :mod:`suite.wire` (:func:`rounds`), so they sum
  to the bytes the summary's ``wire_bytes`` counts. Every member leaves at the end.
  barrier: the synchronisation plus ceil(log2 N) rounds of latency (dissemination).
* switch cap: every transfer and round also needs ``bytes / switch_bps`` of the switch, a FIFO
  server (work-conserving: concurrent transfers share the cap, a lone one is not slowed below
  its link rate).
* harness-channel ops (the suite's own bookkeeping: metrics gathers, evaluation all-reduces,
  checkpoints) are skipped by default (``harness=False``), their gaps kept as compute.

:class:`Links` is the link state alone (the straggler clock, :mod:`suite.stragglers`, sends
over it); :func:`op_seconds` is one call's time on an idle network (the alpha-beta costs);
:func:`network_seconds` gives a summary's figures from a trace or a stored artifact.

Records before the first step (step -1: setup such as the initial parameter broadcast) are
replayed without their gaps (model building and data loading are not training). A step's end
on a rank is the end of its last record of that step; steps without records share the gap
before the next record evenly; steps after a rank's last record add its mean compute per step.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suite import wire
from suite.network import NetworkSpec, parse_network
from suite.trace import DTYPE, KIND, Trace, load

DEFAULT_LATENCY_S = 50e-6  # one switched LAN hop, for a spec that sets no latency

_SEND, _RECV, _WAIT, _BARRIER = KIND["send"], KIND["recv"], KIND["wait"], KIND["barrier"]
_NAMES = {v: k for k, v in KIND.items()}


@dataclass(frozen=True)
class Link:
    """One rank's link to the switch, overriding the spec's figures where set (bits/s, s)."""

    up_bps: float | None = None
    down_bps: float | None = None
    latency_s: float | None = None


@dataclass(frozen=True)
class Network:
    """A network to replay on: the spec, per-rank link overrides and a switch cap (bits/s)."""

    spec: NetworkSpec
    measured_latency_s: float | None = None
    links: dict[int, Link] = field(default_factory=dict)
    switch_bps: float | None = None

    @property
    def latency_s(self) -> float:
        if self.spec.latency_s is not None:
            return self.spec.latency_s
        if self.measured_latency_s is not None:
            return self.measured_latency_s
        return DEFAULT_LATENCY_S

    def rank_figures(self, world_size: int) -> tuple[list[float], list[float], list[float]]:
        """Per rank: uplink and downlink in bytes/s, latency in s."""
        up, down, lat = [], [], []
        for r in range(world_size):
            link = self.links.get(r, Link())
            up.append((link.up_bps or self.spec.bandwidth_bps) / 8)
            down.append((link.down_bps or self.spec.bandwidth_bps) / 8)
            lat.append(self.latency_s if link.latency_s is None else link.latency_s)
        return up, down, lat


def as_network(network: Network | NetworkSpec | str) -> Network:
    if isinstance(network, Network):
        return network
    if isinstance(network, str):
        network = parse_network(network)
    return Network(network)


@dataclass(frozen=True)
class Timeline:
    """The replay's result. ``step_end[r][s]``: simulated seconds at the end of step ``s`` on
    rank ``r`` (from the start of step 0's work, setup ops included)."""

    step_end: np.ndarray  # (world_size, steps)
    finish: np.ndarray  # (world_size,) each rank's last simulated moment

    @property
    def network_seconds(self) -> float:
        """The run's simulated seconds: the slowest rank's finish."""
        return float(self.finish.max()) if len(self.finish) else 0.0

    @property
    def steps(self) -> int:
        return int(self.step_end.shape[1])

    def seconds_to_step(self, steps: int) -> float:
        """Simulated seconds until every rank has done ``steps`` steps (1-based; NaN if 0,
        NaN or more than the trace holds)."""
        if not (isinstance(steps, int | np.integer) and 1 <= steps <= self.steps):
            return math.nan
        return float(self.step_end[:, steps - 1].max())

    def seconds_per_step(self) -> np.ndarray:
        """Per rank and step: simulated seconds of that step."""
        return np.diff(self.step_end, axis=1, prepend=0.0)


# -- per-round bytes of the collective algorithms, from suite.wire -----------------------------


def rounds(
    op: str, group: tuple[int, ...], root: int, payload: int
) -> list[dict[tuple[int, int], int]]:
    """The links and bytes of each round of one call, under :mod:`suite.wire`'s algorithm.

    Summed over rounds they equal :func:`suite.wire.wire_links` (tests check)."""
    N, n = len(group), int(payload)
    if N <= 1:
        return []
    depth = math.ceil(math.log2(N))
    if op == "barrier":
        return [{} for _ in range(depth)]
    if op == "all_reduce":
        chunks = wire.chunk_sizes(n, N)
        out = []
        for phase in (0, 1):  # reduce-scatter, then all-gather
            for s in range(N - 1):
                out.append(
                    {(group[i], group[(i + 1) % N]): chunks[(i - s + phase) % N] for i in range(N)}
                )
        return out
    if op == "all_gather":
        return [{(group[i], group[(i + 1) % N]): n for i in range(N)} for _ in range(N - 1)]
    r = group.index(root)
    out = [{} for _ in range(depth)]
    for v in range(1, N):
        parent, child = group[(wire.tree_parent(v) + r) % N], group[(v + r) % N]
        level = (v & -v).bit_length() - 1  # log2 of v's lowest set bit
        if op == "broadcast":  # the root's largest subtree first
            out[depth - 1 - level][(parent, child)] = n
        elif op == "reduce":  # leaves first
            out[level][(child, parent)] = n
        elif op == "gather":
            out[level][(child, parent)] = wire.subtree_size(v, N) * n
        else:
            raise ValueError(f"no rounds for op {op!r}")
    return out


# -- the replay --------------------------------------------------------------------------------


class Links:
    """Every rank's uplink and downlink, and the switch, as FIFO servers in simulated time: the
    link model a replay and the straggler clock (:class:`suite.stragglers.VirtualClock`) share."""

    def __init__(self, network: Network | NetworkSpec | str, world_size: int) -> None:
        net = as_network(network)
        self.up, self.down, self.lat = net.rank_figures(world_size)
        self.switch = None if net.switch_bps is None else net.switch_bps / 8
        self.switch_free = 0.0
        self.up_free = [0.0] * world_size
        self.down_free = [0.0] * world_size

    def transfer(self, src: int, dst: int, n: int, t: float) -> tuple[float, float]:
        """Place ``n`` bytes from ``src`` to ``dst`` issued at ``t`` (after every transfer placed
        before it on either link); (time its bytes have left, time they have arrived)."""
        start = max(t, self.up_free[src], self.down_free[dst])
        end = start + n / min(self.up[src], self.down[dst])
        if self.switch is not None:
            self.switch_free = max(self.switch_free, start) + n / self.switch
            end = max(end, self.switch_free)
        self.up_free[src] = self.down_free[dst] = end
        return end, end + max(self.lat[src], self.lat[dst])


class _Sim:
    def __init__(self, trace: Trace, net: Network, compute_scale: float, harness: bool) -> None:
        self.trace = trace
        self.W = trace.world_size
        self.links = Links(net, self.W)
        self.up, self.down, self.lat = self.links.up, self.links.down, self.links.lat
        self.switch = self.links.switch
        self.up_free, self.down_free = self.links.up_free, self.links.down_free
        self.transfer = self.links.transfer
        self.scale = compute_scale
        self.records = [self._prepare(r, harness) for r in range(self.W)]
        self.costs: dict[tuple[int, int, int, int], float] = {}

    def _prepare(self, rank: int, harness: bool) -> list[list[Any]]:
        """The rank's records as lists [step, kind, group, peer, payload, tag, gap, ref], harness
        ops dropped (their gaps carried to the next kept record) unless ``harness``."""
        rec = self.trace.ranks[rank]
        hc = self.trace.channels.index("harness") if "harness" in self.trace.channels else -1
        cols = [rec[f].tolist() for f in ("step", "kind", "group", "peer", "payload", "tag",
                                           "channel", "gap", "ref")]  # fmt: skip
        out: list[list[Any]] = []
        new_index: dict[int, int] = {}
        carry = 0.0
        for i, (step, kind, g, peer, n, tag, ch, gap, ref) in enumerate(zip(*cols, strict=True)):
            if step < 0:
                gap = 0.0  # setup before step 0 is not training compute
            skip = (ch == hc and not harness) or (kind == _WAIT and ref not in new_index)
            if skip:
                carry += gap
                continue
            new_index[i] = len(out)
            out.append([step, kind, g, peer, n, tag, gap + carry,
                        new_index[ref] if kind == _WAIT else -1])  # fmt: skip
            carry = 0.0
        return out

    def collective(self, kind: int, g: int, root: int, n: int) -> float:
        """Seconds of one call, from its rounds (cached: a run repeats a few calls)."""
        key = (kind, g, root, n)
        cost = self.costs.get(key)
        if cost is None:
            group = self.trace.groups[g]
            cost = 0.0
            for links in rounds(_NAMES[kind], group, root, n):
                up: dict[int, int] = {}
                down: dict[int, int] = {}
                for (s, d), b in links.items():
                    up[s] = up.get(s, 0) + b
                    down[d] = down.get(d, 0) + b
                busy = max([b / self.up[s] for s, b in up.items()]
                           + [b / self.down[d] for d, b in down.items()], default=0.0)  # fmt: skip
                if self.switch is not None:
                    busy = max(busy, sum(links.values()) / self.switch)
                lat = max([max(self.lat[s], self.lat[d]) for s, d in links]
                          or [max(self.lat[r] for r in group)])  # fmt: skip
                cost += lat + busy
            self.costs[key] = cost
        return cost

    def run(self) -> list[list[float]]:
        """Every record's end time, per rank."""
        W, records = self.W, self.records
        ends: list[list[float]] = [[0.0] * len(records[r]) for r in range(W)]
        t = [0.0] * W
        pos = [0] * W
        gap_done = [False] * W
        done: list[dict[int, float]] = [{} for _ in range(W)]  # record -> completion time
        arrivals: dict[tuple[int, int, int], deque[float]] = {}  # (src, dst, tag) -> arrivals
        recvs: dict[tuple[int, int, int], deque[tuple[int, int]]] = {}  # pending (rank, index)
        waiting: dict[tuple[int, int], int] = {}  # (rank, recv index) -> its wait's index
        calls: dict[int, dict[int, list[tuple[int, float]]]] = {}  # group -> call -> arrivals
        ncalls = [dict[int, int]() for _ in range(W)]
        heap = [(0.0, r) for r in range(W) if records[r]]
        heapq.heapify(heap)

        def finish(r: int, when: float) -> None:
            ends[r][pos[r]] = when
            t[r] = when
            pos[r] += 1
            gap_done[r] = False
            if pos[r] < len(records[r]):
                heapq.heappush(heap, (when, r))

        def complete_recv(r: int, i: int, when: float) -> None:
            done[r][i] = when
            w = waiting.pop((r, i), None)
            if w is not None:  # the rank is blocked on this recv's wait
                finish(r, max(t[r], when))

        while heap:
            now, r = heapq.heappop(heap)
            rec = records[r][pos[r]]
            _, kind, g, peer, n, tag, gap, ref = rec
            if not gap_done[r]:  # compute first, then come back at the op's start
                gap_done[r] = True
                t[r] = now + gap * self.scale
                heapq.heappush(heap, (t[r], r))
                continue
            i = pos[r]
            if kind == _SEND:
                left, arrival = self.transfer(r, peer, n, now)
                done[r][i] = left
                key = (r, peer, tag)
                pending = recvs.get(key)
                if pending:
                    complete_recv(*pending.popleft(), arrival)
                else:
                    arrivals.setdefault(key, deque()).append(arrival)
                finish(r, now)
            elif kind == _RECV:
                key = (peer, r, tag)
                ready = arrivals.get(key)
                if ready:
                    done[r][i] = ready.popleft()
                else:
                    recvs.setdefault(key, deque()).append((r, i))
                finish(r, now)
            elif kind == _WAIT:
                if ref in done[r]:
                    finish(r, max(now, done[r][ref]))
                else:  # blocked until the matching send is issued
                    waiting[(r, ref)] = i
            else:
                group = self.trace.groups[g]
                c = ncalls[r].get(g, 0)
                ncalls[r][g] = c + 1
                here = max(now, self.up_free[r], self.down_free[r])
                arrived = calls.setdefault(g, {}).setdefault(c, [])
                arrived.append((r, here))
                if len(arrived) == len(group):
                    del calls[g][c]
                    start = max(a for _, a in arrived)
                    end = start + self.collective(kind, g, peer, n)
                    for m, _ in arrived:
                        self.up_free[m] = self.down_free[m] = end
                        finish(m, end)
        stuck = [r for r in range(W) if pos[r] < len(records[r])]
        if stuck:
            r = stuck[0]
            raise ValueError(
                f"trace cannot be replayed: rank {r} blocked at record {pos[r]} "
                f"({_NAMES[records[r][pos[r]][1]]}) with no matching op on its peers"
            )
        return ends


def replay(
    trace: Trace,
    network: Network | NetworkSpec | str,
    *,
    compute_scale: float = 1.0,
    harness: bool = False,
    steps: int | None = None,
) -> Timeline:
    """Replay ``trace`` on ``network`` (see the module docstring). ``steps``: the run's step
    count (default: the last step the trace records, plus one)."""
    if not (math.isfinite(compute_scale) and compute_scale >= 0):
        raise ValueError(f"compute_scale must be finite and >= 0, got {compute_scale}")
    sim = _Sim(trace, as_network(network), compute_scale, harness)
    ends = sim.run()
    if steps is None:
        steps = 1 + max((int(r["step"].max()) for r in trace.ranks if len(r)), default=-1)
    step_end = np.zeros((trace.world_size, max(steps, 0)))
    finish = np.zeros(trace.world_size)
    for r in range(trace.world_size):
        step_end[r], finish[r] = _step_ends(sim.records[r], ends[r], steps, compute_scale)
    return Timeline(step_end, finish)


def _step_ends(
    records: list[list[Any]], ends: list[float], steps: int, scale: float
) -> tuple[np.ndarray, float]:
    """One rank's step ends from its records' end times (see the module docstring)."""
    out = np.full(steps, math.nan)
    prev_step, prev_end, compute = -1, 0.0, 0.0
    for rec, end in zip(records, ends, strict=True):
        step, gap = rec[0], rec[6] * scale
        compute += gap
        # steps prev_step .. step-1 end inside this record's gap, which starts at prev_end
        for s in range(max(prev_step, 0), min(step, steps)):
            out[s] = prev_end + gap * (s - prev_step) / (step - prev_step)
        prev_step, prev_end = max(prev_step, step), end
    if 0 <= prev_step < steps:
        out[prev_step] = prev_end
    per_step = compute / (prev_step + 1) if prev_step >= 0 else 0.0
    for s in range(prev_step + 1, steps):  # no records left: the mean compute per step
        out[s] = prev_end + (s - prev_step) * per_step
    return out, max(float(out[-1]) if steps else 0.0, prev_end)


def op_seconds(
    op: str, payload: int, world_size: int, network: Network | NetworkSpec | str
) -> float:
    """Seconds of one call of ``op`` (``payload`` bytes per rank, root 0, ranks ``0..N-1``) on
    an otherwise idle network: a one-op trace replayed, so the same model as a run's."""
    if op not in wire.OPS:
        raise ValueError(f"no network model for op {op!r}; valid choices: {', '.join(wire.OPS)}")
    ranks: dict[int, list[tuple]] = {}
    if op == "send":
        world_size = 2
        ranks = {0: [(0, KIND["send"], 0, 1, payload, 0, 0, 0.0, 0.0, -1),
                     (0, _WAIT, 0, 1, payload, 0, 0, 0.0, 0.0, 0)],
                 1: [(0, _RECV, 0, 0, payload, 0, 0, 0.0, 0.0, -1),
                     (0, _WAIT, 0, 0, payload, 0, 0, 0.0, 0.0, 0)]}  # fmt: skip
    else:
        one = (0, KIND[op], 0, 0, payload, 0, 0, 0.0, 0.0, -1)
        ranks = {r: [one] for r in range(world_size)}
    arrays = tuple(np.array(ranks[r], dtype=DTYPE) for r in range(world_size))
    trace = Trace(world_size, (tuple(range(world_size)),), ("algorithm",), arrays)
    return replay(trace, network).network_seconds


def network_seconds(
    trace: Trace | str | bytes,
    network: Network | NetworkSpec | str,
    *,
    steps_to_target: float | None = None,
    **options: Any,
) -> dict[str, float]:
    """The summary's figures for a trace (or a stored ``trace.npz.b64``'s text or path) on a
    network: ``network_seconds``, ``network_seconds_per_step`` and, with ``steps_to_target``,
    ``network_seconds_to_target`` (NaN when the target was never reached)."""
    if not isinstance(trace, Trace):
        trace = load(trace)
    timeline = replay(trace, network, **options)
    out = {
        "network_seconds": timeline.network_seconds,
        "network_seconds_per_step": timeline.network_seconds / max(timeline.steps, 1),
    }
    if steps_to_target is not None:
        reached = isinstance(steps_to_target, int | np.integer) or (
            isinstance(steps_to_target, float) and steps_to_target.is_integer()
        )
        out["network_seconds_to_target"] = (
            timeline.seconds_to_step(int(steps_to_target)) if reached else math.nan
        )
    return out
