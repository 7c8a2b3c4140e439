"""The ``ddp`` baseline's step time against torch's own DistributedDataParallel without the
transport, side by side in one run.

Both train the same model on the same shards on the same 2 gloo ranks, measured as
allreduce_sgd's benchmark measures (its module docstring: fresh instances in groups, turns of
``log_every`` steps, per-position medians, a torch DDP control for the resolution). Ours is a
step of the full training loop (``Trainer.train_step`` with algorithm ``ddp``: DDP with our
compiled communication hook, its all-reduces counted and traced by the transport, wire
counters, per-step rows); theirs is a plain loop over ``DistributedDataParallel`` with its
built-in (C++) all-reduce. Target: ours / theirs <= 1.02 (issue 18).

The target's run times these three alone, in ``GROUPS`` groups: a group's ratio moves by about
5% with where its instances' memory landed, so 12 groups put the median's 95% interval some
6% wide, too wide to tell 1.01 from 1.03. A second run splits the ratio: torch's DDP with its
own Python ``allreduce_hook``, torch's plain loop over our wrapper and hook, and our loop over
torch's built-in all-reduce run beside them, so the printout says what our hook costs, what
our loop costs, and what a Python hook would cost (the reason ours is compiled).
"""

from __future__ import annotations

import pytest

# the same two loops as allreduce_sgd's benchmark: ours (Trainer.run) and torch's plain DDP loop
from test_bench_allreduce import TARGET, against_torch_ddp

# three contenders: 30 groups take about what 15 of the split's six do (the MLP: ~2.5 minutes
# here, the small CNN ~6)
GROUPS = 30


@pytest.mark.bench
@pytest.mark.timeout(900)
@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_ddp_step_time_against_torch_ddp(benchmark, model: str) -> None:
    assert against_torch_ddp(benchmark, "ddp", model, groups=GROUPS) <= TARGET


@pytest.mark.bench
def test_the_compiled_hook_costs_a_step_less_than_a_python_hook(benchmark) -> None:
    """The split (printed and recorded): torch's DDP with PyTorch's Python ``allreduce_hook``
    against our compiled hook with its accounting, both in torch's plain loop, each over
    torch's DDP with its built-in all-reduce."""
    against_torch_ddp(benchmark, "ddp", "mlp", python_hook=True)
    split = benchmark.extra_info
    assert split["our_hook_over_ddp"] < split["python_hook_over_ddp"]
