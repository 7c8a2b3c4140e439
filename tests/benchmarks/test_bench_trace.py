"""The cost of trace recording (suite/trace.py) against a training step, side by side in one run.

allreduce_sgd and eventgrad, on the digits MLP and on ResNet-20 with synthetic CIFAR-shaped
data, 2 gloo ranks. Two measures, both printed:

* A/B: the training loop's seconds per step with recording on and off (``Transport.tracing``),
  switched at random step by step within one run so machine noise hits both alike; the ratio
  of the medians, on/off.
* Direct: the records appended per traced step times the measured cost of one append
  (``Recorder.note`` in a tight loop), over the step time: an upper bound of what recording
  adds (with recording off the call still happens and returns at once).

Target: direct <= 0.01, asserted. The A/B ratio is reported, not asserted: on the shared 2-core
machine its noise was +-7% (allreduce_sgd, 1 record per step, swung 0.81 to 1.07 between runs
while its direct cost is 0.001%), far above the 1% it would check.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import pytest

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.transport import Transport

TARGET = 0.01
WARMUP = 3
CASES = {
    "mlp": (["dataset=digits", "model=mlp"], 600),
    "resnet20": (
        ["dataset=synthetic", "dataset.input_shape=[3,32,32]", "dataset.train_size=1024",
         "model=resnet20", "batch_size=32"],
        120,
    ),
}  # fmt: skip


def _interleaved(cfg: RunConfig) -> dict[str, object]:
    """One training run whose steps trace or not in a random order both ranks share: the
    seconds of each kind of step (the loop's own step times), records per traced step, and the
    cost of one append."""
    transport = Transport()
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), transport)
    trainer.evaluate = dict  # no evaluation, no end-of-run gathers: steps only
    trainer._finish = lambda seconds: (None, {})
    coin = random.Random(0)
    times: dict[bool, list[float]] = {True: [], False: []}
    record = trainer._record

    def timed(step: int, loss: float, lr: float, step_s: float, *rest: Any) -> None:
        if step >= WARMUP:
            times[transport.tracing].append(step_s)
        transport.tracing = coin.random() < 0.5  # for the next step
        record(step, loss, lr, step_s, *rest)

    trainer._record = timed
    before = len(transport._counters.trace)
    trainer.run()
    records = (len(transport._counters.trace) - before) / max(1, len(times[True]))
    return {"on": times[True], "off": times[False], "records": records, "append": _append()}


def _append() -> float:
    """Seconds of one trace append, measured in a tight loop."""
    recorder = Transport()._counters.trace
    n = 200_000
    start = time.perf_counter()
    for _ in range(n):
        recorder.note(0, 0, -1, 1024, 0, 1.0, 2.0)
    return (time.perf_counter() - start) / n


@pytest.mark.bench
@pytest.mark.parametrize("algorithm", ["allreduce_sgd", "eventgrad"])
@pytest.mark.parametrize("case", list(CASES))
def test_trace_recording_cost_against_a_step(benchmark, algorithm: str, case: str) -> None:
    items, steps = CASES[case]
    cfg = apply_overrides(
        RunConfig(),
        [f"algorithm={algorithm}", *items, "nproc=2", f"steps={steps}", "eval_every=0",
         "eval_per_rank=false", "log_every=1000"],
    )  # fmt: skip
    result = benchmark.pedantic(lambda: launch(_interleaved, 2, (cfg,))[0], rounds=1)
    on, off = statistics.median(result["on"]), statistics.median(result["off"])
    direct = result["records"] * result["append"] / off
    ab = on / off
    benchmark.extra_info.update(
        {"on_ms": on * 1e3, "off_ms": off * 1e3, "ab_ratio": ab, "direct": direct,
         "records_per_step": result["records"], "append_us": result["append"] * 1e6}
    )  # fmt: skip
    print(
        f"\n{algorithm} {case}: step {off * 1e3:.2f} ms off, {on * 1e3:.2f} ms on "
        f"(A/B {ab:.4f}); {result['records']:.1f} records/step x {result['append'] * 1e6:.2f} us "
        f"= {direct:.5f} of a step (target <= {TARGET})"
    )
    assert direct <= TARGET
