"""Ring topology, D-PSGD and EventGraD: exact where the maths says so, and every byte counted."""

from __future__ import annotations

import math

import pytest
import torch

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.topologies import Ring
from suite.transport import Transport

SMALL = ["dataset=digits", "model=mlp", "model.hidden=16", "eval_every=0", "eval_per_rank=false"]
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
