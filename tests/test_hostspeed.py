"""The host's reference step (suite.hostspeed): a speed figure that leaves the process as it was."""

from __future__ import annotations

import math

import torch

from suite.hostspeed import reference_step_ms


def test_the_reference_step_is_timed_on_one_thread_and_leaves_torch_as_it_was() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    try:
        ms = reference_step_ms()
        assert torch.get_num_threads() == 2  # the caller's thread count, back
        assert torch.equal(torch.rand(3), expected)  # the caller's random stream, untouched
    finally:
        torch.set_num_threads(threads)
    # a step of a 17k-parameter MLP: well above the clock's resolution, well under a second
    assert math.isfinite(ms) and 0.01 < ms < 1000


def test_more_work_per_step_reads_slower(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The figure measures the step, not a constant: a host slower at the step (here: the SGD
    update done 20 times over) reads slower."""
    base = min(reference_step_ms() for _ in range(3))
    step = torch.optim.SGD.step

    def slower(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        for _ in range(20):
            step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", slower)
    slow = min(reference_step_ms() for _ in range(3))
    assert slow > 1.5 * base, (base, slow)
