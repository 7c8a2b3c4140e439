"""The ``ddp`` baseline's step time against torch's own DistributedDataParallel without the
transport, side by side in one run.

Both train the same model on the same shards on the same 2 gloo ranks, measured as
allreduce_sgd's benchmark measures (its module docstring: fresh instances in groups, turns of
``log_every`` steps, per-position medians, a torch DDP control for the resolution). Ours is a
step of the full training loop (``Trainer.train_step`` with algorithm ``ddp``: DDP with our
compiled communication hook, its all-reduces counted and traced by the transport, wire
counters, per-step rows); theirs is a plain loop over ``DistributedDataParallel`` with its
built-in (C++) all-reduce. Target: ours / theirs <= 1.02 (issue 18). Torch's DDP with its own
Python ``allreduce_hook``, torch's plain loop over our wrapper and hook, and our loop over
torch's built-in all-reduce run beside them, so the printout splits the ratio into our hook's
cost and our loop's, and shows what a Python hook would cost.
"""

from __future__ import annotations

import pytest

# the same two loops as allreduce_sgd's benchmark: ours (Trainer.run) and torch's plain DDP loop
from test_bench_allreduce import TARGET, against_torch_ddp


@pytest.mark.bench
@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_ddp_step_time_against_torch_ddp(benchmark, model: str) -> None:
    assert against_torch_ddp(benchmark, "ddp", model, python_hook=True) <= TARGET
