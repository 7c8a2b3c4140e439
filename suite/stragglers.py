"""Stragglers: a seeded model of per-rank compute times and link delays, and the deterministic
virtual clock of decentralized iterations in which a rank waits only for its fastest neighbours.

Pure (no process group): every rank builds the same :class:`StragglerModel` from the same config
and draws the same tables, because each step's draws come from a generator seeded by
(seed, run seed, step) alone. The :class:`VirtualClock` then says, for every rank and
iteration, when its compute ended, which neighbours' messages it used (its n_i fastest, the
rest being its b_i backup workers) and when its iteration ended; convergence experiments run
on this clock so their "wall time" is reproducible, whatever the machine (the DyBW spec,
../shared/papers/dybw.md).

Virtual time of iteration t on rank i (start s_i, the end of its iteration t - 1):

    c_i = s_i + tau_i(t)                          compute ends, the model goes out
    a_ji = c_j + delay_ji(t)                      j's iteration-t model reaches i
    f_i = max(c_i, n_i-th smallest a_ji over i's in-peers j),   n_i = deg_i - b_i

and rank i averages with exactly those n_i neighbours ("fresh" messages). A neighbour it did not
wait for is a backup worker at that iteration: its message is not used fresh at iteration t.

Late messages. Every message is kept per (peer, iteration) in the receiver's :class:`Inbox` until
its fate is decided, exactly once: used fresh, used late, or dropped. With ``late="drop"`` a
message not used fresh is dropped at once (the original behaviour). With ``late="use"``, at the
end f_i of rank i's iteration t, for each neighbour j it did not use fresh, the newest message of
j of an iteration s < t that has arrived (arrival <= f_i), is newer than anything i already used
from j and is at most ``max_staleness`` iterations old (t - s <= max_staleness) is mixed in as
j's stale model; every older message of j still pending is superseded and dropped (when a fresh
message of j is used, all older ones of j are dropped likewise), and messages that could no longer
be used at iteration t + 1 (too stale) are dropped. Left-overs at the end of a run are dropped
(:meth:`VirtualClock.finish`). So for every run: messages sent = used fresh + used late + dropped.
The same :class:`Inbox` does this bookkeeping for the real-time mode (baselines.consensus_backup),
with arrival = when the receive completed.

A rank may instead stop at a deadline (``deadlines``: it uses every model arrived by then, at
least one), and with ``skip_ahead`` a rank that is behind (some in-peer's iteration-t model
reached it before it started t) skips iteration t: no compute (c_i = f_i = s_i), no message (its
model never arrives anywhere), and it takes the models of iteration t that reached it by s_i.
Without a deadline or skip_ahead the clock is as above (the DyBW stand-in uses both).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor


@dataclass(frozen=True)
class StragglerConfig:
    """Per-rank compute times and link delays, in virtual seconds (seeded, reproducible).

    kind: the compute-time distribution of a healthy rank: "constant" (= base), "shifted_exp"
        (base + Exp(mean ``scale``): the usual straggler model) or "lognormal" (base x
        LogNormal(0, ``scale``)).
    base, scale: as above (the DyBW smoke uses tau ~ 1 + Exp(0.2)).
    slow_ranks: ranks that straggle; each is ``slow_factor`` times slower at an iteration with
        probability ``slow_prob`` (1: persistently slow; < 1: intermittently).
    link_delay, link_jitter: a message takes link_delay + Exp(mean link_jitter) to arrive.
    network: "" (none), or a network (a preset or RATE[:LATENCY], :mod:`suite.network`) whose
        links a message also crosses: :class:`suite.netmodel.Links`, the network model's own
        link state (fair shares of the sender's uplink and the receiver's downlink after the
        receiver's notice, then the latency), carrying the model's bytes; its seconds are
        virtual seconds.
    seed: draws of step t depend only on (seed, the run's seed, t), so every rank computes
        the same tables and each training seed meets its own stragglers.
    """

    kind: Literal["constant", "shifted_exp", "lognormal"] = "shifted_exp"
    base: float = 1.0
    scale: float = 0.2
    slow_ranks: tuple[int, ...] = ()
    slow_factor: float = 5.0
    slow_prob: float = 1.0
    link_delay: float = 0.0
    link_jitter: float = 0.0
    seed: int = 0
    network: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "shifted_exp", "lognormal"):
            raise ValueError(
                f"straggler kind {self.kind!r}; valid choices: constant, shifted_exp, lognormal"
            )
        if self.base <= 0 or self.scale < 0 or self.slow_factor < 1:
            raise ValueError("need base > 0, scale >= 0 and slow_factor >= 1")
        if not 0.0 <= self.slow_prob <= 1.0:
            raise ValueError(f"slow_prob is a probability in [0, 1], got {self.slow_prob}")
        if self.link_delay < 0 or self.link_jitter < 0:
            raise ValueError("link_delay and link_jitter must be >= 0")
        if not 0 <= self.seed <= 2**32 - 1:
            raise ValueError(f"straggler seed must be in [0, {2**32 - 1}], got {self.seed}")
        if self.network:
            from suite.network import parse_network

            parse_network(self.network)  # a ConfigError (a ValueError) listing the presets


class StragglerModel:
    """The compute times and link delays of every rank at every step."""

    def __init__(self, config: StragglerConfig, world_size: int, run_seed: int = 0) -> None:
        bad = [r for r in config.slow_ranks if not 0 <= r < world_size]
        if bad:
            raise ValueError(f"slow_ranks {bad} are not ranks of a world of {world_size}")
        self.config, self.world_size, self.run_seed = config, world_size, run_seed

    def _generator(self, step: int) -> torch.Generator:
        seed = self.config.seed * 1_000_003 + self.run_seed * 1_000_000_007 + step
        return torch.Generator().manual_seed(seed)

    def draw(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """(compute seconds per rank, N x N link delays [src, dst], which ranks straggled)."""
        cfg, n = self.config, self.world_size
        g = self._generator(step)
        noise = torch.rand(n, generator=g, dtype=torch.float64)
        if cfg.kind == "constant":
            tau = torch.full((n,), cfg.base, dtype=torch.float64)
        elif cfg.kind == "shifted_exp":
            tau = cfg.base - cfg.scale * torch.log1p(-noise)  # inverse CDF of Exp(1/scale)
        else:
            normal = torch.randn(n, generator=g, dtype=torch.float64)
            tau = cfg.base * torch.exp(cfg.scale * normal)
        slow = torch.zeros(n, dtype=torch.bool)
        if cfg.slow_ranks:
            hit = torch.rand(n, generator=g, dtype=torch.float64) < cfg.slow_prob
            ranks = torch.tensor(cfg.slow_ranks)
            slow[ranks] = hit[ranks]
        tau = torch.where(slow, tau * cfg.slow_factor, tau)
        jitter = torch.rand((n, n), generator=g, dtype=torch.float64)
        delays = cfg.link_delay - cfg.link_jitter * torch.log1p(-jitter)
        return tau, delays, slow


Key = tuple[int, int]  # (peer, iteration) of a message


@dataclass
class Inbox:
    """One rank's messages from its in-peers, each kept per (peer, iteration) until its fate is
    decided exactly once: used fresh, used late, or dropped (pure bookkeeping, no tensors).

    ``post`` a message when it is sent (arrival known in virtual time, ``inf`` until its receive
    completes in real time: then ``arrive``); ``close`` an iteration with the peers used fresh
    and the time the iteration ended; ``finish`` drops what is left at the end of a run."""

    peers: list[int]
    late: Literal["drop", "use"] = "drop"
    max_staleness: int = 8
    pending: dict[Key, float] = field(default_factory=dict)  # (peer, iteration) -> arrival
    last_used: dict[int, int] = field(default_factory=dict)  # peer -> newest iteration used
    used_fresh: int = 0
    used_late: int = 0
    dropped: int = 0
    posted: int = 0  # messages posted to this inbox (= used_fresh + used_late + dropped at the end)
    used_from: dict[int, int] = field(default_factory=dict)  # peer -> its messages used

    def __post_init__(self) -> None:
        if self.late not in ("drop", "use"):
            raise ValueError(f"late {self.late!r}; valid choices: drop, use")
        if self.max_staleness < 1:
            raise ValueError(f"max_staleness must be >= 1, got {self.max_staleness}")
        self.last_used = {j: -1 for j in self.peers}
        self.used_from = dict.fromkeys(self.peers, 0)

    def post(self, peer: int, iteration: int, arrival: float = math.inf) -> None:
        key = (peer, iteration)
        if key in self.pending or iteration <= self.last_used[peer]:
            raise ValueError(f"message {key} posted twice or after a newer one was used")
        self.pending[key] = arrival
        self.posted += 1

    def arrive(self, peer: int, iteration: int, when: float) -> bool:
        """Record that a message arrived at ``when``; False if its fate was decided already
        (dropped: superseded or too stale), so its payload can be discarded."""
        key = (peer, iteration)
        if key not in self.pending:
            return False
        self.pending[key] = when
        return True

    def _drop(self, keys: list[Key]) -> list[Key]:
        for key in keys:
            del self.pending[key]
        self.dropped += len(keys)
        return keys

    def close(self, t: int, fresh: list[int], end: float) -> tuple[dict[int, int], list[Key]]:
        """End iteration ``t`` at time ``end`` having used ``fresh`` (peers whose iteration-t
        message was waited for). Returns ({peer: iteration} of the late messages used now, in
        peer order; the keys dropped now)."""
        for j in fresh:
            if (j, t) not in self.pending:
                raise ValueError(f"fresh message {(j, t)} was not posted or is used already")
            del self.pending[(j, t)]
            self.last_used[j] = t
            self.used_from[j] += 1
        self.used_fresh += len(fresh)
        late: dict[int, int] = {}
        if self.late == "drop":
            return late, self._drop(sorted(self.pending))
        fresh_set = set(fresh)
        newest: dict[int, int] = {}
        for (j, s), arrival in self.pending.items():
            if j not in fresh_set and s < t and arrival <= end and t - s <= self.max_staleness:
                newest[j] = max(newest.get(j, -1), s)
        for j in sorted(newest):
            del self.pending[(j, newest[j])]
            self.last_used[j] = late[j] = newest[j]
            self.used_from[j] += 1
        self.used_late += len(late)
        gone = [
            (j, s)
            for (j, s) in sorted(self.pending)
            if s <= self.last_used[j] or t + 1 - s > self.max_staleness
        ]
        return late, self._drop(gone)

    def finish(self) -> list[Key]:
        """Drop every message still pending (the end of the run)."""
        return self._drop(sorted(self.pending))


@dataclass
class Iteration:
    """One iteration on the virtual clock, every rank."""

    compute_end: Tensor  # c_i
    end: Tensor  # f_i
    waited: Tensor  # f_i - c_i: time spent waiting for neighbours
    used: list[list[int]]  # the neighbours each rank used fresh (its n_i fastest + required)
    straggled: Tensor  # which ranks were slowed at this iteration
    start: Tensor  # s_i: each rank's start of this iteration
    arrivals: list[Tensor]  # per rank, when each of its in-peers' models arrived (peer order)
    late_used: list[dict[int, int]] = field(default_factory=list)  # per rank {peer: iteration}
    dropped: list[int] = field(default_factory=list)  # per rank, messages dropped at this end
    backups: list[int] = field(default_factory=list)  # per rank, b_i after clipping
    t: int = 0  # the iteration's index
    skipped: list[bool] = field(default_factory=list)  # per rank: skipped ahead (skip_ahead)

    def mixed(self, rank: int) -> dict[int, int]:
        """{peer: iteration of the message} rank averaged with at this iteration."""
        out = {j: self.t for j in self.used[rank]}
        if self.late_used:
            out.update(self.late_used[rank])
        return dict(sorted(out.items()))


@dataclass
class VirtualClock:
    """Deterministic virtual time of consensus iterations with backup workers.

    ``in_peers[i]`` are the neighbours whose models rank i may average with; ``step(b)`` advances
    every rank one iteration, rank i waiting for all but ``b[i]`` of them. ``late`` and
    ``max_staleness``: what happens to messages not waited for (see the module docstring); each
    rank's messages are in ``inboxes[i]``. With the model's ``network`` set, every message of
    ``message_bytes`` also crosses the network model's links (:class:`suite.netmodel.Links`):
    each iteration every rank sends and posts its receives at its compute end, through
    :meth:`suite.netmodel.Links.exchange` (gloo's rendezvous, fair-shared links), so the same
    exchange replayed by :func:`suite.netmodel.replay` takes the same time. The clock answers
    an iteration's messages before the next one's are known: exact while no message shares a
    link with a later iteration's (one that does starts when the links are free)."""

    model: StragglerModel
    in_peers: list[list[int]]
    late: Literal["drop", "use"] = "drop"
    max_staleness: int = 8
    message_bytes: int = 0
    skip_ahead: bool = False
    now: Tensor = field(init=False)  # each rank's end of its last iteration
    t: int = field(init=False, default=0)
    inboxes: list[Inbox] = field(init=False)

    def __post_init__(self) -> None:
        if len(self.in_peers) != self.model.world_size:
            raise ValueError("in_peers needs one list of neighbours per rank")
        self.now = torch.zeros(self.model.world_size, dtype=torch.float64)
        self.inboxes = [Inbox(list(p), self.late, self.max_staleness) for p in self.in_peers]
        self.links = None
        if self.model.config.network:
            from suite.netmodel import Links

            self.links = Links(self.model.config.network, self.model.world_size)

    def _link_delays(self, compute_end: Tensor, skipped: list[bool]) -> Tensor:
        """[src, dst] seconds from src's compute end to its message's arrival at dst on the
        network model's links (0 where src does not send to dst, or skipped the iteration)."""
        n = self.model.world_size
        out = torch.zeros((n, n), dtype=torch.float64)
        ends = compute_end.tolist()
        # gloo's rendezvous, as in a replay: i posts its receives at its compute end; a rank
        # that skips ahead sends nothing
        senders = sorted((j for j in range(n) if not skipped[j]), key=lambda j: (ends[j], j))
        pairs = [(j, i) for j in senders for i in range(n) if j in self.in_peers[i]]
        flows = [(j, i, self.message_bytes, ends[j], ends[i]) for j, i in pairs]
        for (j, i), (_, arrival) in zip(pairs, self.links.exchange(flows), strict=True):
            out[j, i] = arrival - ends[j]
        return out

    def finish(self) -> list[int]:
        """End of the run: drop every pending message; per rank, how many were dropped."""
        return [len(box.finish()) for box in self.inboxes]

    def step(
        self,
        backups: list[int],
        required: list[set[int]] | None = None,
        deadlines: list[float] | None = None,
    ) -> Iteration:
        """Advance one iteration; ``backups[i]`` = b_i, the neighbours rank i does not wait for
        (clipped to [0, deg_i - 1]: a rank always averages with at least one neighbour).
        ``required[i]``: neighbours rank i waits for whatever b_i says (to keep every edge in
        use now and then); the rest of its n_i are the fastest. ``deadlines[i]`` (seconds after
        rank i's start; ``inf``: none): rank i uses every model that arrived by the later of its
        compute end and the deadline (at least the first to arrive), and b_i is what it did not
        wait for. With ``skip_ahead``, a rank that some in-peer's iteration-t model reaches
        before it even starts iteration t is behind: it skips the iteration (no compute, no
        message: ``skipped``), takes the in-peers' iteration-t models that arrived by its start,
        and ends the iteration there."""
        tau, delays, slow = self.model.draw(self.t)
        n = self.model.world_size
        start = self.now
        skipped = [False] * n
        if self.skip_ahead:
            ready = start + tau  # where each rank would be, were nobody to skip
            skipped = [bool(peers) and min(float(ready[j] + delays[j, i]) for j in peers)
                       <= float(start[i]) for i, peers in enumerate(self.in_peers)]  # fmt: skip
        compute_end = torch.where(torch.tensor(skipped), start, start + tau)
        if self.links is not None:
            delays = delays + self._link_delays(compute_end, skipped)
        end = compute_end.clone()
        used: list[list[int]] = []
        arrivals: list[Tensor] = []
        clipped: list[int] = []
        for i, peers in enumerate(self.in_peers):
            # a skipped rank sends nothing: its model never arrives
            arrival = torch.tensor([math.inf if skipped[j] else float(compute_end[j] + delays[j, i])
                                    for j in peers], dtype=torch.float64)  # fmt: skip
            arrivals.append(arrival)
            sent = [k for k, j in enumerate(peers) if not skipped[j]]
            for k in sent:
                self.inboxes[i].post(peers[k], self.t, float(arrival[k]))
            if not sent:
                used.append([])
                clipped.append(len(peers))
                continue
            order = sorted(sent, key=lambda k: (float(arrival[k]), peers[k]))
            if skipped[i] or (deadlines is not None and deadlines[i] < math.inf):
                by = (
                    float(start[i])
                    if skipped[i]
                    else max(float(compute_end[i]), float(start[i]) + deadlines[i])
                )
                chosen = [k for k in order if float(arrival[k]) <= by] or order[:1]
                clipped.append(len(peers) - len(chosen))
            else:
                b = min(max(int(backups[i]), 0), len(sent) - 1)
                must = {k for k in sent if required and peers[k] in required[i]}
                chosen = sorted(must) + [k for k in order if k not in must]
                chosen = chosen[: max(len(sent) - b, len(must))]
                clipped.append(b + len(peers) - len(sent))
            used.append(sorted(peers[k] for k in chosen))
            end[i] = max(float(compute_end[i]), max(float(arrival[k]) for k in chosen))
        late_used: list[dict[int, int]] = []
        dropped: list[int] = []
        for i, box in enumerate(self.inboxes):
            late, gone = box.close(self.t, used[i], float(end[i]))
            late_used.append(late)
            dropped.append(len(gone))
        it = Iteration(compute_end, end, end - compute_end, used, slow, start, arrivals,
                       late_used, dropped, clipped, self.t, skipped)  # fmt: skip
        self.now = end
        self.t += 1
        return it


def mean_compute_time(config: StragglerConfig, rank: int) -> float:
    """Expected compute seconds of ``rank`` per iteration under ``config`` (for checks)."""
    cfg = config
    healthy = {
        "constant": cfg.base,
        "shifted_exp": cfg.base + cfg.scale,
        "lognormal": cfg.base * math.exp(cfg.scale**2 / 2),
    }[cfg.kind]
    if rank in cfg.slow_ranks:
        return healthy * (1 + cfg.slow_prob * (cfg.slow_factor - 1))
    return healthy
