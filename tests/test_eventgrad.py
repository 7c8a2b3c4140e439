"""Ring topology, D-PSGD and EventGraD: exact where the maths says so, and every byte counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from suite import netmodel, trace
from suite.config import RunConfig, apply_overrides
from suite.errors import ConfigError
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.topologies import Ring
from suite.transport import Transport

SMALL = [
    "dataset=digits",
    "model=mlp",
    "model.hidden=16",
    "eval_every=0",
    "eval_per_rank=false",
    "device=cpu",
]
TENSORS = 4  # the MLP's two weights and two biases


def _config(*items: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*SMALL, *items])


def _train(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return {"state": state, "summary": summary, "algo": trainer.algorithm}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


GAP8 = 1 - (1 + 2 * math.cos(math.pi / 4)) / 3


@pytest.mark.parametrize(("n", "gap"), [(2, 2 / 3), (3, 1.0), (4, 2 / 3), (8, GAP8)])
def test_ring_is_doubly_stochastic_with_the_known_spectral_gap(n: int, gap: float) -> None:
    ring = Ring(None, n)
    w = ring.mixing_matrix()
    assert torch.allclose(w, w.T)
    assert torch.allclose(w.sum(0), torch.ones(n, dtype=torch.float64))
    assert ring.spectral_gap() == pytest.approx(gap)
    assert sorted(ring.in_peers(0)) == sorted({1 % n, (n - 1) % n} - {0})


@pytest.mark.parametrize("n", [2, 3])
def test_eventgrad_with_horizon_zero_is_dpsgd(n: int) -> None:
    common = [f"nproc={n}", "steps=25", "optim.lr=0.1"]
    dpsgd = launch(_train, n, (_config("algorithm=dpsgd", *common),))
    event = launch(_train, n, (_config("algorithm=eventgrad", "algorithm.horizon=0", *common),))
    for a, b in zip(dpsgd, event, strict=True):
        assert _max_diff(a["state"], b["state"]) < 1e-6
    # the ranks did not simply stay equal: decentralized models differ from each other
    assert _max_diff(dpsgd[0]["state"], dpsgd[1]["state"]) > 1e-4
    # every tensor fired every step on every rank: nothing saved, the flags on top of D-PSGD
    summary = event[0]["summary"]
    assert summary["savings"] == 0.0
    flags = n * 25 * 2 * TENSORS  # one byte per tensor per neighbour per step, every rank
    # D-PSGD sends once per distinct peer; EventGraD to left and right, the same rank if N = 2
    data = dpsgd[0]["summary"]["bytes_sent"] * (2 if n == 2 else 1)
    assert summary["bytes_sent"] == data + flags


def test_dpsgd_on_three_ranks_mixes_with_uniform_thirds() -> None:
    # with lr = 0 nothing moves, so mix the ranks' different starting points by hand
    results = launch(_mix_once, 3)
    xs = torch.stack([r[0] for r in results])
    mixed = torch.stack([r[1] for r in results])
    assert torch.allclose(mixed, Ring(None, 3).mixing_matrix().float() @ xs, atol=1e-6)


def _mix_once() -> tuple[torch.Tensor, torch.Tensor]:
    from baselines.dpsgd import DPSGD, DPSGDConfig
    from suite.algorithms.base import Context

    transport = Transport()
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(transport.rank + 1))
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx = Context(transport, model, sgd, torch.device("cpu"), 1, 1, 0)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    DPSGD(DPSGDConfig(), ctx).reduce_gradients(0)
    return before, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_flags_are_counted_and_a_silent_trigger_sends_nothing_else() -> None:
    steps, warmup = 40, 10
    cfg = _config(
        "algorithm=eventgrad", "algorithm.mode=static", "algorithm.threshold=1e9",
        f"algorithm.warmup={warmup}", "nproc=2", f"steps={steps}",
    )  # fmt: skip
    runs = launch(_train, 2, (cfg,))
    summary = runs[0]["summary"]
    params = sum(v.numel() for v in runs[0]["state"].values())
    per_rank = steps * 2 * TENSORS + warmup * 2 * params * 4  # flags + warm-up tensors, 4 B each
    assert summary["bytes_sent"] == 2 * per_rank
    assert summary["messages"] == 2 * (steps * 2 + warmup * 2 * TENSORS)
    assert summary["savings"] == pytest.approx(1 - warmup / steps)


def test_topk_with_every_entry_equals_dense_eventgrad() -> None:
    common = ["algorithm=eventgrad", "nproc=2", "steps=40", "algorithm.warmup=5"]
    dense = launch(_train, 2, (_config(*common),))
    full_topk = launch(_train, 2, (_config(*common, "algorithm.topk=1.0"),))
    for a, b in zip(dense, full_topk, strict=True):
        assert _max_diff(a["state"], b["state"]) < 1e-6
    sparse = launch(_train, 2, (_config(*common, "algorithm.topk=0.1"),))
    assert sparse[0]["summary"]["bytes_sent"] < 0.3 * dense[0]["summary"]["bytes_sent"]


def _run_and_log(cfg: RunConfig) -> dict:
    out = _train(cfg)
    algo = out.pop("algo")
    sizes = [p.numel() for p in algo.params]
    stats = algo.transport.stats
    return {"log": torch.stack(algo.event_log), "sizes": sizes, "bytes": stats.bytes_sent,
            "messages": stats.messages, "recv": stats.bytes_recv}  # fmt: skip


@pytest.mark.parametrize("topk", [0.0, 0.25])
def test_message_and_byte_counts_follow_the_event_log(topk: float) -> None:
    steps = 60
    cfg = _config("algorithm=eventgrad", "nproc=3", f"steps={steps}", "algorithm.warmup=5",
                  f"algorithm.topk={topk}")  # fmt: skip
    runs = launch(_run_and_log, 3, (cfg,))
    for rank, run in enumerate(runs):
        log, sizes = run["log"], torch.tensor(run["sizes"])
        assert 0 < int(log[5:].sum()) < log[5:].numel()  # the trigger really chose
        sent = sizes if not topk else 2 * torch.ceil(topk * sizes)
        payload = int((log.float() @ sent.float()).sum()) * 4 * 2  # float32, to both sides
        assert run["bytes"] == steps * 2 * TENSORS + payload  # flags + tensors
        assert run["messages"] == steps * 2 + int(log.sum()) * 2
        # what a rank receives is what its two neighbours' logs say they sent
        left, right = runs[(rank - 1) % 3], runs[(rank + 1) % 3]
        expect = sum(int((r["log"].float() @ sent.float()).sum()) * 4 for r in (left, right))
        assert run["recv"] == 2 * steps * TENSORS + expect


def _scripted(fires: list[list[bool]]) -> dict:
    from suite.algorithms.base import Context
    from suite.algorithms.eventgrad import EventGrad, EventGradConfig

    transport = Transport()
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)  # two tensors, same x0 on every rank
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    algo = EventGrad(
        EventGradConfig(), Context(transport, model, sgd, torch.device("cpu"), 9, 9, 0)
    )
    mine = fires[transport.rank]
    algo.trigger = lambda step: torch.tensor([mine[step]] * 2)
    sent_at = {}
    for step in range(len(mine)):
        with torch.no_grad():  # a local "update" that differs per rank and per step
            for p in model.parameters():
                p.add_(10.0**transport.rank * (step + 1))
        if mine[step]:
            sent_at = {i: p.detach().clone() for i, p in enumerate(model.parameters())}
        before = [p.detach().clone() for p in model.parameters()]
        algo.reduce_gradients(step)
    after = [p.detach().clone() for p in model.parameters()]
    copies = {"left": list(algo.copy_left), "right": list(algo.copy_right)}
    return {"sent": sent_at, "before": before, "after": after, **copies}


def test_receivers_mix_with_stale_copies_from_the_last_event() -> None:
    # rank 1 fires at step 0 only; rank 0 and 2 every step: rank 0's right copy and rank 2's
    # left copy must stay what rank 1 sent at step 0, although rank 1 kept moving
    fires = [[True] * 4, [True, False, False, False], [True] * 4]
    runs = launch(_scripted, 3, (fires,))
    stale = runs[1]["sent"]
    for i in range(2):
        assert torch.equal(runs[0]["right"][i], stale[i])
        assert torch.equal(runs[2]["left"][i], stale[i])
        assert not torch.equal(runs[1]["before"][i], stale[i])  # rank 1 did move on
        expected = (runs[0]["before"][i] + runs[0]["left"][i] + stale[i]) / 3
        assert torch.allclose(runs[0]["after"][i], expected)


def _quarter_turn_then_hold(trigger: str) -> list[list[bool]]:
    """Which tensors fire when the weight turns a quarter (its norm unchanged), then stays."""
    from suite.algorithms.base import Context
    from suite.algorithms.eventgrad import EventGrad, EventGradConfig

    transport = Transport()
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.bias.zero_()
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    cfg = EventGradConfig(mode="static", threshold=0.5, warmup=0, trigger=trigger)
    algo = EventGrad(cfg, Context(transport, model, sgd, torch.device("cpu"), 9, 9, 0))
    fired = []
    for step in range(2):
        with torch.no_grad():
            model.weight.copy_(torch.tensor([[0.0, 1.0]]))
        algo.reduce_gradients(step)
        fired.append(algo.fired.tolist())
    return fired


def test_the_distance_trigger_sees_a_turn_the_norm_trigger_misses() -> None:
    # the paper's trigger compares norms: a quarter turn keeps it, so nothing fires; the
    # distance trigger fires once (sqrt 2 >= 0.5), then holds: the neighbours have it now
    assert launch(_quarter_turn_then_hold, 2, ("norm",))[0] == [[False, False]] * 2
    assert launch(_quarter_turn_then_hold, 2, ("distance",))[0] == [[True, False], [False, False]]
    with pytest.raises(ConfigError, match="valid choices: norm, distance"):
        _config("algorithm=eventgrad", "algorithm.trigger=angle")


def _records(rows: list[tuple]) -> np.ndarray:
    """Records of one rank from (step, kind, peer, payload, tag, gap, ref) tuples."""
    out = np.zeros(len(rows), dtype=trace.DTYPE)
    for i, (step, kind, peer, payload, tag, gap, ref) in enumerate(rows):
        out[i] = (step, trace.KIND[kind], 0, peer, payload, tag, 0, gap, 0.0, ref, np.nan, np.nan)
    return out


def test_the_flag_cost_replay_drops_flag_messages_and_keeps_compute() -> None:
    from reproduce.eventgrad.flags import without_flags

    # each rank: flags both ways (tags 0, 1) and their waits, then one tensor each way (tag 2)
    def rank(peer: int, gap: float) -> np.ndarray:
        flags = [(0, op, peer, 2, tag, 0.0, -1) for op in ("send", "recv") for tag in (0, 1)]
        flags[0] = (0, "send", peer, 2, 0, gap, -1)
        return _records([
            *flags, *[(0, "wait", -1, 0, 0, 0.0, i) for i in range(4)],
            (0, "send", peer, 4000, 2, 0.001, -1), (0, "recv", peer, 4000, 2, 0.0, -1),
            (0, "wait", -1, 0, 0, 0.0, 8), (0, "wait", -1, 0, 0, 0.0, 9),
        ])  # fmt: skip

    tr = trace.Trace(2, ((0, 1),), ("algorithm",), (rank(1, 0.01), rank(0, 0.01)))
    bare = without_flags(tr)
    kept = bare.ranks[0]
    assert list(kept["tag"][kept["kind"] == trace.KIND["send"]]) == [2]
    assert list(kept["ref"][kept["kind"] == trace.KIND["wait"]]) == [0, 1]  # remapped
    assert kept["gap"].sum() == pytest.approx(tr.ranks[0]["gap"].sum())  # compute kept
    latency = netmodel.replay(tr, "100mbit:20ms").network_seconds
    assert netmodel.replay(bare, "100mbit:20ms").network_seconds < latency - 0.015  # one round
