"""Consensus SGD with backup workers, on a virtual clock (deterministic) or in real time.

Decentralized (consensus) SGD in which each rank averages only with the neighbours whose models
arrived first: the DyBW paper's setting (Xiong, Yan, Singh, Li, arXiv 2102.06280) with a static
number b of backup workers per rank. Order (recorded, as the spec asks): average, then step with
the gradient taken at the pre-averaging x_i (D-PSGD's order, baselines.dpsgd). Averaging is
uniform over self and every model used at the iteration (fresh or late).

Virtual clock (``clock="virtual"``, the default; for convergence experiments). Every step, on
every rank:

1. the virtual clock of suite.stragglers (pure and identical on every rank: no communication)
   advances one iteration and says which n_i = deg_i - b_i neighbours each rank waits for
   (fresh), which late messages it uses (``late="use"``) and when each rank's iteration ends;
2. every rank sends its model to all its out-peers (a real worker cannot know whether it will be
   used, so every message is counted) and receives from all its in-peers, in lockstep;
3. x_i <- (x_i + sum of the fresh models + sum of the late models) / (1 + fresh + late). A late
   model is j's model of an earlier iteration s: a copy of it is kept from iteration s until the
   clock says it is used or dropped (at most ``max_staleness`` iterations, so memory is bounded);
4. optimizer.step().

With b = 0 and uniform topology weights (ring: 1/3 each) it is exactly D-PSGD.

Real time (``clock="real"``; for systems experiments). Each rank sleeps its drawn compute time
tau_i(t) x ``time_scale`` seconds after its gradient, isends its model tagged with the iteration t
to every out-peer and posts an irecv tagged t for every in-peer; then it waits until n_i of its
iteration-t receives have completed (and every required one), in completion order (a dynamic
rule's ``deadlines`` instead: all of them, or what completed by the deadline, at least one). gloo's
``is_completed()`` on a receive only turns true after ``wait()``, so one background thread per
peer waits on that peer's posted operations in order and reports each completion (peer,
iteration, time) to the main thread: a message has *arrived* when its receive completed; link
delays of the straggler model are not simulated in real time (refused), the only delay is the
transport's. Receives that did not complete stay posted; a message of an earlier iteration that
completed meanwhile is late and used or dropped by the same :class:`suite.stragglers.Inbox` rule
as in virtual time. At the end of the run (the last step, or ``totals()`` if a run was stopped
early) every posted receive and pending send is waited and what is left is dropped. Caveats: the
loop's metric flush (every ``log_every`` steps) and evaluations synchronise all ranks, which bounds
how far fast ranks can run ahead of a slow one (to about ``log_every`` iterations, so staleness
stays bounded too); the background threads' waits are not timed (``Work.wait(background=
True)``): the main thread charges the time it was blocked on arrivals as communication seconds.

Accounting (both clocks): per rank ``messages_sent`` and, for messages it received,
``messages_used_fresh``, ``messages_used_late``, ``messages_dropped``; summed over ranks
sent == used_fresh + used_late + dropped exactly (``messages_unaccounted`` = 0).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import assign_params, flatten_params, trainable
from suite.algorithms.gossip import exchange
from suite.launcher import communicating
from suite.registry import ALGORITHMS
from suite.stragglers import Inbox, Iteration, StragglerConfig, StragglerModel, VirtualClock
from suite.topologies import build_topology, check_topology


@dataclass(frozen=True)
class ConsensusBackupConfig:
    """Knobs of consensus SGD with backup workers.

    topology: the static graph whose neighbours a rank may average with (``suite list
        topologies``); complete gives every rank N - 1 candidates, ring two.
    backups [b]: neighbours each rank does not wait for (clipped so a rank always waits for
        at least one). 0 is full wait (D-PSGD); more backups cut the time lost to
        stragglers but average over fewer models, so consensus is slower.
    straggler: the compute-time and link-delay model (knobs under ``algorithm.straggler.*``;
        virtual seconds).
    late: what happens to a neighbour's message that was not waited for: "drop" it, or "use"
        it at a later iteration as that neighbour's (stale) model, if it arrived by then and is
        the newest from that neighbour (older pending ones are superseded and dropped).
    max_staleness: a message of iteration s can be used late up to iteration s + max_staleness,
        then it is dropped (bounds the models kept in memory).
    clock: "virtual" (deterministic virtual time: convergence experiments) or "real" (actual
        sleeps and asynchronous receives: systems experiments).
    time_scale: real seconds per virtual second of compute in real time.
    skip_ahead: virtual clock only (real time ignores it: a rank cannot see ahead). A rank
        that is behind (an in-peer's model of iteration t reached it before it started t)
        skips the iteration: it sends nothing, takes the mean of the in-peers' iteration-t
        models that arrived, keeps its own last update on top of it, and applies no gradient
        (suite.stragglers.VirtualClock).
    """

    topology: str = "complete"
    backups: int = 1
    straggler: StragglerConfig = field(default_factory=StragglerConfig)
    late: Literal["drop", "use"] = "drop"
    max_staleness: int = 8
    clock: Literal["virtual", "real"] = "virtual"
    time_scale: float = 0.01
    skip_ahead: bool = False

    def __post_init__(self) -> None:
        check_topology(self.topology, static=True)  # its waits pick from fixed in-peers
        if self.backups < 0:
            raise ValueError(f"backups must be >= 0, got {self.backups}")
        if self.late not in ("drop", "use"):
            raise ValueError(f"late {self.late!r}; valid choices: drop, use")
        if self.clock not in ("virtual", "real"):
            raise ValueError(f"clock {self.clock!r}; valid choices: virtual, real")
        if self.max_staleness < 1:
            raise ValueError(f"max_staleness must be >= 1, got {self.max_staleness}")
        if self.time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale}")
        straggler = self.straggler
        if self.clock == "real" and (straggler.link_delay or straggler.link_jitter
                                     or straggler.network):  # fmt: skip
            raise ValueError("clock=real does not simulate link delays: set straggler.link_delay "
                             "and straggler.link_jitter to 0, straggler.network to ''")  # fmt: skip

    def check_world(self, nproc: int) -> None:
        """Ranks named in the straggler model must exist (checked before any rank starts)."""
        bad = [r for r in self.straggler.slow_ranks if not 0 <= r < nproc]
        if bad:
            raise ValueError(f"straggler.slow_ranks {bad}: valid ranks are 0..{nproc - 1}")


@dataclass
class Observation:
    """What rank ``rank`` saw of its iteration ``t`` (the input of a dynamic-b rule): times in
    virtual seconds (virtual clock) or perf_counter seconds (real time)."""

    rank: int
    t: int
    start: float
    compute_end: float
    end: float
    arrivals: dict[int, float]  # in-peer -> arrival of its iteration-t model (inf: not yet)
    used: dict[int, int]  # peer -> iteration of the model used (fresh: t)
    backups: int


def observations(it: Iteration, in_peers: list[list[int]]) -> list[Observation]:
    """Every rank's :class:`Observation` of a virtual-clock iteration."""
    return [
        Observation(
            rank=i,
            t=it.t,
            start=float(it.start[i]),
            compute_end=float(it.compute_end[i]),
            end=float(it.end[i]),
            arrivals={j: float(a) for j, a in zip(peers, it.arrivals[i].tolist(), strict=True)},
            used=it.mixed(i),
            backups=it.backups[i],
        )
        for i, peers in enumerate(in_peers)
    ]


class _Waiter(threading.Thread):
    """Waits, in order, on the operations posted with one peer; reports each completion."""

    def __init__(self, peer: int, done: queue.Queue | None) -> None:
        super().__init__(daemon=True, name=f"consensus-wait-{peer}")
        self.peer, self.done = peer, done
        self.todo: queue.Queue = queue.Queue()
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.todo.get()) is not None:
            t, work, payload = item
            try:
                work.wait(background=True)  # the main thread times its own wait
            except BaseException as err:  # handed to the main thread
                self.error = err
                if self.done is not None:
                    self.done.put(err)
                return
            if self.done is not None:
                self.done.put((self.peer, t, payload, time.perf_counter()))


