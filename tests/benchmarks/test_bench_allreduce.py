"""allreduce_sgd's step time against torch DistributedDataParallel, side by side in one run.

Both train the same model on the same shards on the same 2 gloo ranks, alternating whole runs
(and which goes first) so machine noise hits both alike; the ratio is the median over rounds of
each round's pair. Ours is the full training loop (``Trainer.run``, with
its per-step bookkeeping: trace records, wire counters), timed as its summary's
``train_seconds``: the steps, not the end-of-run summary (gathers, the trace's replay) that
DDP's plain loop has no counterpart of. Target: ours / DDP <= 1.02.

Two more loops can stand beside them (``python_hook=True``, the ``ddp`` benchmark): torch's DDP
with PyTorch's own Python ``allreduce_hook``, and torch's plain loop over our ``ddp`` algorithm's
wrapper (our hook through the transport, counted and traced, without the rest of our loop). Any
hook that counts bytes in Python pays what the first pays over the built-in C++ reducer, so the
ratios split ours / DDP into a Python hook at all (python hook / DDP), our transport against
PyTorch's hook (our hook / python hook) and our loop's bookkeeping (ours / our hook); all are
printed and recorded, so a miss of the target says which part it is.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer, build_dataset, initial_model
from suite.tasks.data import ShardedBatches
from suite.transport import Transport

TARGET = 1.02
STEPS, ROUNDS = 100, 11


def _plain_loop(model: torch.nn.Module, batches: Any, lr: float, steps: int) -> float:
    """Seconds per step of torch's plain training loop: no bookkeeping at all."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        x, y = next(batches)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def _ddp_seconds_per_step(cfg: RunConfig, steps: int, python_hook: bool = False) -> float:
    data = build_dataset(cfg)
    model = DistributedDataParallel(initial_model(cfg, data))
    if python_hook:  # PyTorch's reference hook, equivalent to the built-in reducer
        model.register_comm_hook(None, allreduce_hook)
    rank = torch.distributed.get_rank()
    batches = ShardedBatches(data, cfg.batch_size, rank, cfg.nproc, cfg.seed)
    return _plain_loop(model, batches, cfg.optim.lr, steps)


def _our_hook_seconds_per_step(cfg: RunConfig) -> float:
    """Torch's plain loop over our ``ddp`` algorithm's DDP wrapper, whose hook goes through
    the transport: our communication without our loop."""
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), Transport())
    return _plain_loop(trainer.algorithm.train_model(), trainer.batches, cfg.optim.lr, cfg.steps)


def _ours_seconds_per_step(cfg: RunConfig) -> float:
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), Transport())
    trainer.evaluate = dict  # the final evaluation is not a training step
    start = time.perf_counter()
    summary, _ = trainer.run()
    if summary is not None:  # rank 0: the loop alone, as DDP's (not the end-of-run summary)
        return summary["train_seconds"] / cfg.steps
    return (time.perf_counter() - start) / cfg.steps


def _side_by_side(cfg: RunConfig, python_hook: bool) -> dict[str, list[float]]:
    loops = {
        "ours": lambda: _ours_seconds_per_step(cfg),
        "ddp": lambda: _ddp_seconds_per_step(cfg, cfg.steps),
    }
    if python_hook:
        loops["python_hook"] = lambda: _ddp_seconds_per_step(cfg, cfg.steps, python_hook=True)
        loops["our_hook"] = lambda: _our_hook_seconds_per_step(cfg)
    times: dict[str, list[float]] = {name: [] for name in loops}
    _ddp_seconds_per_step(cfg, 10)  # warm-up: connections, allocator
    names = list(loops)
    for i in range(ROUNDS):  # rotate which goes first: a fixed order biases the ratio
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(loops[name]())
    return times


def _ratio(a: list[float], b: list[float]) -> float:
    """Median of each round's ratio: neighbours in time share the machine's load."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def against_torch_ddp(benchmark, algorithm: str, model: str, python_hook: bool = False) -> float:
    """``algorithm``'s loop against torch's plain DDP loop on 2 ranks: prints and records both
    step times, and returns the median of each round's ratio; the best rounds' ratio stands
    beside it. With ``python_hook``, torch's DDP with its Python ``allreduce_hook`` and our hook
    in torch's plain loop are timed too, and the three ratios that decompose ours / DDP are
    recorded (see the module docstring)."""
    cfg = apply_overrides(
        RunConfig(),
        [
            f"algorithm={algorithm}",
            f"model={model}",
            "nproc=2",
            f"steps={STEPS}",
            "eval_every=0",
            "eval_per_rank=false",
        ],
    )
    result = benchmark.pedantic(lambda: launch(_side_by_side, 2, (cfg, python_hook))[0], rounds=1)
    ours, ddp = statistics.median(result["ours"]), statistics.median(result["ddp"])
    ratio = _ratio(result["ours"], result["ddp"])
    fastest = min(result["ours"]) / min(result["ddp"])
    benchmark.extra_info.update(
        {
            "ours_ms_per_step": ours * 1e3,
            "ddp_ms_per_step": ddp * 1e3,
            "ratio": ratio,
            "ratio_of_minima": fastest,
        }
    )
    print(
        f"\n{model}: {algorithm} {ours * 1e3:.2f} ms/step, torch DDP {ddp * 1e3:.2f} ms/step, "
        f"ratio {ratio:.3f} (target <= {TARGET}), of the minima {fastest:.3f}; per round: ours "
        f"{[round(x * 1e3, 2) for x in result['ours']]}, torch "
        f"{[round(x * 1e3, 2) for x in result['ddp']]}"
    )
    if python_hook:
        hook, our_hook = result["python_hook"], result["our_hook"]
        split = {
            "python_hook_ms_per_step": statistics.median(hook) * 1e3,
            "our_hook_ms_per_step": statistics.median(our_hook) * 1e3,
            "python_hook_over_ddp": _ratio(hook, result["ddp"]),
            "our_hook_over_python_hook": _ratio(our_hook, hook),
            "ours_over_our_hook": _ratio(result["ours"], our_hook),
        }
        benchmark.extra_info.update(split)
        print(
            f"{model}: torch DDP with its Python allreduce_hook "
            f"{split['python_hook_ms_per_step']:.2f} ms/step, our hook in torch's loop "
            f"{split['our_hook_ms_per_step']:.2f} ms/step; a Python hook at all (it / DDP) "
            f"{split['python_hook_over_ddp']:.3f}, our transport against it (our hook / it) "
            f"{split['our_hook_over_python_hook']:.3f}, our loop's bookkeeping (ours / our "
            f"hook) {split['ours_over_our_hook']:.3f}; per round: Python hook "
            f"{[round(x * 1e3, 2) for x in hook]}, our hook {[round(x * 1e3, 2) for x in our_hook]}"
        )
    return ratio


@pytest.mark.bench
@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_allreduce_sgd_step_time_against_ddp(benchmark, model: str) -> None:
    assert against_torch_ddp(benchmark, "allreduce_sgd", model) <= TARGET
