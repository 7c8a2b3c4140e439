"""EventGraD's trigger (per-tensor norms and bookkeeping) as a fraction of a training step.

CIFAR ResNet-18 (62 parameter tensors, 11.2M parameters) on the CPU, one rank, batch 32: the
step is forward + backward + SGD; the trigger is ``EventGrad.trigger`` alone (no communication,
which is what the trigger decides about, not part of its cost). Measured side by side in one run,
alternating. Target: trigger / step <= 0.03.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from suite.algorithms.base import Context
from suite.algorithms.eventgrad import EventGrad, EventGradConfig
from suite.launcher import launch
from suite.registry import MODELS
from suite.transport import Transport

TARGET = 0.03
ROUNDS, STEPS = 3, 5


def _measure() -> dict[str, list[float]]:
    torch.manual_seed(0)
    entry = MODELS.get("resnet18_cifar")
    model = entry.obj(entry.make_config(), (3, 32, 32), 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = Context(Transport(), model, opt, torch.device("cpu"), 1000, 100, 0)
    algo = EventGrad(EventGradConfig(horizon=1.0, warmup=0), ctx)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    steps, triggers = [], []
    k = 0
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(STEPS):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        steps.append((time.perf_counter() - start) / STEPS)
        start = time.perf_counter()
        for _ in range(STEPS):
            algo.trigger(k)
            k += 1
        triggers.append((time.perf_counter() - start) / STEPS)
    return {"step": steps, "trigger": triggers}


@pytest.mark.bench
def test_trigger_cost_against_a_resnet18_step(benchmark) -> None:
    result = benchmark.pedantic(lambda: launch(_measure, 1)[0], rounds=1)
    step, trigger = statistics.median(result["step"]), statistics.median(result["trigger"])
    ratio = trigger / step
    benchmark.extra_info.update({"step_ms": step * 1e3, "trigger_ms": trigger * 1e3})
    benchmark.extra_info["ratio"] = ratio
    print(f"\nResNet-18 step {step * 1e3:.1f} ms, trigger {trigger * 1e3:.2f} ms, "
          f"ratio {ratio:.4f} (target <= {TARGET})")  # fmt: skip
    assert ratio <= TARGET