@ALGORITHMS.register("consensus_backup", config=ConsensusBackupConfig, paper="baseline")
class ConsensusBackup(Algorithm):
    """Consensus SGD that waits only for the fastest neighbours (static b), virtual or real time."""

    per_rank_b_metrics = False  # log b_rank{r} of every rank (virtual clock only)

    def __init__(self, config: ConsensusBackupConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        topology = build_topology(config.topology, self.world_size)  # static: the config checks
        n = self.world_size
        self.in_peers = [topology.in_peers(i) for i in range(n)]
        self.out_peers = topology.out_peers(self.rank)
        self.real = config.clock == "real"
        self.straggler_model = StragglerModel(config.straggler, n, run_seed=ctx.seed)
        self.params = trainable(self.model.parameters())
        message = sum(p.numel() * p.element_size() for p in self.params)  # the flat model sent
        self.clock = VirtualClock(self.straggler_model, self.in_peers, config.late,
                                  config.max_staleness, message, config.skip_ahead)  # fmt: skip
        self._anchor: Tensor | None = None  # the model this rank last averaged to (skip_ahead)
        self.b_split = [0.0, 0.0, 0.0, 0.0]  # b summed and counted: an in-peer slowed, or none
        self.skipped = 0  # iterations this rank skipped (skip_ahead)
        self.last: Iteration | None = None
        self.waited_total = 0.0
        self.sent = 0
        self.finished = False
        self.metrics: dict[str, float] = {}
        self.timeline: list[tuple] = []  # (step, rank, time, b, fresh, late, dropped, waited)
        self._recv: dict[int, Tensor] = {}  # receive buffers, reused every step (virtual)
        self._kept: dict[tuple[int, int], Tensor] = {}  # (peer, iteration) -> model, pending
        if self.real:
            self.inbox = Inbox(self.in_peers[self.rank], config.late, config.max_staleness)
            self._done: queue.Queue = queue.Queue()
            self._recv_waiters = {j: _Waiter(j, self._done) for j in self.in_peers[self.rank]}
            self._send_waiters = {j: _Waiter(j, None) for j in self.out_peers}
            for w in (*self._recv_waiters.values(), *self._send_waiters.values()):
                w.start()
            self._t0 = time.perf_counter()
            self._prev_end = self._t0
            self.iter_seconds: list[float] = []
            self._obs: dict[int, Observation] = {}  # iteration -> own observation (real)
        else:
            self.inbox = self.clock.inboxes[self.rank]

    # -- hooks of a dynamic rule -----------------------------------------------------------

    def backups(self, step: int) -> list[int]:
        """b_i of every rank at ``step`` (real time: only this rank's entry is read)."""
        return [self.config.backups] * self.world_size

    def required(self, step: int) -> list[set[int]] | None:
        """Neighbours each rank must wait for at ``step``, whatever its b (None: none)."""
        return None

    def deadlines(self, step: int) -> list[float] | None:
        """Per rank, seconds after its start of ``step`` until which it takes whatever arrived
        (``inf``: none; None: no rank has one), instead of a count of neighbours."""
        return None

    def observe(self, obs: list[Observation]) -> None:
        """What a dynamic rule learns from an iteration (virtual: every rank's; real: this
        rank's, whose ``arrivals`` are filled in later as late receives complete)."""

    # -- the step --------------------------------------------------------------------------

    def reduce_gradients(self, step: int) -> None:
        # Average before optimizer.step(), which then applies the gradient of the pre-averaging
        # parameters (D-PSGD's order).
        if self.real:
            self._real_step(step)
        else:
            self._virtual_step(step)
        if step == self.ctx.total_steps - 1:
            self._finish()

    def _mix(self, mine: Tensor, fresh: list[Tensor], late: list[Tensor]) -> None:
        mixed = mine.clone()
        for x in (*fresh, *late):
            mixed.add_(x)
        self._anchor = mixed.div_(1 + len(fresh) + len(late))
        assign_params(self.params, mixed)

    def _skip(self, mine: Tensor, models: list[Tensor]) -> None:
        """Skip ahead: the mean of the newer ``models``, plus this rank's own last update (its
        model minus what it last averaged to), which it would otherwise lose; no gradient is
        applied at this iteration (the rank computed none)."""
        for p in self.params:
            p.grad = None  # the optimizer leaves a parameter without a gradient alone
        if not models:  # every in-peer skipped too: nothing newer to take
            return
        ahead = torch.stack(models).mean(0)
        if self._anchor is not None:
            ahead.add_(mine - self._anchor)
        self._anchor = ahead
        assign_params(self.params, ahead)

    def _virtual_step(self, step: int) -> None:
        self.last = it = self.clock.step(self.backups(step), self.required(step),
                                         self.deadlines(step))  # fmt: skip
        r = self.rank
        self.skipped += it.skipped[r]
        if not it.skipped[r] and self.in_peers[r]:  # b while an in-peer was slowed, or not
            active = any(bool(it.straggled[j]) and not it.skipped[j] for j in self.in_peers[r])
            self.b_split[0 if active else 2] += it.backups[r]
            self.b_split[1 if active else 3] += 1
        self.waited_total += float(it.waited[r])
        self.observe(observations(it, self.in_peers))
        if self.rank == 0:
            for i in range(self.world_size):
                self.timeline.append((step, i, float(it.end[i]), it.backups[i], len(it.used[i]),
                                      len(it.late_used[i]), it.dropped[i],
                                      float(it.waited[i])))  # fmt: skip
        self.metrics = {
            "vtime": float(it.end[r]),
            "waited": float(it.waited[r]),
            "neighbours_used": float(len(it.used[r])),
            "late_used": float(len(it.late_used[r])),
            "dropped": float(it.dropped[r]),
            "backups": float(it.backups[r]),
            "skipped": float(it.skipped[r]),
        }
        if self.per_rank_b_metrics:
            self.metrics.update({f"b_rank{i}": float(b) for i, b in enumerate(it.backups)})
        if self.world_size == 1:
            return
        mine = flatten_params(self.params)
        # a rank that skipped the iteration sends nothing (every rank knows the clock)
        sends = {} if it.skipped[r] else dict.fromkeys(self.out_peers, mine)
        sources = [j for j in self.in_peers[r] if not it.skipped[j]]
        received = exchange(self.transport, sends, sources, mine, self._recv)
        self.sent += len(sends)
        fresh = [received[j] for j in it.used[r]]
        late = [self._kept.pop((j, s)) for j, s in it.late_used[r].items()]
        if it.skipped[r]:
            self._skip(mine, fresh + late)
        else:
            self._mix(mine, fresh, late)
        pending = self.inbox.pending
        for key in [k for k in self._kept if k not in pending]:
            del self._kept[key]
        for j, s in pending:
            if s == step:
                self._kept[(j, s)] = received[j].clone()

    def _handle(self, item: Any, step: int, arrived_now: list[int]) -> None:
        if isinstance(item, BaseException):
            raise RuntimeError("a background receive failed") from item
        j, s, buf, when = item
        if not self.inbox.arrive(j, s, when):
            return  # superseded or too stale already: counted as dropped then
        self._kept[(j, s)] = buf
        if s == step:
            arrived_now.append(j)
        obs = self._obs.get(s)
        if obs is not None:
            obs.arrivals[j] = when

    def _real_step(self, step: int) -> None:
        r, peers = self.rank, self.in_peers[self.rank]
        start = self._prev_end
        tau = float(self.straggler_model.draw(step)[0][r])
        time.sleep(tau * self.config.time_scale)
        compute_end = time.perf_counter()
        b = min(max(int(self.backups(step)[r]), 0), max(len(peers) - 1, 0))
        deadlines = self.deadlines(step)
        deadline = math.inf if deadlines is None else start + deadlines[r]
        if deadline < math.inf:
            b = 0  # wait for all, or until the deadline
        req = self.required(step)
        must = set(req[r]) & set(peers) if req else set()
        fresh: list[int] = []
        late: dict[int, int] = {}
        dropped: list[tuple[int, int]] = []
        if self.world_size > 1:
            mine = flatten_params(self.params)  # sent as is: never modified afterwards
            for dst in self.out_peers:
                work = self.transport.isend(mine, dst, tag=step)
                self._send_waiters[dst].todo.put((step, work, mine))
            self.sent += len(self.out_peers)
            for j in peers:
                buf = torch.empty_like(mine)
                work = self.transport.irecv(buf, j, tag=step)
                self.inbox.post(j, step)
                self._recv_waiters[j].todo.put((step, work, buf))
            obs = Observation(r, step, start, compute_end, math.nan,
                              dict.fromkeys(peers, math.inf), {}, b)  # fmt: skip
            self._obs[step] = obs
            for s in [s for s in self._obs if s < step - 64]:
                del self._obs[s]
            need = max(len(peers) - b, len(must))
            arrived_now: list[int] = []

            def satisfied() -> bool:
                if not must <= set(arrived_now):
                    return False
                if len(arrived_now) >= need:
                    return True
                return bool(arrived_now) and time.perf_counter() >= deadline

            def timeout() -> float | None:  # block until the deadline, once one model is in
                if deadline == math.inf or not arrived_now:
                    return None
                return max(deadline - time.perf_counter(), 0.0)

            while True:  # what completed already, without blocking
                try:
                    self._handle(self._done.get_nowait(), step, arrived_now)
                except queue.Empty:
                    break
            if not satisfied():
                t0 = time.perf_counter()
                with communicating():  # waiting on peers, for the launcher's hang detector
                    while not satisfied():
                        with contextlib.suppress(queue.Empty):  # Empty: the deadline passed
                            self._handle(self._done.get(timeout=timeout()), step, arrived_now)
                # the receives' waits ran on helper threads: charge the time this rank was
                # blocked on them as its communication time
                self.transport.stats.record("recv", seconds=time.perf_counter() - t0, calls=0)
            end = time.perf_counter()
            extra = [j for j in arrived_now if j not in must]
            fresh = sorted(must | set(extra[: max(need - len(must), 0)]))
            b = len(peers) - len(fresh)
            late, dropped = self.inbox.close(step, fresh, end)
            fresh_models = [self._kept.pop((j, step)) for j in fresh]
            late_models = [self._kept.pop((j, s)) for j, s in late.items()]
            for key in dropped:
                self._kept.pop(key, None)
            self._mix(mine, fresh_models, late_models)
            obs.end = end
            obs.used = {**dict.fromkeys(fresh, step), **late}
            self.observe([obs])
        end = time.perf_counter()
        waited = end - compute_end
        self.waited_total += waited
        self.iter_seconds.append(end - start)
        self._prev_end = end
        self.metrics = {
            "wtime": end - self._t0,
            "iter_seconds": end - start,
            "waited": waited,
            "neighbours_used": float(len(fresh)),
            "late_used": float(len(late)),
            "dropped": float(len(dropped)),
            "backups": float(b),
        }
        self.timeline.append((step, r, end - self._t0, b, len(fresh), len(late), len(dropped),
                              waited))  # fmt: skip

    # -- the end of the run ----------------------------------------------------------------

    def _finish(self) -> None:
        """Drain: wait every posted receive and send, then drop every message still pending."""
        if self.finished:
            return
        self.finished = True
        if not self.real:
            self.clock.finish()
            self._kept.clear()
            return
        waiters = [*self._recv_waiters.values(), *self._send_waiters.values()]
        for w in waiters:
            w.todo.put(None)
        with communicating():
            for w in waiters:
                w.join()
        for w in waiters:
            if w.error is not None:
                raise RuntimeError("a background send or receive failed") from w.error
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                break
            self._handle(item, -1, [])
        self.inbox.finish()
        self._kept.clear()
        if self.world_size > 1:  # every rank's timeline to rank 0, for the artifact
            with self.transport.harness():
                parts = self.transport.gather_object(self.timeline, dst=0)
            if parts is not None:
                self.timeline = sorted(row for part in parts for row in part)

    @property
    def checkpointable(self) -> bool:
        """Virtual clock only: in real time, receives in flight on helper threads cannot be
        saved (and the run is not reproducible anyway)."""
        return not self.real

    def elapsed(self) -> float:
        """Virtual clock: the mean over ranks of their iteration ends (every rank knows them);
        real clock: this rank's wall seconds since its first iteration."""
        if self.real:
            return self._prev_end - self._t0
        return float(self.clock.now.mean())

    def step_metrics(self) -> dict[str, float]:
        return dict(self.metrics)

    def totals(self) -> dict[str, float]:
        self._finish()  # a run stopped early (pruned) did not reach its last step
        if self.real:
            elapsed = self._prev_end - self._t0
        else:
            elapsed = float(self.last.end[self.rank]) if self.last is not None else 0.0
        box = self.inbox
        return {
            "vtime_sum": 0.0 if self.real else elapsed,
            "wall_sum": elapsed if self.real else 0.0,
            "waited_sum": self.waited_total,
            "ranks": 1.0,
            "real_ranks": 1.0 if self.real else 0.0,
            "messages_sent": float(self.sent),
            "messages_used_fresh": float(box.used_fresh),
            "messages_used_late": float(box.used_late),
            "messages_dropped": float(box.dropped),
            "iterations_skipped": float(self.skipped),
            "b_slowed_sum": self.b_split[0],
            "b_slowed_n": self.b_split[1],
            "b_calm_sum": self.b_split[2],
            "b_calm_n": self.b_split[3],
            # who was heard: summed over ranks, how many of each rank's messages were used
            f"sent_by_rank{self.rank}": float(self.sent),
            **{f"used_from_rank{j}": float(n) for j, n in box.used_from.items()},
        }

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        """Seconds of the run (virtual, or real wall time) and spent waiting, means over ranks;
        messages not accounted for (0 by construction)."""
        ranks = max(totals["ranks"], 1.0)
        out = {"waiting_seconds": totals["waited_sum"] / ranks}
        if totals.get("real_ranks", 0.0):
            out["real_seconds"] = totals["wall_sum"] / ranks  # not the CLI's wall_seconds
        else:
            out["virtual_seconds"] = totals["vtime_sum"] / ranks
        # the least-heard rank: the fraction of its messages anyone used (0 = its model never
        # reached the others, so the union graph was not connected over the run)
        shares = [
            totals.get(f"used_from_rank{key.removeprefix('sent_by_rank')}", 0.0) / sent
            for key, sent in totals.items()
            if key.startswith("sent_by_rank") and sent > 0
        ]
        if shares:
            out["least_heard_share"] = min(shares)
        # b while an in-peer is slowed against b while none is (virtual clock; skipped
        # iterations left out): a dynamic rule should skip more neighbours when one straggles
        if totals.get("b_slowed_n", 0.0) and totals.get("b_calm_n", 0.0):
            out["b_while_slowed"] = totals["b_slowed_sum"] / totals["b_slowed_n"]
            out["b_while_calm"] = totals["b_calm_sum"] / totals["b_calm_n"]
            out["b_rise"] = out["b_while_slowed"] - out["b_while_calm"]
        out["messages_unaccounted"] = totals["messages_sent"] - (
            totals["messages_used_fresh"] + totals["messages_used_late"]
            + totals["messages_dropped"])  # fmt: skip
        return out

    def artifacts(self) -> dict[str, str]:
        """Rank 0: every rank's b, messages used and time per step (virtual: the clock knows
        all ranks; real: gathered at the end of the run)."""
        clock = "wtime" if self.real else "vtime"
        head = f"step,rank,{clock},backups,fresh_used,late_used,dropped,waited"
        rows = [",".join(str(round(v, 6)) if isinstance(v, float) else str(v) for v in row)
                for row in self.timeline]  # fmt: skip
        return {"backups.csv": "\n".join([head, *rows]) + "\n"}
