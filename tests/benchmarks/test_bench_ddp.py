"""The ``ddp`` baseline's step time against torch's own DistributedDataParallel without the
transport, side by side in one run.

Issue 18's target: ``ddp`` at most 1.02x the step time of torch's DDP without the transport.
What differs between the two is how the all-reduces run: ours through our compiled
communication hook, counted and traced by the transport (bytes, wire bytes, messages, trace
records; the loop's row reads the hook's running totals in place, and the transport takes its
records when read), theirs by DDP's built-in C++ all-reduce, uncounted. So the target's ratio
holds everything else equal: one step of our training loop (``Trainer.train_step``) with
algorithm ``ddp`` against the same loop over the same DDP wrapper with torch's built-in
all-reduce in its place (``ours_over_uncounted``).

The same run times torch's bare loop over its default DDP too (no bookkeeping at all: no loss
read, no rows, no heartbeat, no divergence check). Our loop around torch's DDP against that
(``uncounted_over_ddp``) is what the suite's per-step bookkeeping costs, shared by every
algorithm: about 20-30 us a step in place, read as 1.005-1.020 of the digits MLP's 1.2-1.7 ms
step on this 2-vCPU machine and 1.001-1.012 of the small CNN's. It has its own bound,
``LOOP_BOUND``, a guard against that bookkeeping growing; our whole loop against torch's bare
loop (``ours_over_ddp``, about the product of the two) is printed and recorded beside them.
Until 12-04 this test held that whole-loop ratio to the target, which charged the loop's
bookkeeping to ``ddp``.

Measured as allreduce_sgd's benchmark measures (its module docstring: fresh instances in groups,
turns of ``log_every`` steps, per-position medians, a torch DDP control for the resolution). A
group's ratio moves by 5-10% with where its instances' memory landed, so the target's run times its
five loops in ``GROUPS`` groups (12 put the median's 95% interval some 6% wide, 30 still 2-5%: on
this machine the target is at the edge of what a run resolves). The fifth is our loop around
torch's DDP again, so the target's ratio has its own control (``uncounted_control``: two identical
loops of ours, which read 1.009 on the small CNN on 12-05, interval 0.987-1.033). A second run
splits the cost further: torch's DDP with its own Python ``allreduce_hook`` and torch's plain loop
over our wrapper and hook stand beside them, so the printout says what our hook costs in torch's
loop and what a Python hook would cost (the reason ours is compiled).
"""

from __future__ import annotations

import pytest

# the same loops as allreduce_sgd's benchmark: ours (Trainer.run) and torch's plain DDP loop
from test_bench_allreduce import TARGET, against_torch_ddp, verdict

# five contenders: 30 groups take about 2.5 minutes on the MLP here, 6-8 on the small CNN
GROUPS = 30
# our loop's bookkeeping around torch's DDP against torch's bare loop (uncounted_over_ddp):
# read 1.005-1.020 on the MLP, 1.001-1.012 on the small CNN when this bound was set (12-04)
LOOP_BOUND = 1.05


@pytest.mark.bench
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_ddp_step_time_against_torch_ddp(benchmark, model: str) -> None:
    ratios = against_torch_ddp(
        benchmark, "ddp", model, extra=("uncounted", "uncounted_control"), groups=GROUPS
    )
    print(verdict(ratios, "ours_over_uncounted", TARGET, benchmark))
    print(verdict(ratios, "uncounted_over_ddp", LOOP_BOUND, benchmark))
    assert ratios["ours_over_uncounted"] <= TARGET
    assert ratios["uncounted_over_ddp"] <= LOOP_BOUND


@pytest.mark.bench
def test_the_compiled_hook_costs_a_step_less_than_a_python_hook(benchmark) -> None:
    """The split (printed and recorded): torch's DDP with PyTorch's Python ``allreduce_hook``
    against our compiled hook with its accounting, both in torch's plain loop, each over
    torch's DDP with its built-in all-reduce."""
    ratios = against_torch_ddp(
        benchmark, "ddp", "mlp", extra=("python_hook", "our_hook", "uncounted")
    )
    assert ratios["our_hook_over_ddp"] < ratios["python_hook_over_ddp"]
