"""Adaptive Top-K (the stand-in rule) and fixed-K Top-K: the budget is spent exactly and never
exceeded, every rank sends the same K, compared runs spend equal budgets, and a dense budget is
dense SGD."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from suite.algorithms.adaptive_topk import BudgetPacer, water_fill
from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.registry import ALGORITHMS, RECIPES
from suite.transport import Transport

SMALL = ["dataset=digits", "model=mlp", "model.hidden=16", "eval_every=0", "device=cpu",
         "eval_per_rank=false", "optim.momentum=0.9"]  # fmt: skip
D = 64 * 16 + 16 + 16 * 10 + 10  # the MLP's parameters


def _config(*items: str) -> RunConfig:
    return apply_overrides(RunConfig(), [*SMALL, *items])


def _train(cfg: RunConfig) -> dict:
    trainer = Trainer(Job(cfg, target="test", paper="test", progress=False), Transport())
    summary, _ = trainer.run()
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    return {"params": params, "summary": summary, "k": getattr(trainer.algorithm, "k_log", [])}


@settings(max_examples=300, deadline=None)
@given(
    steps=st.integers(1, 60),
    k_min=st.integers(1, 20),
    spread=st.integers(0, 50),
    where=st.floats(0.0, 1.0),
    wanted=st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=60, max_size=60),
)
def test_the_pacer_never_exceeds_the_budget_and_spends_it_exactly(
    steps: int, k_min: int, spread: int, where: float, wanted: list[float]
) -> None:
    k_max = k_min + spread
    budget = round(k_min * steps + where * (k_max - k_min) * steps)  # any feasible budget
    pacer = BudgetPacer(budget, steps, k_min, k_max)
    spent = 0
    for t in range(steps):
        k = pacer.take(wanted[t])
        spent += k
        assert k_min <= k <= k_max
        assert spent <= budget
    assert spent == budget == pacer.spent
    with pytest.raises(RuntimeError):
        pacer.take(1.0)


def test_an_infeasible_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be spent"):
        BudgetPacer(budget=5, steps=10, k_min=1, k_max=3)
    with pytest.raises(ValueError, match="cannot be spent"):
        BudgetPacer(budget=31, steps=10, k_min=1, k_max=3)


@pytest.mark.parametrize("ef", ["false", "true"])
def test_every_rank_sends_the_same_k_and_compared_runs_spend_equal_budgets(ef: str) -> None:
    n, steps = 3, 40
    common = (f"nproc={n}", f"steps={steps}", "algorithm.density=0.02",
              f"algorithm.error_feedback={ef}")  # fmt: skip
    adaptive = launch(_train, n, (_config("algorithm=adaptive_topk", *common),))
    fixed = launch(_train, n, (_config("algorithm=topk_sgd", *common),))
    assert adaptive[0]["k"] == adaptive[1]["k"] == adaptive[2]["k"]
    assert len(set(adaptive[0]["k"])) > 1  # K really changed from step to step
    k_bar = int(0.02 * D)
    assert fixed[0]["k"] == [k_bar] * steps
    a, f = adaptive[0]["summary"], fixed[0]["summary"]
    assert a["elements_sent"] == f["elements_sent"] == n * steps * k_bar
    assert a["budget_used"] == 1.0
    # entries cost the same (float32 value + int16 index): only the agreement scalar differs,
    # one float per rank per step, carried in the all-gather's message: no round of its own
    assert f["bytes_sent"] == n * steps * k_bar * (4 + 2)
    assert a["bytes_sent"] == f["bytes_sent"] + n * 4 * steps
    assert a["messages"] == f["messages"]
    # the models stay identical across ranks (everyone applies the same sparse average)
    assert torch.equal(adaptive[0]["params"], adaptive[2]["params"])


def test_a_dense_budget_is_dense_sgd() -> None:
    common = ("nproc=2", "steps=25", "optim.lr=0.05")
    adaptive = launch(_train, 2, (_config("algorithm=adaptive_topk", "algorithm.density=1.0",
                                          *common),))  # fmt: skip
    dense = launch(_train, 2, (_config("algorithm=allreduce_sgd", *common),))
    assert adaptive[0]["k"] == [D] * 25
    assert float((adaptive[0]["params"] - dense[0]["params"]).abs().max()) < 1e-5


def test_the_stand_in_is_labelled_in_the_registry_and_in_reports() -> None:
    from reports.text import card as _card

    entry = ALGORITHMS.get("adaptive_topk")
    assert entry.stand_in and entry.label.endswith("[stand-in]")
    assert not ALGORITHMS.get("topk_sgd").stand_in
    card = _card(RECIPES.get("adaptive_topk/mnist").obj)
    assert "**Stand-in:**" in card and "`adaptive_topk`" in card
    assert "Stand-in" not in _card(RECIPES.get("saef/cifar-100").obj)


def test_adaptive_topk_spends_more_early_than_late_on_the_smoke_gradients() -> None:
    """The smoke profile's gradients shrink (per-rank ||g||^2 falls by half in the first
    quarter); water-filling under the budget then spends more K early (NOTES.md)."""
    smoke = RECIPES.get("adaptive_topk/mnist").obj.profiles["smoke"].overrides
    extra = ["eval_every=0", "device=cpu", "algorithm=adaptive_topk", "algorithm.density=0.01"]
    cfg = apply_overrides(RunConfig(), [*smoke, *extra])
    out = launch(_train, 4, (cfg,))
    k, summary = out[0]["k"], out[0]["summary"]
    assert summary["budget_used"] == 1.0
    assert summary["k_early_late"] > 1.2, k
    assert sum(k[: len(k) // 2]) > sum(k[len(k) // 2 :])


def test_a_budget_of_one_entry_a_step_still_adapts() -> None:
    """K-bar = 1: K_min rounds down to 0 (a step may send nothing), so K is not forced to 1."""
    cfg = _config("algorithm=adaptive_topk", "nproc=2", "steps=40", f"algorithm.density={1.5 / D}")
    out = launch(_train, 2, (cfg,))
    assert sum(out[0]["k"]) == 40 and out[0]["summary"]["budget_used"] == 1.0
    assert len(set(out[0]["k"])) > 1
    assert torch.equal(out[0]["params"], out[1]["params"])


def _brute_level_count(w: torch.Tensor, budget: float, steps: int, drop: float, h: float) -> int:
    logw = w.double().log()
    lm = -drop * (1 - torch.exp(-torch.arange(1, steps + 1, dtype=torch.float64) / h))
    lo, hi = -80.0, 20.0
    for _ in range(80):
        mid = (lo + hi) / 2
        spent = (logw[None, :] + lm[:, None] >= mid).sum().item()
        lo, hi = (mid, hi) if spent > budget else (lo, mid)
    return int((logw + lm[0] >= hi).sum())


@pytest.mark.parametrize("drop", [-0.5, 0.0, 0.7])
def test_water_fill_matches_a_brute_force_level(drop: float) -> None:
    w = torch.randn(500, generator=torch.Generator().manual_seed(3)).pow(2) + 1e-6
    got = water_fill(w, 20.0 * 50, 50, drop, 10.0)
    assert abs(got - _brute_level_count(w, 20.0 * 50, 50, drop, 10.0)) <= 1
    if drop == 0.0:  # a flat forecast spends the even share
        assert abs(got - 20) <= 1
    if drop > 0:  # shrinking gradients: spend more now
        assert got > 25
    if drop < 0:
        assert got < 15
    # a carried residual (floor) damps the forecast toward the even share
    damped = water_fill(w, 20.0 * 50, 50, drop, 10.0, floor=0.9)
    assert abs(damped - 20) <= abs(got - 20)
