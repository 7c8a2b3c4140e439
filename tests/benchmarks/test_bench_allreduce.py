"""allreduce_sgd's step time against torch DistributedDataParallel, side by side in one run.

Both train the same model on the same shards on the same 2 gloo ranks. Ours is one step of the
full training loop (``Trainer.train_step``, with its per-step bookkeeping: trace records, wire
counters, rows, the metrics gather every ``log_every`` steps); theirs is a step of a plain loop
over ``DistributedDataParallel`` with its built-in (C++) all-reduce. Target: ours / DDP <= 1.02.

How the ratio is measured, and why so. On this project's 2-vCPU machine whole runs cannot
resolve 2%: timed as alternate whole runs of 100-1000 steps, two identical torch DDP loops came
out 0.90 apart (an A/A test), and even two instances of one loop built side by side differ by
up to 6% for as long as they live (where their memory landed). So the run is split into
``GROUPS`` groups; each builds a fresh instance of every contender in both ranks, in an order
that rotates from group to group (each rank pinned to its own core where there are enough, so
the two do not migrate over each other), and the contenders take turns: a cycle of
``log_every`` steps each, in a rotating order, for ``CYCLES`` cycles, timing every step. A
contender's figure in a group is its typical cycle: the sum, over the cycle's positions, of the
median of that position's step times. The machine's stalls (another process, the hypervisor)
land on random steps of any contender and the medians drop them; our loop's periodic work (the
metrics gather at the cycle's last position) stays in, at its typical cost. A ratio is the
median over groups of the group's own ratio. A second torch DDP loop runs as a control (A/A):
its ratio to the first is this run's resolution. Both are printed and recorded, with every
group's ratio, the ratio of mean step times (stalls in), and a 95% bootstrap interval of each
median ratio over the groups (``ratio_interval``): a miss whose interval lies above the target
is beyond this run's noise; one whose interval holds the target is not resolved.

More loops can stand beside them (``extra``, by name from ``EXTRA``; the ``ddp`` benchmark):
torch's DDP with PyTorch's own Python ``allreduce_hook`` (``python_hook``: what any hook in Python
pays over the built-in C++ reducer, the reason ``ddp``'s hook is compiled, baselines/ddp_hook.py);
torch's plain loop over our ``ddp`` algorithm's wrapper (``our_hook``: our compiled hook, its all-
reduces counted and traced by the transport, without the rest of our loop); and our whole loop over
the same DDP wrapper with torch's built-in all-reduce in place of our hook (``uncounted``), and
that loop again (``uncounted_control``). Ours / uncounted is then what the hook and the transport
cost with everything else equal, uncounted again / uncounted what that ratio reads between two
identical loops (its own A/A), and uncounted / DDP what our loop's bookkeeping costs around torch's
DDP. Every ratio their presence allows (``RATIOS``) is printed and recorded with its interval, so a
miss says which part it is.
"""

from __future__ import annotations

import functools
import itertools
import os
import statistics
import time
import unittest.mock
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer, build_dataset, initial_model
from suite.tasks.data import ShardedBatches
from suite.transport import Transport

TARGET = 1.02
GROUPS = 12  # each a fresh instance of every contender
CYCLES = 12  # turns of log_every steps of each contender in a group
WARM_UP = 20  # steps of each contender before timing: connections, allocator, DDP's buckets


def typical_cycle(cycles: list[list[float]]) -> float:
    """Seconds of a typical cycle: the sum over positions of each position's median time.
    Random stalls drop out; work done at a fixed position of every cycle stays in."""
    return sum(statistics.median(position) for position in zip(*cycles, strict=True))


