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
  ``compute_scale`` (e.g. 0.1 for an accelerator ten times faster). By default every rank
  has a processor of its own. With ``Network.cpus`` (:class:`Processors`) the ranks share that
  many processors, each rank at most one, shared equally among the ranks computing at a
  moment (processor sharing, the fluid model of the OS scheduler's fair share): the host of an
  emulated run, where 4 ranks on 2 cores cannot all compute at once. There a gap lasts at
  least its measured wall time and at least until its record's ``cpu`` (the rank's own CPU
  seconds; its ``gap`` where unknown), times ``compute_scale``, has run on the shared
  processors. The wall time holds whatever slowed the rank then (a long compute preempted by
  the other ranks, other jobs on the host); the processors add the waits the trace put
  elsewhere: a rank woken when a collective ends waits for a core inside that op, which the
  trace counts as communication, then runs its gap unpreempted. The CPU work of the rank's
  other threads (a record's ``other_cpu``: gloo's threads moving and reducing bytes, and the
  kernel's TCP and link work charged to them) shares those processors too: a blocking
  collective's members leave when its rounds are done and their ``other_cpu``, started when
  the collective starts, has run (moving the bytes needs a core: with 4 ranks on 2 cores, a
  small all-gather among ranks that compute is bound by it). An async op's (sends, receives,
  a DDP bucket's all-reduce) is not charged: its bytes move while its rank goes on.
* links (:class:`Links`): a fluid model. Every message is a flow over the sender's uplink and
  the receiver's downlink (and the switch, if capped); the flows moving at a moment share each
  link max-min fairly (progressive filling: TCP's fair share), so two flows through one link
  get half its rate each and a flow that finishes frees its share for the others. The flows of
  one direction of a rank pair move one at a time, in order (gloo keeps one TCP connection per
  pair). A message arrives ``latency + message_overhead_s`` after its last byte has left.
* send / recv: gloo's rendezvous. A recv sends the sender a notice (no bytes, in the pair's
  order: behind whatever the receiver already sends on that pair); a send's bytes move once
  the send is issued and the notice has arrived, matched by (src, dst, tag) and order, so a
  message whose receive is posted when it is sent costs two latencies plus its bytes. The
  send completes when its bytes have left, the recv when they have arrived. Issuing costs
  nothing; a ``wait`` record blocks the rank until its op completes (an op without a wait
  record, e.g. a background wait, never blocks).
* collective: the group's n-th collective starts when its last member arrives and runs its
  algorithm's rounds, as :mod:`suite.wire` defines the algorithm (ring all_reduce: 2(N-1)
  rounds, ring all_gather: N-1 rounds, binomial tree broadcast/reduce/gather: ceil(log2 N)
  rounds): a round's transfers (from :func:`rounds`, summing to the summary's ``wire_bytes``)
  start together as flows on the shared links, and the next round starts when all have
  arrived. On an idle network a round takes the latency plus its busiest link's bytes over its
  rate (the alpha-beta cost). Every member leaves at the end, but one that issued it async (a
  ``wait`` record refers to it: a DDP bucket's all-reduce) goes on computing at once and
  blocks at that wait instead, so communication overlaps compute. barrier: ceil(log2 N)
  rounds of latency (dissemination).
* switch cap: ``switch_bps`` is one more link every flow crosses (a lone flow is not slowed
  below its link rate when the cap is higher).
* harness-channel ops (the suite's own bookkeeping: metrics gathers, evaluation all-reduces,
  checkpoints) are skipped by default (``harness=False``), their gaps kept as compute.

Checked against real shaped links (``suite run --emulate``, README "Network time" and
``tests/benchmarks/test_bench_netmodel_emulation.py``): :func:`emulated_network` is the
network such a run had (measured rate and round trip, gloo's measured per-message cost).

:class:`Links` is the link state alone (the straggler clock, :mod:`suite.stragglers`, sends
over it); :func:`op_seconds` is one call's time on an idle network (the alpha-beta costs);
:func:`network_seconds` gives a summary's figures from a trace or a stored artifact.

Records before the first step (step -1: setup such as the initial parameter broadcast) are
replayed without their gaps (model building and data loading are not training). A step's end
on a rank is the end of its last record of that step; steps without records share the gap
before the next record evenly; steps after a rank's last record share its ``tail`` (the compute
the trace measured after that record, to the end of training) evenly, and the rank finishes
after its tail: a one-worker run, which records no ops, replays to its compute. Traces without
a tail (written before it) give those steps the rank's mean compute per step instead.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from suite import wire
from suite.network import NetworkSpec, parse_network
from suite.trace import DTYPE, KIND, Trace, load

DEFAULT_LATENCY_S = 50e-6  # one switched LAN hop, for a spec that sets no latency
# gloo's own cost per message over TCP (its notices, framing, wake-ups), beyond the link's
# latency: 8-byte all_reduce (6 messages) 0.61 ms and send (a notice and the bytes) 0.43 ms on
# 4 emulated 1 Gbit/s ranks of this 2-core machine (notes in README, "Network time").
GLOO_MESSAGE_OVERHEAD_S = 1e-4
_EPS = 1e-6  # bytes: a flow with less left has left

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
    """A network to replay on: the spec, per-rank link overrides, a switch cap (bits/s), a
    fixed cost per message (s, beyond the latency; 0 by default, see emulated_network) and the
    processors the ranks' compute shares (None: one per rank)."""

    spec: NetworkSpec
    measured_latency_s: float | None = None
    links: dict[int, Link] = field(default_factory=dict)
    switch_bps: float | None = None
    message_overhead_s: float = 0.0
    cpus: int | None = None

    def __post_init__(self) -> None:
        if self.cpus is not None and self.cpus < 1:
            raise ValueError(f"cpus must be >= 1 (or None: one per rank), got {self.cpus}")

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


def emulated_network(spec: NetworkSpec, measured: dict[str, Any]) -> Network:
    """The network an emulated run (``suite run --emulate``) really had, from its summary's
    measured figures: the links' measured throughput (median) as the rate, half the measured
    round trip where the spec sets no latency, gloo's per-message cost
    (``GLOO_MESSAGE_OVERHEAD_S``) and the host's processors (``emulated_cpus``), which all
    its ranks shared."""
    rate = measured.get("measured_throughput_bps") or spec.bandwidth_bps
    rtt = measured.get("measured_rtt_s")
    return Network(
        NetworkSpec(rate, spec.latency_s, spec.name),
        measured_latency_s=None if rtt is None else rtt / 2,
        message_overhead_s=GLOO_MESSAGE_OVERHEAD_S,
        cpus=measured.get("emulated_cpus"),
    )


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
    """Every rank's uplink and downlink, and the switch, as a fluid network in simulated time:
    the link model a replay and the straggler clock (:class:`suite.stragglers.VirtualClock`)
    share. The flows moving at a moment share every link max-min fairly (progressive filling,
    the fluid model of TCP's fair share); the flows of one direction of a rank pair move one at
    a time, in order (gloo keeps one TCP connection per pair). Start flows with :meth:`start` at
    non-decreasing times, finish them with :meth:`pop`; :meth:`exchange` runs a batch of
    point-to-point messages (the straggler clock's step)."""

    def __init__(self, network: Network | NetworkSpec | str, world_size: int) -> None:
        net = as_network(network)
        self.up, self.down, self.lat = net.rank_figures(world_size)
        self.overhead = net.message_overhead_s
        self.switch = None if net.switch_bps is None else net.switch_bps / 8
        # links as integers: rank r's uplink r, its downlink W + r, the switch 2W
        self.world = world_size
        self.capacity = [*self.up, *self.down, self.switch or 0.0]
        self.now = 0.0
        self.queues: dict[tuple[int, int], deque[int]] = {}  # directed pair -> its flows
        # id -> [src, dst, bytes left, rate, time it left if in the past, its links]
        self.flows: dict[int, list[Any]] = {}
        self.busy_until: dict[int, float] = {}  # link -> when its last flow left
        self.active: list[int] = []  # every pair's first flow: the ones moving
        self.moving: set[int] = set()  # active flows that had bytes to move when they started
        self.on_link: dict[int, int] = {}  # link -> active flows through it
        self.moving_on_link: dict[int, int] = {}  # link -> moving flows through it
        self._ids = 0
        self._next: float | None = None  # next_time's answer while nothing changes

    def delay(self, src: int, dst: int) -> float:
        """A message's time from its last byte leaving to its arrival."""
        return max(self.lat[src], self.lat[dst]) + self.overhead

    def start(self, src: int, dst: int, n: int, t: float) -> int:
        """Queue ``n`` bytes from ``src`` to ``dst`` at ``t``; the flow's id, which :meth:`pop`
        gives back when it has left. A ``t`` before the last event (the straggler clock asks
        step by step) is kept where the flow's links have been idle since ``t``, which makes it
        exact; else the flow starts at the last event."""
        fid = self._ids
        self._ids += 1
        self._next = None
        queue = self.queues.setdefault((src, dst), deque())
        links = (src, self.world + dst) + ((2 * self.world,) if self.switch is not None else ())
        flow = [src, dst, float(n), 0.0, None, links]
        self.flows[fid] = flow
        if t < self.now and not queue and self._idle_since(links) <= t:
            rate = min(self.up[src], self.down[dst])
            if n <= rate * (self.now - t):
                flow[2], flow[4] = 0.0, t + n / rate
            else:
                flow[2] = n - rate * (self.now - t)
        self._advance(max(t, self.now))
        queue.append(fid)
        if len(queue) == 1 and self._activate(fid):
            self._rates()
        return fid

    def _activate(self, fid: int) -> bool:
        """Make ``fid`` its pair's moving flow; False when no other flow's rate changes (it has
        no bytes left, or it shares no link with a moving flow: it gets its links' rate)."""
        self.active.append(fid)
        flow = self.flows[fid]
        for link in flow[5]:
            self.on_link[link] = self.on_link.get(link, 0) + 1
        if flow[2] <= _EPS:  # done already (a zero-byte notice): takes no share of any link
            return False
        self.moving.add(fid)
        alone = True
        for link in flow[5]:
            count = self.moving_on_link.get(link, 0)
            alone = alone and count == 0
            self.moving_on_link[link] = count + 1
        if alone:  # max-min fairness is per connected component: the others keep their rates
            flow[3] = min(self.capacity[link] for link in flow[5])
        return not alone

    def _deactivate(self, fid: int, flow: list[Any]) -> bool:
        """Take ``fid`` (``flow``) out of the moving flows; False when no other flow's rate
        changes."""
        self.active.remove(fid)
        for link in flow[5]:
            self.on_link[link] -= 1
        if fid not in self.moving:
            return False
        self.moving.discard(fid)
        shared = False
        for link in flow[5]:
            self.moving_on_link[link] -= 1
            shared = shared or self.moving_on_link[link] > 0
        return shared

    def _idle_since(self, links: tuple[int, ...]) -> float:
        """Since when the links ``links`` (a flow's) have carried no bytes (inf: one carries a
        flow now, or a switch cap couples every flow)."""
        if self.switch is not None:
            return math.inf
        if any(self.on_link.get(link, 0) for link in links):
            return math.inf
        return max(self.busy_until.get(link, 0.0) for link in links)

    def next_time(self) -> float:
        """When the next flow's last byte leaves at the current rates (inf if none moves)."""
        if self._next is None:  # kept until a flow starts, leaves, moves or changes rate
            best = math.inf
            for fid in self.active:
                flow = self.flows[fid]
                if flow[2] <= _EPS:
                    best = 0.0
                    break
                if flow[3] > 0 and flow[2] / flow[3] < best:
                    best = flow[2] / flow[3]
            self._next = self.now + best
        return self._next

    def pop(self) -> tuple[int, float]:
        """Finish the next flow: (its id, the time its last byte has left)."""
        when = self.next_time()
        if math.isinf(when):
            raise ValueError("no flow is moving")
        self._advance(when)
        fid = min(self.active, key=lambda f: self.flows[f][2] / (self.flows[f][3] or 1e-300))
        flow = self.flows.pop(fid)
        self._next = None
        src, dst, _, _, past, links = flow
        if past is not None:
            when = past
        for link in links:
            self.busy_until[link] = max(self.busy_until.get(link, 0.0), when)
        changed = self._deactivate(fid, flow)
        queue = self.queues[(src, dst)]
        queue.popleft()
        if queue:
            changed = self._activate(queue[0]) or changed
        if changed:
            self._rates()
        return fid, when

    def exchange(
        self, messages: list[tuple[int, int, int, float, float]]
    ) -> list[tuple[float, float]]:
        """Point-to-point messages ``(src, dst, bytes, sent at, receive posted at)`` under
        gloo's rendezvous, as a replay runs them: the receiver's notice (no bytes, ``dst`` to
        ``src``, in that pair's order) leaves when the receive is posted, and the bytes move
        once the sender has sent and heard the notice. Per message (time its bytes have left,
        time they have arrived); returns when every one has arrived."""
        out = [(math.nan, math.nan)] * len(messages)
        events = [(recv_at, 1, k) for k, (*_, recv_at) in enumerate(messages)]
        heapq.heapify(events)  # at a tie a rank's bytes start before its notices, as a replay's
        roles: dict[int, tuple[int, int]] = {}
        left = len(messages)
        while left:
            flow_at = self.next_time() if self.active else math.inf
            if events and events[0][0] < flow_at:
                t, kind, k = heapq.heappop(events)
                src, dst, n = messages[k][:3]
                fid = self.start(dst, src, 0, t) if kind else self.start(src, dst, n, t)
                roles[fid] = (kind, k)
                continue
            fid, when = self.pop()
            kind, k = roles.pop(fid, (-1, -1))
            if kind == 1:
                src, dst, _, sent_at, _ = messages[k]
                heapq.heappush(events, (max(sent_at, when + self.delay(dst, src)), 0, k))
            elif kind == 0:
                out[k] = (when, when + self.delay(*messages[k][:2]))
                left -= 1
        return out

    def _advance(self, t: float) -> None:
        dt = t - self.now
        if dt > 0:
            self._next = None
            for fid in self.active:
                flow = self.flows[fid]
                flow[2] = max(flow[2] - flow[3] * dt, 0.0)
        self.now = max(self.now, t)

    def _rates(self) -> None:
        """Max-min fair rates of the moving flows by progressive filling: raise every unfrozen
        flow's rate alike until a link is full, freeze the flows through it, repeat. The links
        are taken in order of their fair share (a heap): freezing a link's flows at the lowest
        share never lowers another link's, so each link's share when it comes up is final."""
        self._next = None
        uses: dict[int, list[int]] = {}
        for fid in self.moving:
            for link in self.flows[fid][5]:
                uses.setdefault(link, []).append(fid)
        left = {link: self.capacity[link] for link in uses}
        count = {link: len(fids) for link, fids in uses.items()}
        share = {link: left[link] / count[link] for link in uses}
        heap = [(s, link) for link, s in share.items()]
        heapq.heapify(heap)
        frozen: set[int] = set()
        while heap:
            s, link = heapq.heappop(heap)
            if not count[link] or s != share[link]:  # done, or a stale entry
                continue
            touched = set()
            for fid in uses[link]:
                if fid in frozen:
                    continue
                frozen.add(fid)
                flow = self.flows[fid]
                flow[3] = s
                for other in flow[5]:
                    left[other] -= s
                    count[other] -= 1
                    touched.add(other)
            for other in touched:  # their shares once, after all of this link's flows froze
                if count[other]:
                    share[other] = left[other] / count[other]
                    heapq.heappush(heap, (share[other], other))


class Processors:
    """``count`` processors shared by the ranks' work in simulated time: processor sharing,
    every task at rate ``min(1, count / tasks)`` (none runs faster than one processor). A task
    is a rank's compute (keyed by the rank) or an op's own CPU work (keyed by (rank, record)).
    Start one with :meth:`start` at non-decreasing times, finish the next with :meth:`pop`."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.left: dict[Hashable, float] = {}  # task -> processor seconds still to run
        self.now = 0.0

    def _rate(self) -> float:
        return min(1.0, self.count / len(self.left)) if self.left else 0.0

    def _advance(self, t: float) -> None:
        if self.left and t > self.now:
            done = (t - self.now) * self._rate()
            for rank in self.left:
                self.left[rank] -= done
        self.now = max(self.now, t)

    def start(self, task: Hashable, seconds: float, when: float) -> None:
        self._advance(when)
        self.left[task] = seconds

    def next_time(self) -> float:
        """When the next task ends at the current rate (inf if none runs)."""
        if not self.left:
            return math.inf
        return self.now + max(min(self.left.values()), 0.0) / self._rate()

    def pop(self) -> tuple[Hashable, float]:
        """Finish the next task: (its key, its end)."""
        when = self.next_time()
        task = min(self.left, key=self.left.__getitem__)
        self._advance(when)
        del self.left[task]
        return task, when


class _Sim:
    def __init__(self, trace: Trace, net: Network, compute_scale: float, harness: bool) -> None:
        self.trace = trace
        self.W = trace.world_size
        self.net = net
        self.links = Links(net, self.W)
        self.cpus = None if net.cpus is None else Processors(net.cpus)
        self.scale = compute_scale
        # per rank: the gaps of harness ops after its last kept record (its compute there)
        self.trailing = [0.0] * self.W
        self.records = [self._prepare(r, harness) for r in range(self.W)]
        # per rank, the records a wait refers to: async ops (a collective among them does not
        # block the rank that issued it; its wait does)
        self.awaited = [{rec[7] for rec in recs if rec[1] == _WAIT} for recs in self.records]
        self.costs: dict[tuple[int, int, int, int], float] = {}

    def idle_cost(self, kind: int, g: int, root: int, n: int) -> float:
        """Seconds of one collective of every rank on an idle network: nothing else can move
        while it runs, so its rounds on fresh links are exact (cached: a run repeats a few)."""
        key = (kind, g, root, n)
        if key not in self.costs:
            group, links, t = self.trace.groups[g], Links(self.net, self.W), 0.0
            for plan in rounds(_NAMES[kind], group, root, n):
                ends, sd = [t], {}
                for (src, dst), b in plan.items():
                    sd[links.start(src, dst, b, t)] = (src, dst)
                while links.active:
                    fid, when = links.pop()
                    ends.append(when + links.delay(*sd[fid]))
                if not plan:  # barrier: latency only
                    ends.append(t + max(links.delay(a, b) for a in group for b in group if a != b))
                t = max(ends)
            self.costs[key] = t
        return self.costs[key]

    def _prepare(self, rank: int, harness: bool) -> list[list[Any]]:
        """The rank's records as lists [step, kind, group, peer, payload, tag, gap, ref, cpu,
        other_cpu], harness ops dropped (their gaps, and their CPU as compute, carried to the next
        kept record) unless ``harness``; ``cpu`` is the gap where the trace does not know it,
        ``other_cpu`` 0."""
        rec = self.trace.ranks[rank]
        hc = self.trace.channels.index("harness") if "harness" in self.trace.channels else -1
        cols = [rec[f].tolist() for f in ("step", "kind", "group", "peer", "payload", "tag",
                                           "channel", "gap", "ref")]  # fmt: skip
        names = rec.dtype.names or ()
        cpus = rec["cpu"].tolist() if "cpu" in names else cols[7]
        other_cpus = rec["other_cpu"].tolist() if "other_cpu" in names else [0.0] * len(cpus)
        out: list[list[Any]] = []
        new_index: dict[int, int] = {}
        carry = carry_cpu = 0.0
        for i, (step, kind, g, peer, n, tag, ch, gap, ref) in enumerate(zip(*cols, strict=True)):
            cpu = cpus[i] if math.isfinite(cpus[i]) else gap
            other_cpu = other_cpus[i] if math.isfinite(other_cpus[i]) else 0.0
            if step < 0:
                gap = cpu = other_cpu = 0.0  # setup before step 0 is not training compute
            skip = (ch == hc and not harness) or (kind == _WAIT and ref not in new_index)
            if skip:
                carry += gap
                carry_cpu += cpu + other_cpu
                continue
            new_index[i] = len(out)
            out.append([step, kind, g, peer, n, tag, gap + carry,
                        new_index[ref] if kind == _WAIT else -1, cpu + carry_cpu,
                        other_cpu])  # fmt: skip
            carry = carry_cpu = 0.0
        self.trailing[rank] = carry
        return out

    def run(self) -> list[list[float]]:
        """Every record's end time, per rank: an event loop over the ranks' records, flows
        leaving the links and messages arriving, in simulated time order."""
        W, records, links, cpus = self.W, self.records, self.links, self.cpus
        ends: list[list[float]] = [[0.0] * len(records[r]) for r in range(W)]
        t = [0.0] * W
        pos = [0] * W
        gap_done = [False] * W
        done: list[dict[int, float]] = [{} for _ in range(W)]  # record -> completion time
        waiting: dict[tuple[int, int], int] = {}  # (rank, op index) -> its wait's index
        sends: dict[tuple[int, int, int], deque[tuple[int, int, float]]] = {}  # unmatched
        ready: dict[tuple[int, int, int], deque[float]] = {}  # recv-ready notices arrived
        recvs: dict[tuple[int, int, int], deque[int]] = {}  # posted recvs, in order
        calls: dict[int, dict[int, list[tuple[int, float]]]] = {}  # group -> call -> arrivals
        ncalls = [dict[int, int]() for _ in range(W)]
        on_left: dict[int, Any] = {}  # flow id -> what its end does
        on_cpu: dict[tuple[int, int], Any] = {}  # a collective's CPU work -> what its end does
        heap: list[tuple[float, int, Any]] = []
        seq = [0]

        def at(when: float, fn: Any) -> None:
            seq[0] += 1
            heapq.heappush(heap, (when, seq[0], fn))

        def finish(r: int, when: float) -> None:
            ends[r][pos[r]] = when
            t[r] = when
            pos[r] += 1
            gap_done[r] = False
            if pos[r] < len(records[r]):
                at(when, lambda: advance(r, when))

        def gated(r: int, i: int, start: float) -> Any:
            """What ends blocking collective ``i`` of rank ``r`` when its rounds are done: the
            rank goes on once they are and its ``other_cpu`` (gloo's threads moving this op's
            bytes, from ``start``) has run on the shared processors, whichever is later. An
            async op's ``other_cpu`` (its bytes move while its rank computes or waits) is not
            charged: it overlaps the transfer (README, "Network time")."""
            release = lambda when: finish(r, when)  # noqa: E731
            c = records[r][i][9]
            if cpus is None or c <= 0:
                return release
            parts = [2, start]  # parts still to come, the latest end so far

            def part(when: float) -> None:
                parts[0] -= 1
                parts[1] = max(parts[1], when)
                if parts[0] == 0:
                    release(parts[1])

            on_cpu[(r, i)] = part
            cpus.start((r, i), c * self.scale, start)
            return part

        def complete(r: int, i: int, when: float) -> None:
            done[r][i] = when
            w = waiting.pop((r, i), None)
            if w is not None:  # the rank is blocked on this op's wait
                finish(r, max(t[r], when))

        def data(r: int, i: int, peer: int, n: int, key: tuple, when: float) -> None:
            """The matched send's bytes start; the peer's first posted recv gets them."""
            j = recvs[key].popleft()
            fid = links.start(r, peer, n, when)

            def left(tl: float) -> None:
                complete(r, i, tl)
                complete(peer, j, tl + links.delay(r, peer))

            on_left[fid] = left

        def match(key: tuple) -> None:
            while sends.get(key) and ready.get(key):
                r, i, issued = sends[key].popleft()
                notice = ready[key].popleft()
                rec = records[r][i]
                when = max(issued, notice)
                at(when, lambda r=r, i=i, p=rec[3], n=rec[4], w=when: data(r, i, p, n, key, w))

        def leave(members: list[tuple[int, int, Any]], when: float) -> None:
            """The collective's rounds are done: a blocked member goes on (``gated``), an async
            one's record completes (its wait may be blocked on it)."""
            for m, i, exit_ in members:
                if exit_ is None:
                    complete(m, i, when)
                else:
                    exit_(when)

        def collective(group: tuple[int, ...], members: list[tuple[int, int, Any]], kind: int,
                       root: int, n: int, when: float) -> None:  # fmt: skip
            plan = rounds(_NAMES[kind], group, root, n)

            def round_(k: int, start: float) -> None:
                if k == len(plan):
                    leave(members, start)
                    return
                flows = [(s, d, b) for (s, d), b in plan[k].items()]
                if not flows:  # barrier: latency only
                    lat = max(links.delay(a, b) for a in group for b in group if a != b)
                    at(start + lat, lambda: round_(k + 1, start + lat))
                    return
                pending = [len(flows), start]

                def left(s: int, d: int, tl: float) -> None:
                    pending[0] -= 1
                    pending[1] = max(pending[1], tl + links.delay(s, d))
                    if pending[0] == 0:
                        at(pending[1], lambda: round_(k + 1, pending[1]))

                for s, d, b in flows:
                    on_left[links.start(s, d, b, start)] = lambda tl, s=s, d=d: left(s, d, tl)

            round_(0, when)

        def advance(r: int, now: float) -> None:
            rec = records[r][pos[r]]
            _, kind, g, peer, n, tag, gap, ref, cpu, _ = rec
            if not gap_done[r]:  # compute first, then come back at the op's start
                gap_done[r] = True
                t[r] = now + gap * self.scale  # at least its measured wall time
                if cpus is not None and cpu > 0:  # and its CPU seconds on the shared processors
                    cpus.start(r, cpu * self.scale, now)
                    return
                at(t[r], lambda: advance(r, t[r]))
                return
            i = pos[r]
            if kind == _SEND:  # gloo: the bytes move once the receiver's recv-ready arrives
                key = (r, peer, tag)
                sends.setdefault(key, deque()).append((r, i, now))
                match(key)
                finish(r, now)
            elif kind == _RECV:  # a recv-ready notice to the sender, behind what we send it
                key = (peer, r, tag)
                recvs.setdefault(key, deque()).append(i)
                fid = links.start(r, peer, 0, now)

                def noticed(tl: float, key: tuple = key, r: int = r, p: int = peer) -> None:
                    ready.setdefault(key, deque()).append(tl + links.delay(r, p))
                    match(key)

                on_left[fid] = noticed
                finish(r, now)
            elif kind == _WAIT:
                if ref in done[r]:
                    finish(r, max(now, done[r][ref]))
                else:  # blocked until the op completes
                    waiting[(r, ref)] = i
            else:
                group = self.trace.groups[g]
                c = ncalls[r].get(g, 0)
                ncalls[r][g] = c + 1
                arrived = calls.setdefault(g, {}).setdefault(c, [])
                arrived.append((r, now, i))
                if len(arrived) == len(group):
                    del calls[g][c]
                    start = max(a for _, a, _ in arrived)
                    # gloo moves the bytes once all have arrived (async members: see gated)
                    members = [(m, j, None if j in self.awaited[m] else gated(m, j, start))
                               for m, _, j in arrived]  # fmt: skip
                    fast = all(exit_ is not None for _, _, exit_ in members)
                    if fast and len(group) == W and not links.active:  # the fast, exact path
                        leave(members, start + self.idle_cost(kind, g, peer, n))
                    else:
                        collective(group, members, kind, peer, n, start)
                if i in self.awaited[r]:  # async (a wait refers to it): the rank goes on
                    finish(r, now)

        for r in range(W):
            if records[r]:
                at(0.0, lambda r=r: advance(r, 0.0))
        while heap or links.active or (cpus is not None and cpus.left):
            flow_at = links.next_time() if links.active else math.inf
            cpu_at = cpus.next_time() if cpus is not None else math.inf
            if heap and heap[0][0] < min(flow_at, cpu_at):
                _, _, fn = heapq.heappop(heap)
                fn()
            elif cpu_at < flow_at:
                task, when = cpus.pop()  # type: ignore[union-attr]
                if isinstance(task, int):  # a rank's compute
                    t[task] = max(t[task], when)
                    at(t[task], lambda r=task: advance(r, t[r]))
                else:  # a blocking collective's CPU work
                    on_cpu.pop(task)(when)
            elif math.isfinite(flow_at):
                fid, when = links.pop()
                on_left.pop(fid)(when)
            else:
                break
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
        tail = trace.tail_of(r) + sim.trailing[r]  # NaN where the trace does not know it
        step_end[r], finish[r] = _step_ends(sim.records[r], ends[r], steps, compute_scale, tail)
    return Timeline(step_end, finish)


