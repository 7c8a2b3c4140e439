"""What the divergence check costs a step: the parameter check against one training step.

The loss is checked every step for free (the loop already reads it); the parameters are checked
with one fused norm (:func:`suite.loop.parameters_finite`) only every ``log_every`` steps and
before evaluations. Measured on the digits MLP (the cheapest step there is) and on ResNet-20 at
CIFAR shape, one thread, no communication. Target: amortised over the default ``log_every``,
the check costs <= 1% of a step.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from suite.config import RunConfig, apply_overrides
from suite.loop import initial_model, parameters_finite
from suite.tasks.data import Dataset

TARGET = 0.01


def _seconds(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


@pytest.mark.bench
@pytest.mark.parametrize(
    ("model", "shape", "repeat"), [("mlp", (64,), 500), ("resnet20", (3, 32, 32), 10)]
)
def test_the_parameter_check_costs_little_per_step(benchmark, model, shape, repeat) -> None:
    torch.set_num_threads(1)
    cfg = apply_overrides(RunConfig(), [f"model={model}"])
    net = initial_model(cfg, Dataset(model, shape, 10, train=[], test=[]))  # shape is enough
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(cfg.batch_size, *shape), torch.randint(0, 10, (cfg.batch_size,))

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    step_s = _seconds(step, repeat)
    check_s = benchmark.pedantic(lambda: _seconds(lambda: parameters_finite(net), 20 * repeat))
    share = check_s / step_s
    amortised = share / cfg.log_every
    benchmark.extra_info.update(step_s=step_s, check_s=check_s, share=share, amortised=amortised)
    print(
        f"\n{model}: step {step_s * 1e3:.3f} ms, parameter check {check_s * 1e6:.1f} us "
        f"({100 * share:.2f}% of a step; every {cfg.log_every} steps: {100 * amortised:.3f}%)"
    )
    assert amortised <= TARGET