def ratio_interval(ratios: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A bootstrap interval (percentile, fixed seed) of the median of the groups' ratios: how
    far this run's figure could move with other groups of the same machine."""
    if min(ratios) == max(ratios):  # nothing to resample (and scipy warns on it)
        return ratios[0], ratios[0]
    result = scipy.stats.bootstrap(
        (np.asarray(ratios),),
        np.median,
        confidence_level=confidence,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _plain_step(
    model: torch.nn.Module,
    batches: Any,
    lr: float,
    after_backward: Callable[[], object] = lambda: None,
) -> Callable[[], None]:
    """One step of torch's plain training loop: no bookkeeping at all (but ``after_backward``)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step() -> None:
        opt.zero_grad(set_to_none=False)
        x, y = next(batches)
        F.cross_entropy(model(x), y).backward()
        after_backward()
        opt.step()

    return step


def _torch_ddp(cfg: RunConfig, python_hook: bool = False) -> Callable[[], None]:
    data = build_dataset(cfg)
    model = DistributedDataParallel(initial_model(cfg, data))
    if python_hook:  # PyTorch's reference hook, equivalent to the built-in reducer
        model.register_comm_hook(None, allreduce_hook)
    batches = ShardedBatches(data, cfg.batch_size, dist.get_rank(), cfg.nproc, cfg.seed)
    return _plain_step(model, batches, cfg.optim.lr)


def _our_hook(cfg: RunConfig) -> Callable[[], None]:
    """Torch's plain loop over our ``ddp`` algorithm's DDP wrapper, whose hook's all-reduces
    are counted and traced by the transport, its totals read after backward as our loop's row
    reads them (:meth:`Transport.counted`, which takes the compiled hook's all-reduces at its
    bound): our communication without our loop."""
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), Transport())
    return _plain_step(
        trainer.algorithm.train_model(),
        trainer.batches,
        cfg.optim.lr,
        trainer.transport.counted,
    )


def _builtin_hook(ddp: DistributedDataParallel, state: Any, hook: Any) -> None:
    """In place of ``DistributedDataParallel.register_comm_hook``: torch's built-in C++
    all-reduce, uncounted, whatever hook was asked for."""
    ddp._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)


def _torch_ddp_in_our_loop(cfg: RunConfig) -> Callable[[], None]:
    """A step of our whole loop over the ddp algorithm's DDP wrapper with torch's built-in
    all-reduce instead of our hook through the transport: what the transport costs, in our
    loop, is ours / this."""
    python = apply_overrides(cfg, ["algorithm.hook=python"])  # the hook that DDP registers
    with unittest.mock.patch.object(DistributedDataParallel, "register_comm_hook", _builtin_hook):
        return _ours(python)


def _ours(cfg: RunConfig) -> Callable[[], None]:
    """One step of our whole loop; the run never reaches its last step (no evaluation)."""
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), Transport())
    steps = itertools.count(trainer.begin())
    return lambda: trainer.train_step(next(steps))


# contenders that can stand beside ours and torch's plain DDP loop (see the module docstring)
EXTRA: dict[str, Callable[[RunConfig], Callable[[], None]]] = {
    "python_hook": functools.partial(_torch_ddp, python_hook=True),
    "our_hook": _our_hook,
    "uncounted": _torch_ddp_in_our_loop,
    "uncounted_control": _torch_ddp_in_our_loop,  # A/A of our loop: the same again
}


def _side_by_side(
    cfg: RunConfig, extra: tuple[str, ...], groups: int
) -> list[dict[str, tuple[float, float]]]:
    """Per group: each contender's seconds per step, typical (typical cycle / log_every) and
    mean."""
    if os.cpu_count() and os.cpu_count() >= cfg.nproc:  # one core each: no migrations
        os.sched_setaffinity(0, {dist.get_rank()})
    builders: dict[str, Callable[[], Callable[[], None]]] = {
        "ours": lambda: _ours(cfg),
        "ddp": lambda: _torch_ddp(cfg),
        "ddp_control": lambda: _torch_ddp(cfg),
    }
    for name in extra:
        builders[name] = functools.partial(EXTRA[name], cfg)
    timed = []
    names = list(builders)
    for g in range(groups):  # fresh instances: where a model's memory lands biases its speed
        # built in a rotating order too: a fixed one gave the control a steady 3% bias (0.965,
        # interval 0.946-1.004), as the first and second instance built in a group
        order = names[g % len(names) :] + names[: g % len(names)]
        turns = [(name, builders[name]()) for name in order]
        for _, step in turns:
            for _ in range(WARM_UP):
                step()
        times: dict[str, list[list[float]]] = {name: [] for name in builders}
        for i in range(CYCLES):  # rotate which goes first: a fixed order biases the ratio
            for name, step in turns[i % len(turns) :] + turns[: i % len(turns)]:
                cycle = []
                for _ in range(cfg.log_every):
                    t0 = time.perf_counter()
                    step()
                    cycle.append(time.perf_counter() - t0)
                times[name].append(cycle)
        timed.append(
            {
                name: (typical_cycle(c) / cfg.log_every, statistics.fmean(itertools.chain(*c)))
                for name, c in times.items()
            }
        )
        del turns
    return timed


# the ratios a run reports when its contenders are there: (numerator, denominator, meaning)
RATIOS = {
    "ours_over_ddp": ("ours", "ddp", "our whole loop / torch's plain DDP loop"),
    "control": ("ddp_control", "ddp", "control (A/A): torch's DDP again / torch's DDP"),
    "python_hook_over_ddp": (
        "python_hook",
        "ddp",
        "a Python hook at all: torch's DDP with its Python allreduce_hook / torch's DDP",
    ),
    "our_hook_over_ddp": (
        "our_hook",
        "ddp",
        "our hook and its accounting, in torch's plain loop / torch's DDP",
    ),
    "ours_over_our_hook": ("ours", "our_hook", "our loop's bookkeeping: ours / our hook"),
    "ours_over_uncounted": (
        "ours",
        "uncounted",
        "the transport's cost, all else equal: "
        "our loop with our hook / our loop with torch's built-in all-reduce",
    ),
    "uncounted_control": (
        "uncounted_control",
        "uncounted",
        "control of our loop (A/A): our loop with torch's built-in all-reduce again / the same",
    ),
    "uncounted_over_ddp": (
        "uncounted",
        "ddp",
        "our loop's cost around torch's DDP: "
        "our loop with torch's built-in all-reduce / torch's plain loop",
    ),
}


def against_torch_ddp(
    benchmark, algorithm: str, model: str, extra: tuple[str, ...] = (), groups: int = GROUPS
) -> dict[str, float]:
    """``algorithm``'s loop against torch's plain DDP loop on 2 ranks, in ``groups`` groups,
    with the ``extra`` contenders (:data:`EXTRA`) beside them: prints and records each
    contender's step time and every ratio of :data:`RATIOS` their presence allows, each the
    median over groups of the group's own ratio with its 95% interval; returns the ratios."""
    cfg = apply_overrides(
        RunConfig(),
        [
            f"algorithm={algorithm}",
            f"model={model}",
            "nproc=2",
            "steps=1000000000",  # never the last step: no final evaluation
            "eval_every=0",
            "eval_per_rank=false",
        ],
    )
    timed = benchmark.pedantic(lambda: launch(_side_by_side, 2, (cfg, extra, groups))[0], rounds=1)
    # each group's typical seconds per step, by contender
    typical = [{name: seconds for name, (seconds, _) in g.items()} for g in timed]
    per_step = {name: statistics.median(g[name] for g in typical) for name in typical[0]}
    ratios, lines = {}, []
    for key, (a, b, meaning) in RATIOS.items():
        if a not in per_step or b not in per_step:
            continue
        per_group = [g[a] / g[b] for g in typical]
        ratios[key] = statistics.median(per_group)
        low, high = ratio_interval(per_group)
        means = [statistics.fmean(g[name][1] for g in timed) for name in (a, b)]
        of_means = means[0] / means[1]
        benchmark.extra_info.update(
            {
                key: ratios[key],
                f"{key}_interval_95": [low, high],
                f"{key}_per_group": per_group,
                f"{key}_of_means": of_means,
            }
        )
        lines.append(
            f"  {key} {ratios[key]:.3f} (95% interval {low:.3f}-{high:.3f}; ratio of mean "
            f"step times, stalls in, {of_means:.3f}): {meaning}; per group "
            f"{[round(r, 3) for r in per_group]}"
        )
    benchmark.extra_info.update({f"{name}_ms_per_step": t * 1e3 for name, t in per_step.items()})
    steps = ", ".join(f"{name} {t * 1e3:.3f}" for name, t in per_step.items())
    print(f"\n{model}, {algorithm}: ms per step {steps}", *lines, sep="\n")
    return ratios


def verdict(ratios: dict[str, float], key: str, bound: float, benchmark) -> str:
    """Whether ``key``'s ratio meets ``bound`` beyond this run's noise (its interval below it),
    misses it beyond it (above), or cannot tell."""
    low, high = benchmark.extra_info[f"{key}_interval_95"]
    if low > bound:
        return f"{key} {ratios[key]:.3f} > {bound}: a miss beyond this run's noise"
    if high <= bound:
        return f"{key} {ratios[key]:.3f} <= {bound}: met beyond this run's noise"
    side = "met" if ratios[key] <= bound else "missed"
    return f"{key} {ratios[key]:.3f} against {bound}: {side}, not resolved by this run"


def test_ratio_interval_holds_the_median_and_narrows_with_agreement() -> None:
    noisy = [0.95, 1.0, 1.02, 1.05, 1.07, 1.08, 1.1, 1.12, 1.15, 1.2]
    low, high = ratio_interval(noisy)
    assert min(noisy) <= low < statistics.median(noisy) < high <= max(noisy)
    tight = [1.06 + 0.001 * (i % 3) for i in range(12)]  # groups that agree: a narrow interval
    tight_low, tight_high = ratio_interval(tight)
    assert tight_low >= 1.06 and tight_low <= tight_high <= 1.062
    assert ratio_interval([1.03] * 5) == (1.03, 1.03)
    assert ratio_interval(noisy) == (low, high)  # seeded: the same run prints the same interval


def test_typical_cycle_keeps_periodic_work_and_drops_stalls() -> None:
    quiet = [[1.0, 1.0, 1.0, 2.0] for _ in range(9)]  # the last step of each cycle does more
    stalled = [list(c) for c in quiet]
    for i, c in enumerate(stalled[:4]):  # a stall on a different step of four of the cycles
        c[i % 4] += 50.0
    assert typical_cycle(quiet) == 5.0
    assert typical_cycle(stalled) == 5.0  # the stalls drop out, the periodic 2.0 stays
    assert typical_cycle([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]) == 3.0 + 4.0  # medians per position


@pytest.mark.bench
@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_allreduce_sgd_step_time_against_ddp(benchmark, model: str) -> None:
    ratios = against_torch_ddp(benchmark, "allreduce_sgd", model)
    print(verdict(ratios, "ours_over_ddp", TARGET, benchmark))
    assert ratios["ours_over_ddp"] <= TARGET
