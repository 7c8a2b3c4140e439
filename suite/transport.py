"""Transport: the only code in the suite that calls ``torch.distributed``, and the one place
where communication is counted.

Counting rule
-------------
Bytes are ``numel * element_size`` of the tensors a rank hands to the backend: what the
backend must move, payload packing included, padding included (a ragged all-gather is padded
to the largest payload, so the padding is counted). Per rank and per op we count:

==================  ===========================  ==============================  ==========
op                  bytes_sent                   bytes_recv                      messages
==================  ===========================  ==============================  ==========
all_reduce(x)       |x|                          |x|                             1
reduce(x, dst)      |x| (0 on dst)               |x| on dst (0 elsewhere)        1 (0 on dst)
broadcast(x, src)   |x| on src (0 elsewhere)     |x| off src (0 on src)          1 on src
all_gather(x)       |x|                          (N-1) |x|                       1
gather(x, dst)      |x| (0 on dst)               (N-1) |x| on dst                1 (0 on dst)
send/isend(x, dst)  |x|                          0                               1
recv/irecv(x, src)  0                            |x|                             0
barrier             0                            0                               0
==================  ===========================  ==============================  ==========

with N the group size. Each contribution is counted once, however many ranks it reaches: an
all-reduce moves |x| of the rank's data into the reduction and |x| of result back out,
whatever algorithm the backend uses underneath. What the backend puts on the wire (ring
all-reduce sends 2(N-1)/N |x| per rank, a tree broadcast N-1 copies) is the job of the
wire accounting below, which sits beside these counts, never instead.
Per-link volume ``(src, dst)`` is recorded for transfers with one destination: send/isend,
and the non-root side of reduce and gather. Uneven all_gather/gather first exchange sizes
unless the caller passes them; that exchange is a real all_gather and is counted as one.
Nothing is counted on a group of one rank, where nothing is communicated.

Wire bytes
----------
Beside the payload, every op records what this rank puts on the wire under the algorithm
:mod:`suite.wire` documents (ring all_reduce and all_gather, binomial-tree broadcast, reduce and
gather, direct send): ``wire_bytes`` per op and in total, and per (src, dst) out-link in
``wire_links``. A rank records only the links it sends on (an inner rank of a broadcast tree
forwards, so it sends wire bytes with no payload of its own), so summing ranks gives the group's
wire total without double counting.

Trace
-----
Every op (and every wait on an async op) is also appended to this rank's trace
(:mod:`suite.trace`: kind, group, root or peer, payload, tag, channel, the seconds inside the op
and the host seconds since the previous record ended); ``set_step`` tells it the loop's step and
``tracing = False`` turns recording off.

Traffic goes to one of two channels: ``algorithm`` (the default: everything the method under
test sends, control scalars and event flags included) and ``harness`` (metrics, evaluation,
barriers: bookkeeping a real deployment would not pay). ``with transport.harness():``
switches channel. Seconds are host wall time inside the op (for async ops, issue plus wait);
on CUDA that is launch time unless the caller synchronises.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from suite import trace as _trace
from suite.launcher import communicating
from suite.wire import rank_out_links

ALGORITHM = "algorithm"
HARNESS = "harness"
_KIND = _trace.KIND
_WAIT = _trace.KIND["wait"]
_ALL_REDUCE = _trace.KIND["all_reduce"]
# The memory a compiled hook shares with the transport (Transport.count_outside;
# baselines/ddp_hook.cpp: Slot): the loop's step, written here, then the running totals of the
# all-reduces it counted that the transport has not taken yet.
OUTSIDE_SLOTS = ("step", "payload", "calls", "wire", "seconds")
# all-reduces a compiled hook may hold before the loop's row has the transport take them: a
# bound on their memory in a run that reads nothing else for long (log_every 10**9, say)
OUTSIDE_HELD = 4096
_TRACE_KEY = "_trace"  # in state_dict, beside the channels

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,  # divided afterwards: gloo has no AVG
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
}


def _allreduce_options(op: str, async_op: bool) -> dist.AllreduceOptions:
    """What ``dist.all_reduce(op=..., async_op=...)`` passes its group."""
    opts = dist.AllreduceOptions()
    opts.reduceOp, opts.asyncOp = _REDUCE_OPS[op], async_op
    return opts


# made once: a step repeats the same all-reduces (a DDP bucket's hook, every step)
_ALLREDUCE_OPTIONS = {
    (op, a): _allreduce_options(op, a) for op in _REDUCE_OPS for a in (False, True)
}


def nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass
class OpStats:
    """Counters of one op on one rank."""

    calls: int = 0
    messages: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    seconds: float = 0.0


@dataclass
class LinkStats:
    messages: int = 0
    bytes: int = 0


@dataclass
class CommStats:
    """One rank's counters for one channel: per op, per (src, dst) link, and their totals.

    ``links`` holds payload of single-destination transfers. Wire bytes (:mod:`suite.wire`)
    this rank sent sit beside: in total, per op (``wire_ops``) and per out-link
    (``wire_links``), every op included."""

    ops: dict[str, OpStats] = field(default_factory=dict)
    links: dict[tuple[int, int], LinkStats] = field(default_factory=dict)
    total: OpStats = field(default_factory=OpStats)  # kept current: read every step
    wire_bytes: int = 0
    wire_ops: dict[str, int] = field(default_factory=dict)
    wire_links: dict[tuple[int, int], int] = field(default_factory=dict)

    def record(
        self,
        op: str,
        *,
        sent: int = 0,
        recv: int = 0,
        messages: int = 0,
        seconds: float = 0.0,
        link: tuple[int, int] | None = None,
        calls: int = 1,
        wire: tuple[tuple[int, int, int], ...] = (),
    ) -> None:
        """Add ``calls`` calls of ``op`` (0: time waited on an earlier call) and what they
        moved; ``wire`` is (src, dst, bytes) of this rank's out-links."""
        s = self.ops.get(op)
        if s is None:
            s = self.ops[op] = OpStats()
        for counter in (s, self.total):
            counter.calls += calls
            counter.messages += messages
            counter.bytes_sent += sent
            counter.bytes_recv += recv
            counter.seconds += seconds
        for src, dst, b in wire:
            self.wire_bytes += b
            self.wire_ops[op] = self.wire_ops.get(op, 0) + b
            self.wire_links[(src, dst)] = self.wire_links.get((src, dst), 0) + b
        if link is not None and (sent or messages):
            ls = self.links.get(link)
            if ls is None:
                ls = self.links[link] = LinkStats()
            ls.messages += messages
            ls.bytes += sent

    @property
    def bytes_sent(self) -> int:
        return self.total.bytes_sent

    @property
    def bytes_recv(self) -> int:
        return self.total.bytes_recv

    @property
    def messages(self) -> int:
        return self.total.messages

    @property
    def calls(self) -> int:
        return self.total.calls

    @property
    def seconds(self) -> float:
        return self.total.seconds

    def state_dict(self) -> dict[str, Any]:
        """Every counter, as plain values (for a checkpoint)."""
        return {
            "ops": {op: asdict(s) for op, s in self.ops.items()},
            "links": [(a, b, s.messages, s.bytes) for (a, b), s in self.links.items()],
            "total": asdict(self.total),
            "wire_bytes": self.wire_bytes,
            "wire_ops": dict(self.wire_ops),
            "wire_links": [(a, b, n) for (a, b), n in self.wire_links.items()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set every counter from :meth:`state_dict` output, in place."""
        self.ops.clear()
        self.ops.update({op: OpStats(**s) for op, s in state["ops"].items()})
        self.links.clear()
        self.links.update({(a, b): LinkStats(m, n) for a, b, m, n in state["links"]})
        self.total = OpStats(**state["total"])
        self.wire_bytes = state.get("wire_bytes", 0)
        self.wire_ops.clear()
        self.wire_ops.update(state.get("wire_ops", {}))
        self.wire_links.clear()
        self.wire_links.update({(a, b): n for a, b, n in state.get("wire_links", ())})

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "messages": self.messages,
            "calls": self.calls,
            "seconds": self.seconds,
            "ops": {op: asdict(s) for op, s in sorted(self.ops.items())},
            "links": {f"{a}->{b}": asdict(s) for (a, b), s in sorted(self.links.items())},
            "wire_bytes": self.wire_bytes,
            "wire_ops": dict(sorted(self.wire_ops.items())),
            "wire_links": {f"{a}->{b}": n for (a, b), n in sorted(self.wire_links.items())},
        }


class OutsideOps(Protocol):
    """All-reduces counted outside Python (DDP's compiled hook: baselines/ddp_hook.cpp's
    records), as :meth:`Transport.count_outside` takes them. ``memoryview(ops)`` is the
    memory they share with the transport: :data:`OUTSIDE_SLOTS`, as doubles."""

    def __call__(
        self,
        kind: int,
        wait_kind: int,
        group: int,
        channel: int,
        first: int,
        last_end: float,
        trace: bool,
    ) -> tuple[tuple[int, ...], float, bytes, float]: ...

    def learn_wire(self, payload: int, wire: int) -> None: ...


class _Counters:
    """State shared by a transport and its subgroup transports."""

    def __init__(self) -> None:
        self.channels: dict[str, CommStats] = {ALGORITHM: CommStats(), HARNESS: CommStats()}
        self.current = ALGORITHM
        self.active = self.channels[ALGORITHM]
        # trace: the records (with the current step and channel id), and the channel and group
        # tables they index
        self.trace = _trace.Recorder()
        self.channel_names: list[str] = [ALGORITHM, HARNESS]
        self.groups: list[tuple[int, ...]] = []
        self.group_ids: dict[tuple[int, ...], int] = {}
        # all-reduces counted outside Python (Transport.count_outside): what takes them into
        # the counters and trace, and the memory of their running totals (OUTSIDE_SLOTS)
        self.outside: Callable[[], None] | None = None
        self.outside_shared: memoryview | None = None

    def settle(self) -> None:
        """Take the all-reduces counted outside Python into the counters and the trace: before
        anything reads them, and before an op is noted after them."""
        if self.outside is not None:
            self.outside()

    def group_id(self, ranks: tuple[int, ...]) -> int:
        gid = self.group_ids.get(ranks)
        if gid is None:
            gid = self.group_ids[ranks] = len(self.groups)
            self.groups.append(ranks)
        return gid

    def switch(self, name: str) -> None:
        if name not in self.channels:
            self.channels[name] = CommStats()
        if name not in self.channel_names:
            self.channel_names.append(name)
        self.current, self.active = name, self.channels[name]
        self.trace.channel = self.channel_names.index(name)


class Work:
    """Handle of an async op; ``wait()`` adds the time waited to the op's seconds (and then
    runs ``then``, if given: a mean's division) and returns the op's ``value``, if any (a
    gather's tensors)."""

    def __init__(
        self,
        work: Any,
        stats: CommStats,
        op: str,
        counters: _Counters | None = None,
        record: tuple[int, int, int, int, int] = (-1, 0, -1, 0, 0),
        then: Callable[[], Any] | None = None,
        value: Any = None,
    ) -> None:
        self._work, self._stats, self._op = work, stats, op
        self._counters, self._record = counters, record  # record: (index, gid, peer, n, tag)
        self._then, self._value = then, value

    def wait(self, *, background: bool = False) -> Any:
        """Block until done. ``background=True`` is for a helper thread that waits while the
        rank computes: that time is neither charged to the op's seconds nor shown to the
        launcher's hang detector (the thread that consumes the result accounts for its own
        wait; see baselines/consensus_backup.py's real clock)."""
        if self._work is None:
            return self._value
        if background:
            self._work.wait()
            self._work = None
        else:
            t0 = time.perf_counter()
            with communicating():
                self._work.wait()
            t1 = time.perf_counter()
            self._stats.record(self._op, seconds=t1 - t0, calls=0)
            self._work = None
            index, gid, peer, n, tag = self._record
            if self._counters is not None and index >= 0:
                self._counters.settle()
                self._counters.trace.note(_WAIT, gid, peer, n, tag, t0, t1, index)
        if self._then is not None:
            self._then()
        return self._value

    def is_completed(self) -> bool:
        return self._work is None or self._work.is_completed()


class Transport:
    """Counted communication for the ranks of one process group (default: all ranks).

    Peer and root arguments are global ranks, as ``self.rank`` and ``self.ranks`` are.
    """

    def __init__(self, group: Any = None, *, _counters: _Counters | None = None) -> None:
        self.group = group
        self.rank = dist.get_rank()
        self.ranks: list[int] = (
            list(range(dist.get_world_size()))
            if group is None
            else dist.get_process_group_ranks(group)
        )
        self.world_size = len(self.ranks)
        self.group_rank = self.ranks.index(self.rank)
        self._counters = _counters or _Counters()
        self._ranks_key = tuple(self.ranks)
        self._gid = self._counters.group_id(self._ranks_key)
        self._last_record = -1  # trace index of this transport's latest op

    @property
    def process_group(self) -> Any:
        """The group itself. All-reduces are called on it directly, not through
        ``dist.all_reduce``: its checks cost ~8 us a call, a DDP bucket's hook pays them every
        step, and they are moot here (a transport's group holds its rank; tensors are dense,
        real, not coalesced). Looked up, not kept: a transport of the world group pickles."""
        return dist.group.WORLD if self.group is None else self.group

    # -- accounting ------------------------------------------------------------------------

    @property
    def stats(self) -> CommStats:
        """Algorithm-channel counters of this rank (shared with subgroup transports)."""
        self._counters.settle()
        return self._counters.channels[ALGORITHM]

    @property
    def harness_stats(self) -> CommStats:
        self._counters.settle()
        return self._counters.channels[HARNESS]

    def counted(self) -> tuple[float, float, float, float, float]:
        """The algorithm channel's totals as the loop's row reads them every step: bytes sent,
        bytes received, messages, wire bytes, seconds. All-reduces counted outside Python
        (:meth:`count_outside`) are in them without being taken: taking them is a call into the
        hook, which after every backward pass cost the digits MLP's step ~1% (baselines/ddp.py)."""
        c = self._counters
        shared = c.outside_shared
        if shared is not None:
            _, payload, calls, wire, waited = shared
            if wire != wire or calls >= OUTSIDE_HELD:  # NaN: a size whose wire bytes are not
                c.settle()  # known yet (the first step's): taking them teaches them
                _, payload, calls, wire, waited = shared
        stats = c.channels[ALGORITHM]
        total = stats.total
        sent, recv, messages, wire_bytes = (
            total.bytes_sent, total.bytes_recv, total.messages, stats.wire_bytes
        )  # fmt: skip
        if shared is None:
            return sent, recv, messages, wire_bytes, total.seconds
        return (
            sent + payload,
            recv + payload,
            messages + calls,
            wire_bytes + wire,
            total.seconds + waited,
        )

    def state_dict(self) -> dict[str, Any]:
        """The counters of every channel (shared with subgroup transports) and the trace so far,
        for a checkpoint."""
        c = self._counters
        c.settle()
        state: dict[str, Any] = {name: stats.state_dict() for name, stats in c.channels.items()}
        state[_TRACE_KEY] = {
            "records": torch.from_numpy(c.trace.records().view(np.uint8).copy()),
            "fields": list(_trace.FIELDS),
            "groups": [list(g) for g in c.groups],
            "channels": list(c.channel_names),
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        c = self._counters
        for name, counters in state.items():
            if name != _TRACE_KEY:
                c.channels.setdefault(name, CommStats()).load_state_dict(counters)
        saved = state.get(_TRACE_KEY)
        if saved is not None:  # ids re-mapped onto this process's tables
            # a checkpoint written before the trace's cpu field names no fields
            fields = saved.get("fields", _trace.FIELDS[: _trace.FIELDS.index("cpu")])
            records = saved["records"].numpy().view(_trace.dtype_of(fields)).copy()
            records = _trace.upgrade(records)
            groups = np.array([c.group_id(tuple(g)) for g in saved["groups"]] or [0])
            for name in saved["channels"]:
                if name not in c.channel_names:
                    c.channel_names.append(name)
            names = np.array([c.channel_names.index(n) for n in saved["channels"]] or [0])
            records["group"] = groups[records["group"]]
            records["channel"] = names[records["channel"]]
            c.trace.load(records)

    # -- trace -----------------------------------------------------------------------------

    def set_step(self, step: int) -> None:
        """The loop's current step, stamped on the trace records that follow."""
        c = self._counters
        c.trace.step = step
        if c.outside_shared is not None:  # and on the compiled hook's
            c.outside_shared[0] = step

    @property
    def tracing(self) -> bool:
        return self._counters.trace.enabled

    @tracing.setter
    def tracing(self, on: bool) -> None:
        self._counters.settle()
        rec = self._counters.trace
        rec.enabled = on and not rec.truncated

    def trace_begin(self) -> None:
        """Training starts now (the trace's gaps count from here: ``Recorder.begin``)."""
        self._counters.settle()
        self._counters.trace.begin()

    def trace_end(self) -> None:
        """Training ended now (the trace keeps the time since its last record: ``tail``)."""
        self._counters.settle()
        self._counters.trace.end()

    def trace_records(
        self,
    ) -> tuple[np.ndarray, list[tuple[int, ...]], list[str], bool, float]:
        """This rank's trace so far: records, group table, channel table, whether it stopped
        at :data:`suite.trace.MAX_RECORDS`, and its tail (NaN before :meth:`trace_end`)."""
        c = self._counters
        c.settle()
        t = c.trace
        return t.records(), list(c.groups), list(c.channel_names), t.truncated, t.tail

    @contextlib.contextmanager
    def channel(self, name: str) -> Iterator[None]:
        counters = self._counters
        previous = counters.current
        counters.switch(name)
        try:
            yield
        finally:
            counters.switch(previous)

    def harness(self) -> contextlib.AbstractContextManager[None]:
        """Count what runs inside as harness bookkeeping, not algorithm traffic."""
        return self.channel(HARNESS)

    def _timed(
        self, op: str, fn: Any, *, payload: int = 0, root: int = -1, tag: int = 0, **counts: Any
    ) -> Any:
        """Run ``fn``; count it (payload ``counts``, and the wire bytes of this rank's
        out-links for one call of ``op`` with ``payload`` bytes per rank) and trace it."""
        c = self._counters
        c.settle()  # all-reduces counted outside Python ended before this op: traced first
        t0 = time.perf_counter()
        with communicating():  # tells the launcher a stall here is a wait, not the cause
            out = fn()
        t1 = time.perf_counter()
        c.active.record(op, seconds=t1 - t0, wire=self._wire(op, root, payload), **counts)
        self._last_record = c.trace.note(_KIND[op], self._gid, root, payload, tag, t0, t1)
        return out

    def _wire(self, op: str, root: int, payload: int) -> tuple[tuple[int, int, int], ...]:
        """(src, dst, bytes) of this rank's out-links in one call of ``op`` with ``payload``
        bytes per rank (:mod:`suite.wire`)."""
        if op == "send":
            return ((self.rank, root, payload),) if payload else ()
        if payload and op != "recv":
            return rank_out_links(op, self._ranks_key, root, payload, self.rank)
        return ()

    @property
    def _alone(self) -> bool:
        return self.world_size == 1

    # -- collectives -----------------------------------------------------------------------

    def all_reduce(self, x: Tensor, op: str = "sum") -> Tensor:
        """In-place reduction over the group; ``op`` is sum, mean, max, min or product."""
        if op not in _REDUCE_OPS:
            raise ValueError(f"unknown reduce op {op!r}; valid choices: {', '.join(_REDUCE_OPS)}")
        if self._alone:
            return x
        group, opts = self.process_group, _ALLREDUCE_OPTIONS[op, False]

        def all_reduce() -> None:  # named: a hung peer's stack dump shows it waits in here
            group.allreduce([x], opts).wait()

        n = nbytes(x)
        self._timed("all_reduce", all_reduce, payload=n, sent=n, recv=n, messages=1)
        if op == "mean":
            x.div_(self.world_size)
        return x

    def all_reduce_async(self, x: Tensor, op: str = "sum") -> Work:
        """:meth:`all_reduce` issued without waiting (a DDP communication hook's all-reduce):
        ``x`` is reduced in place, and for "mean" divided, once :meth:`Work.wait` returns.
        Counted and traced when issued, like :meth:`isend`; the wait is recorded too, so a
        replay (:mod:`suite.netmodel`) lets the rank compute while the all-reduce runs, up to
        its wait. (A hook completes its own torch future after the wait: a future chained on
        the backend's would run Python on the backend's thread, contending for the GIL with
        the backward pass.)"""
        if op not in _REDUCE_OPS:
            raise ValueError(f"unknown reduce op {op!r}; valid choices: {', '.join(_REDUCE_OPS)}")
        c = self._counters
        if self._alone:
            return Work(None, c.active, "all_reduce")
        n, stats, opts = nbytes(x), c.active, _ALLREDUCE_OPTIONS[op, True]
        work = self._timed(
            "all_reduce",
            lambda: self.process_group.allreduce([x], opts),
            payload=n,
            sent=n,
            recv=n,
            messages=1,
        )
        record = (self._last_record, self._gid, -1, n, 0)
        then = functools.partial(x.div_, self.world_size) if op == "mean" else None
        return Work(work, stats, "all_reduce", c, record, then)

    def count_outside(self, ops: OutsideOps) -> None:
        """Count and trace all-reduces on this transport's group that run outside Python (DDP's
        compiled hook, baselines/ddp_hook.py) as :meth:`all_reduce_async` and :meth:`Work.wait`
        count and trace their own, in the algorithm channel. ``ops`` keeps them until the
        transport takes them: whenever its counters or trace are read (:attr:`stats`,
        :meth:`trace_records`, :meth:`state_dict`...) and before it notes an op of its own, so
        the trace stays in time order. The loop's per-step row reads their running totals in
        ``memoryview(ops)`` (:data:`OUTSIDE_SLOTS`) without taking them (:meth:`counted`), so no
        Python runs for them step by step: after every backward pass, each call costs a small
        model's step.

        ``ops(kind, wait_kind, group, channel, first, last_end, trace)`` hands them over and
        forgets them: their payload bytes in issue order, the seconds this rank spent issuing
        and waiting for them, their trace records (empty unless ``trace``) packed as
        :class:`suite.trace.Recorder` holds them (per backward pass, every issue, then every
        wait; record fields ``step`` as :meth:`set_step` wrote it there,
        ``kind``/``wait_kind``, ``group``, ``channel`` as given, peer -1, tag 0, each gap from
        the previous record's end, the first's from ``last_end``; a wait's ref the index of its
        issue, counting records from ``first``), and when the last of them ended, on
        ``time.perf_counter``'s clock. ``ops.learn_wire(payload, wire)`` tells it this rank's
        wire bytes in an all-reduce of ``payload`` bytes, for the running totals."""
        c = self._counters
        if c.outside is not None:
            raise RuntimeError("the transport already counts a compiled hook's all-reduces")
        c.outside = functools.partial(self._take_outside, ops)
        c.outside_shared = memoryview(ops)  # type: ignore[arg-type]  # a buffer (OutsideOps)
        c.outside_shared[0] = c.trace.step

    def _take_outside(self, ops: OutsideOps) -> None:
        """Take what ``ops`` counted (:meth:`count_outside`) into the counters and the trace."""
        c = self._counters
        trace = c.trace
        channel = c.channel_names.index(ALGORITHM)
        sizes, seconds, rows, last_end = ops(
            _ALL_REDUCE, _WAIT, self._gid, channel, trace.count, trace.last_end, trace.enabled
        )
        if not sizes:
            return
        wire = []
        for payload, calls in collections.Counter(sizes).items():
            links = self._wire("all_reduce", -1, payload)
            ops.learn_wire(payload, sum(b for _, _, b in links))
            wire.extend((src, dst, b * calls) for src, dst, b in links)
        payload = sum(sizes)
        c.channels[ALGORITHM].record(
            "all_reduce",
            sent=payload,
            recv=payload,
            messages=len(sizes),
            calls=len(sizes),
            seconds=seconds,
            wire=tuple(wire),
        )
        if rows:
            trace.append(rows, last_end)

    def reduce(self, x: Tensor, dst: int, op: str = "sum") -> Tensor:
        """In-place reduction into ``x`` on ``dst`` (other ranks' ``x`` is undefined after)."""
        if self._alone:
            return x
        n, root = nbytes(x), self.rank == dst
        self._timed(
            "reduce",
            lambda: dist.reduce(x, dst=dst, op=_REDUCE_OPS[op], group=self.group),
            payload=n,
            root=dst,
            sent=0 if root else n,
            recv=n if root else 0,
            messages=0 if root else 1,
            link=None if root else (self.rank, dst),
        )
        if op == "mean" and root:
            x.div_(self.world_size)
        return x

    def broadcast(self, x: Tensor, src: int) -> Tensor:
        """In place: every rank's ``x`` becomes ``src``'s."""
        if self._alone:
            return x
        n, root = nbytes(x), self.rank == src
        self._timed(
            "broadcast",
            lambda: dist.broadcast(x, src=src, group=self.group),
            payload=n,
            root=src,
            sent=n if root else 0,
            recv=0 if root else n,
            messages=1 if root else 0,
        )
        return x

    def _exchange_sizes(self, x: Tensor) -> list[int]:
        sizes = torch.tensor([x.numel()], dtype=torch.int64, device=x.device)
        return [int(s) for s in self.all_gather(sizes, sizes=[1] * self.world_size)]

    def all_gather(self, x: Tensor, sizes: Sequence[int] | None = None) -> list[Tensor]:
        """Every rank's tensor, in group order. Sizes may differ (then ``x`` must be 1-D):
        pass ``sizes`` (numel per rank) when known, or they are exchanged first."""
        if self._alone:
            return [x]
        sizes = list(sizes) if sizes is not None else None
        if sizes is None and x.dim() == 1:
            sizes = self._exchange_sizes(x)
        if sizes is None or len(set(sizes)) == 1:
            out = [torch.empty_like(x) for _ in self.ranks]
            n = nbytes(x)
            self._timed(
                "all_gather",
                lambda: dist.all_gather(out, x, group=self.group),
                payload=n,
                sent=n,
                recv=n * (self.world_size - 1),
                messages=1,
            )
            return out
        self._check_ragged(x, sizes)
        width = max(sizes)
        padded = self._pad(x, width)
        out = [torch.empty_like(padded) for _ in self.ranks]
        n = nbytes(padded)
        self._timed(
            "all_gather",
            lambda: dist.all_gather(out, padded, group=self.group),
            payload=n,
            sent=n,
            recv=n * (self.world_size - 1),
            messages=1,
        )
        return [t[:s] for t, s in zip(out, sizes, strict=True)]

    def gather(
        self, x: Tensor, dst: int, sizes: Sequence[int] | None = None
    ) -> list[Tensor] | None:
        """Every rank's tensor on ``dst`` (None elsewhere). Ragged as in :meth:`all_gather`."""
        if self._alone:
            return [x]
        sizes = list(sizes) if sizes is not None else None
        if sizes is None and x.dim() == 1:
            sizes = self._exchange_sizes(x)
        ragged = sizes is not None and len(set(sizes)) > 1
        if ragged:
            self._check_ragged(x, sizes)
            x = self._pad(x, max(sizes))
        out = [torch.empty_like(x) for _ in self.ranks] if self.rank == dst else None
        gather = functools.partial(dist.gather, x, out, dst=dst, group=self.group)
        self._timed("gather", gather, **self._gather_counts(x, dst))
        if out is not None and ragged:
            out = [t[:s] for t, s in zip(out, sizes, strict=True)]
        return out

    def gather_async(self, x: Tensor, dst: int) -> Work:
        """:meth:`gather` of tensors of one size on every rank, issued without waiting:
        ``wait()`` returns every rank's tensor on ``dst`` (None elsewhere). Counted and traced
        when issued, its wait traced too (as :meth:`all_reduce_async`)."""
        c = self._counters
        if self._alone:
            return Work(None, c.active, "gather", value=[x])
        out = [torch.empty_like(x) for _ in self.ranks] if self.rank == dst else None
        stats, counts = c.active, self._gather_counts(x, dst)
        work = self._timed(
            "gather",
            lambda: dist.gather(x, out, dst=dst, group=self.group, async_op=True),
            **counts,
        )
        record = (self._last_record, self._gid, dst, counts["payload"], 0)
        return Work(work, stats, "gather", c, record, value=out)

    def _gather_counts(self, x: Tensor, dst: int) -> dict[str, Any]:
        """The counts and trace fields of this rank's part in a gather of ``x`` to ``dst``."""
        n, root = nbytes(x), self.rank == dst
        return {
            "payload": n,
            "root": dst,
            "sent": 0 if root else n,
            "recv": n * (self.world_size - 1) if root else 0,
            "messages": 0 if root else 1,
            "link": None if root else (self.rank, dst),
        }

    def _check_ragged(self, x: Tensor, sizes: list[int]) -> None:
        if x.dim() != 1:
            raise ValueError(f"tensors of different sizes must be 1-D, got shape {tuple(x.shape)}")
        if len(sizes) != self.world_size or sizes[self.group_rank] != x.numel():
            raise ValueError(f"sizes {sizes} do not match this rank's numel {x.numel()}")

    @staticmethod
    def _pad(x: Tensor, width: int) -> Tensor:
        if x.numel() == width:
            return x
        padded = x.new_zeros(width)
        padded[: x.numel()] = x
        return padded

    def gather_object(self, obj: Any, dst: int) -> list[Any] | None:
        """Pickled Python objects from every rank on ``dst`` (bytes counted like gather)."""
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        parts = self.gather(data, dst)
        if parts is None:
            return None
        return [pickle.loads(p.numpy().tobytes()) for p in parts]

    def barrier(self) -> None:
        """Synchronise the group (always counted as harness traffic)."""
        if self._alone:
            return
        with self.harness():
            self._timed("barrier", lambda: dist.barrier(group=self.group))

    # -- point to point --------------------------------------------------------------------

    def isend(self, x: Tensor, dst: int, tag: int = 0) -> Work:
        c, n = self._counters, nbytes(x)
        stats = c.active
        work = self._timed(
            "send",
            lambda: dist.isend(x, dst=dst, group=self.group, tag=tag),
            payload=n,
            root=dst,
            tag=tag,
            sent=n,
            messages=1,
            link=(self.rank, dst),
        )
        return Work(work, stats, "send", c, (self._last_record, self._gid, dst, n, tag))

    def irecv(self, x: Tensor, src: int, tag: int = 0) -> Work:
        c, n = self._counters, nbytes(x)
        stats = c.active
        work = self._timed(
            "recv",
            lambda: dist.irecv(x, src=src, group=self.group, tag=tag),
            payload=n,  # traced as the size received; recv puts nothing on the wire
            root=src,
            tag=tag,
            recv=n,
        )
        return Work(work, stats, "recv", c, (self._last_record, self._gid, src, n, tag))

    def send(self, x: Tensor, dst: int, tag: int = 0) -> None:
        self.isend(x, dst, tag).wait()

    def recv(self, x: Tensor, src: int, tag: int = 0) -> Tensor:
        self.irecv(x, src, tag).wait()
        return x

    # -- groups ----------------------------------------------------------------------------

    def subgroups(self, groups: Sequence[Sequence[int]]) -> Transport | None:
        """Create one process group per rank list (every rank must call this with the same
        lists, in the same order) and return the transport of the group holding this rank,
        or None. Counters are shared with this transport."""
        mine = None
        for ranks in groups:
            group = dist.new_group(sorted(ranks))
            if self.rank in ranks:
                mine = Transport(group, _counters=self._counters)
        return mine