def _step_ends(
    records: list[list[Any]], ends: list[float], steps: int, scale: float, tail: float
) -> tuple[np.ndarray, float]:
    """One rank's step ends from its records' end times, and its finish: the end of its last
    record plus ``tail`` (its compute after that record; where unknown, NaN, the steps after
    the last record take its mean compute per step). See the module docstring."""
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
    after = steps - 1 - max(prev_step, -1)  # steps after the last record's
    if math.isfinite(tail):  # they share the measured tail; the last one's end is the finish
        for s in range(prev_step + 1, steps):
            out[s] = prev_end + tail * scale * (s - prev_step) / after
        return out, prev_end + tail * scale
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
        ranks = {0: [(0, KIND["send"], 0, 1, payload, 0, 0, 0.0, 0.0, -1, 0.0, 0.0),
                     (0, _WAIT, 0, 1, payload, 0, 0, 0.0, 0.0, 0, 0.0, 0.0)],
                 1: [(0, _RECV, 0, 0, payload, 0, 0, 0.0, 0.0, -1, 0.0, 0.0),
                     (0, _WAIT, 0, 0, payload, 0, 0, 0.0, 0.0, 0, 0.0, 0.0)]}  # fmt: skip
    else:
        one = (0, KIND[op], 0, 0, payload, 0, 0, 0.0, 0.0, -1, 0.0, 0.0)
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
