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
analytic model in :mod:`suite.costmodel`, which sits beside these counts, never instead.
Per-link volume ``(src, dst)`` is recorded for transfers with one destination: send/isend,
and the non-root side of reduce and gather. Uneven all_gather/gather first exchange sizes
unless the caller passes them; that exchange is a real all_gather and is counted as one.
Nothing is counted on a group of one rank, where nothing is communicated.

Traffic goes to one of two channels: ``algorithm`` (the default: everything the method under
test sends, control scalars and event flags included) and ``harness`` (metrics, evaluation,
barriers: bookkeeping a real deployment would not pay). ``with transport.harness():``
switches channel. Seconds are host wall time inside the op (for async ops, issue plus wait);
on CUDA that is launch time unless the caller synchronises.
"""

from __future__ import annotations

import contextlib
import pickle
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from suite.launcher import communicating

ALGORITHM = "algorithm"
HARNESS = "harness"

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "mean": dist.ReduceOp.SUM,  # divided afterwards: gloo has no AVG
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "product": dist.ReduceOp.PRODUCT,
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
    """One rank's counters for one channel: per op, per (src, dst) link, and their totals."""

    ops: dict[str, OpStats] = field(default_factory=dict)
    links: dict[tuple[int, int], LinkStats] = field(default_factory=dict)
    total: OpStats = field(default_factory=OpStats)  # kept current: read every step

    def record(
        self,
        op: str,
        *,
        sent: int = 0,
        recv: int = 0,
        messages: int = 0,
        seconds: float = 0.0,
        link: tuple[int, int] | None = None,
        call: bool = True,
    ) -> None:
        s = self.ops.get(op)
        if s is None:
            s = self.ops[op] = OpStats()
        for counter in (s, self.total):
            counter.calls += call
            counter.messages += messages
            counter.bytes_sent += sent
            counter.bytes_recv += recv
            counter.seconds += seconds
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Set every counter from :meth:`state_dict` output, in place."""
        self.ops.clear()
        self.ops.update({op: OpStats(**s) for op, s in state["ops"].items()})
        self.links.clear()
        self.links.update({(a, b): LinkStats(m, n) for a, b, m, n in state["links"]})
        self.total = OpStats(**state["total"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_recv": self.bytes_recv,
            "messages": self.messages,
            "calls": self.calls,
            "seconds": self.seconds,
            "ops": {op: asdict(s) for op, s in sorted(self.ops.items())},
            "links": {f"{a}->{b}": asdict(s) for (a, b), s in sorted(self.links.items())},
        }


class _Counters:
    """State shared by a transport and its subgroup transports."""

    def __init__(self) -> None:
        self.channels: dict[str, CommStats] = {ALGORITHM: CommStats(), HARNESS: CommStats()}
        self.current = ALGORITHM

    @property
    def active(self) -> CommStats:
        return self.channels[self.current]


class Work:
    """Handle of an async send/recv; ``wait()`` adds the time waited to the op's seconds."""

    def __init__(self, work: Any, stats: CommStats, op: str) -> None:
        self._work, self._stats, self._op = work, stats, op

    def wait(self, *, background: bool = False) -> None:
        """Block until done. ``background=True`` is for a helper thread that waits while the
        rank computes: that time is neither charged to the op's seconds nor shown to the
        launcher's hang detector (the thread that consumes the result accounts for its own
        wait; see baselines/consensus_backup.py's real clock)."""
        if self._work is None:
            return
        if background:
            self._work.wait()
            self._work = None
            return
        t0 = time.perf_counter()
        with communicating():
            self._work.wait()
        self._stats.record(self._op, seconds=time.perf_counter() - t0, call=False)
        self._work = None

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

    # -- accounting ------------------------------------------------------------------------

    @property
    def stats(self) -> CommStats:
        """Algorithm-channel counters of this rank (shared with subgroup transports)."""
        return self._counters.channels[ALGORITHM]

    @property
    def harness_stats(self) -> CommStats:
        return self._counters.channels[HARNESS]

    def state_dict(self) -> dict[str, Any]:
        """The counters of every channel (shared with subgroup transports), for a checkpoint."""
        return {name: stats.state_dict() for name, stats in self._counters.channels.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        channels = self._counters.channels
        for name, counters in state.items():
            channels.setdefault(name, CommStats()).load_state_dict(counters)

    @contextlib.contextmanager
    def channel(self, name: str) -> Iterator[None]:
        counters = self._counters
        if name not in counters.channels:
            counters.channels[name] = CommStats()
        previous, counters.current = counters.current, name
        try:
            yield
        finally:
            counters.current = previous

    def harness(self) -> contextlib.AbstractContextManager[None]:
        """Count what runs inside as harness bookkeeping, not algorithm traffic."""
        return self.channel(HARNESS)

    def _timed(self, op: str, fn: Any, **counts: Any) -> Any:
        t0 = time.perf_counter()
        with communicating():  # tells the launcher a stall here is a wait, not the cause
            out = fn()
        self._counters.active.record(op, seconds=time.perf_counter() - t0, **counts)
        return out

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
        n = nbytes(x)
        self._timed(
            "all_reduce",
            lambda: dist.all_reduce(x, op=_REDUCE_OPS[op], group=self.group),
            sent=n,
            recv=n,
            messages=1,
        )
        if op == "mean":
            x.div_(self.world_size)
        return x

    def reduce(self, x: Tensor, dst: int, op: str = "sum") -> Tensor:
        """In-place reduction into ``x`` on ``dst`` (other ranks' ``x`` is undefined after)."""
        if self._alone:
            return x
        n, root = nbytes(x), self.rank == dst
        self._timed(
            "reduce",
            lambda: dist.reduce(x, dst=dst, op=_REDUCE_OPS[op], group=self.group),
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
        root = self.rank == dst
        out = [torch.empty_like(x) for _ in self.ranks] if root else None
        n = nbytes(x)
        self._timed(
            "gather",
            lambda: dist.gather(x, out, dst=dst, group=self.group),
            sent=0 if root else n,
            recv=n * (self.world_size - 1) if root else 0,
            messages=0 if root else 1,
            link=None if root else (self.rank, dst),
        )
        if out is not None and ragged:
            out = [t[:s] for t, s in zip(out, sizes, strict=True)]
        return out

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
        stats = self._counters.active
        work = self._timed(
            "send",
            lambda: dist.isend(x, dst=dst, group=self.group, tag=tag),
            sent=nbytes(x),
            messages=1,
            link=(self.rank, dst),
        )
        return Work(work, stats, "send")

    def irecv(self, x: Tensor, src: int, tag: int = 0) -> Work:
        stats = self._counters.active
        work = self._timed(
            "recv",
            lambda: dist.irecv(x, src=src, group=self.group, tag=tag),
            recv=nbytes(x),
        )
        return Work(work, stats, "recv")

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
