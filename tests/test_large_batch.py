"""Large-batch training: LARS, the poly schedule with warm-up, label smoothing in the config."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import KeptMetrics
from torch import nn

from suite.config import RunConfig, apply_overrides, validate
from suite.errors import ConfigError
from suite.launcher import launch
from suite.loop import Job, Trainer, _lr_factor
from suite.optim import LARS, lars_param_groups
from suite.transport import Transport


def _lars_reference(p, g, v, lr, momentum, wd, eta, eps=1e-9):
    """The update of the module docstring, on float64 copies, by hand."""
    p_norm, g_norm = float(p.norm()), float(g.norm())
    local_lr = eta * p_norm / (g_norm + wd * p_norm + eps) if p_norm > 0 and g_norm > 0 else 1.0
    d = g + wd * p
    v = momentum * v + lr * local_lr * d
    return p - v, v


def test_lars_two_steps_match_the_formula() -> None:
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    lr, momentum, wd, eta = 0.7, 0.9, 0.05, 0.01
    opt = LARS([p], lr=lr, momentum=momentum, weight_decay=wd, trust_coefficient=eta)
    ref_p, ref_v = p.detach().clone(), torch.zeros_like(p)
    no_momentum_p = ref_p.clone()
    for _ in range(2):
        g = torch.randn_like(p)
        p.grad = g.clone()
        opt.step()
        ref_p, ref_v = _lars_reference(ref_p, g, ref_v, lr, momentum, wd, eta)
        no_momentum_p, _ = _lars_reference(no_momentum_p, g, 0 * ref_v, lr, 0.0, wd, eta)
        assert torch.allclose(p.detach(), ref_p, rtol=0, atol=1e-12)
        assert torch.allclose(opt.state[p]["momentum_buffer"], ref_v, rtol=0, atol=1e-12)
    # momentum mattered: without it the second step lands elsewhere
    assert float((ref_p - no_momentum_p).abs().max()) > 1e-4


def test_lars_uses_local_lr_one_for_a_zero_parameter() -> None:
    p = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = LARS([p], lr=0.1, momentum=0.0, weight_decay=0.0, trust_coefficient=1e-3)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.allclose(p.detach(), torch.full_like(p, -0.1))


def test_param_groups_exclude_biases_and_batchnorm() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    groups = lars_param_groups(model, weight_decay=0.1)
    scaled, excluded = groups
    assert scaled["lars"] is True and scaled["weight_decay"] == 0.1
    assert excluded["lars"] is False and excluded["weight_decay"] == 0.0
    assert {id(p) for p in scaled["params"]} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in excluded["params"]} == {
        id(model[0].bias),
        id(model[1].weight),
        id(model[1].bias),
        id(model[2].bias),
    }


def test_excluded_parameters_get_plain_momentum_sgd_without_weight_decay() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    small = [p.detach().clone().requires_grad_() for p in model.parameters() if p.ndim <= 1]
    lr, momentum = 0.3, 0.8
    lars = LARS(lars_param_groups(model, 0.5), lr=lr, momentum=momentum, weight_decay=0.5)
    sgd = torch.optim.SGD(small, lr=lr, momentum=momentum, weight_decay=0.0)
    weight0 = model[0].weight.detach().clone()
    for _ in range(3):  # the same gradients for both
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        for p, q in zip([p for p in model.parameters() if p.ndim <= 1], small, strict=True):
            q.grad = p.grad.clone()
        lars.step()
        sgd.step()
    model_small = [p for p in model.parameters() if p.ndim <= 1]
    assert len(model_small) == 3
    for p, q in zip(model_small, small, strict=True):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
    # and the weight did take (small) LARS steps
    assert not torch.equal(model[0].weight, weight0)


def test_trust_ratio_makes_the_first_update_scale_invariant() -> None:
    torch.manual_seed(2)
    init, g = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    updates = []
    for scale in (1.0, 10.0):
        p = nn.Parameter(init.clone())
        opt = LARS([p], lr=1.0, momentum=0.9, weight_decay=0.0, trust_coefficient=0.01, eps=0.0)
        p.grad = g * scale
        opt.step()
        updates.append(init - p.detach())
    assert float(updates[0].norm()) > 0
    assert torch.allclose(updates[0], updates[1], rtol=1e-12, atol=0)
    # and its size is eta * ||p|| (the trust ratio), whatever the gradient's size
    assert float(updates[0].norm()) == pytest.approx(0.01 * float(init.norm()), rel=1e-12)


def _poly(total: int, *items: str, steps_per_epoch: int = 10):
    cfg = apply_overrides(RunConfig(), ["optim.schedule=poly", *items])
    return _lr_factor(cfg, steps_per_epoch, total)


@pytest.mark.parametrize("power", [1.0, 2.2])
def test_poly_schedule_warms_up_linearly_then_decays_to_zero(power: float) -> None:
    total, warmup = 108, 8  # 100 decay steps
    f = _poly(total, "optim.warmup_epochs=0.8", f"optim.power={power}")
    assert [f(s) for s in range(warmup)] == pytest.approx([(s + 1) / warmup for s in range(8)])
    assert f(warmup - 1) == 1.0 and f(warmup) == 1.0
    decay = [f(s) for s in range(warmup, total)]
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert decay[-1] == pytest.approx(0.01**power) and decay[-1] < 0.011
    assert f(total) == 0.0
    assert abs(f(warmup + 50) - 0.5**power) < 1e-9


def test_warmup_steps_and_epochs_are_the_same_warmup() -> None:
    by_steps = _poly(50, "optim.warmup_steps=5")
    by_epochs = _poly(50, "optim.warmup_epochs=0.5")
    assert [by_steps(s) for s in range(51)] == [by_epochs(s) for s in range(51)]


def test_poly_needs_the_total_step_count() -> None:
    cfg = apply_overrides(RunConfig(), ["optim.schedule=poly"])
    with pytest.raises(ValueError, match="total_steps"):
        _lr_factor(cfg, 10)


@pytest.mark.parametrize(
    ("items", "fragments"),
    [
        (["label_smoothing=1.5"], ["label_smoothing", "[0, 1)"]),
        (["label_smoothing=-0.1"], ["label_smoothing"]),
        (["optim.power=0"], ["optim.power", "> 0"]),
        (["optim.trust_coefficient=0"], ["optim.trust_coefficient", "> 0"]),
        (["optim.name=lamb"], ["optim.name", "sgd, adagrad, lars"]),
        (["optim.schedule=cosine"], ["constant, multistep, poly"]),
        (["optim.warmup_steps=3", "optim.warmup_epochs=1"], ["not both"]),
        (["optim.name=lars", "optim.nesterov=true"], ["optim.nesterov"]),
    ],
)
def test_bad_large_batch_settings_are_config_errors(items: list[str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(RunConfig(), items)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_validate_checks_label_smoothing_on_a_built_config() -> None:
    from dataclasses import replace

    cfg = apply_overrides(RunConfig(), ["label_smoothing=0.1"])
    assert cfg.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="label_smoothing"):
        validate(replace(cfg, label_smoothing=1.0))


def _train(cfg: RunConfig) -> dict:
    sink = KeptMetrics()
    job = Job(cfg, target="test", paper="test", progress=False)
    trainer = Trainer(job, Transport(), sink)  # type: ignore[arg-type]
    summary, _ = trainer.run()
    return {
        "summary": summary,
        "losses": sink.series("train_loss"),
        "groups": [g.get("lars") for g in trainer.optimizer.param_groups],
        "optimizer": type(trainer.optimizer).__name__,
    }


def test_lars_poly_label_smoothing_and_accumulation_train_digits() -> None:
    cfg = apply_overrides(
        RunConfig(),
        [
            "algorithm=single",
            "nproc=1",
            "dataset=digits",
            "model=mlp",
            "model.hidden=32",
            "device=cpu",
            "eval_every=0",
            "eval_per_rank=false",
            "log_every=10",
            "steps=30",
            "batch_size=32",
            "micro_batches=2",
            "label_smoothing=0.1",
            "optim.name=lars",
            "optim.lr=2.0",
            "optim.momentum=0.9",
            "optim.weight_decay=5e-5",
            "optim.trust_coefficient=0.01",
            "optim.schedule=poly",
            "optim.power=2.2",
            "optim.warmup_epochs=0.2",
        ],
    )
    out = launch(_train, 1, (cfg,))[0]
    assert out["optimizer"] == "LARS"
    assert out["groups"] == [True, False]
    losses = [out["losses"][s] for s in range(30)]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
    assert out["summary"]["steps"] == 30


def test_label_smoothing_reaches_the_training_loss() -> None:
    """The same run with smoothing 0.5 ends at a higher training loss: a smoothed target cannot
    be fitted to zero loss (the floor is the smoothed target's entropy, about 1.5 nats here)."""
    common = ["algorithm=single", "nproc=1", "dataset=digits", "model=mlp", "model.hidden=32",
              "device=cpu", "eval_every=0", "eval_per_rank=false", "log_every=10", "steps=60",
              "optim.lr=0.2"]  # fmt: skip
    plain, smooth = (
        launch(_train, 1, (apply_overrides(RunConfig(), [*common, f"label_smoothing={s}"]),))[0]
        for s in (0.0, 0.5)
    )
    assert smooth["summary"]["train_loss"] > plain["summary"]["train_loss"] + 0.5
