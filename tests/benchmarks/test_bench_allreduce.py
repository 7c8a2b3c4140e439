"""allreduce_sgd's step time against torch DistributedDataParallel, side by side in one run.

Both train the same model on the same shards on the same 2 gloo ranks, alternating blocks of
steps so machine noise hits both alike. Ours is the full training loop (``Trainer.run``, with
its per-step bookkeeping: trace records, wire counters), timed as its summary's
``train_seconds``: the steps, not the end-of-run summary (gathers, the trace's replay) that
DDP's plain loop has no counterpart of. Target: ours / DDP <= 1.02.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer, build_dataset, initial_model
from suite.tasks.data import ShardedBatches
from suite.transport import Transport

TARGET = 1.02
STEPS, ROUNDS = 150, 3


def _ddp_seconds_per_step(cfg: RunConfig, steps: int) -> float:
    data = build_dataset(cfg)
    model = DistributedDataParallel(initial_model(cfg, data))
    opt = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    batches = ShardedBatches(
        data, cfg.batch_size, torch.distributed.get_rank(), cfg.nproc, cfg.seed
    )
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        x, y = next(batches)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def _ours_seconds_per_step(cfg: RunConfig) -> float:
    trainer = Trainer(Job(cfg, "bench", "bench", progress=False), Transport())
    trainer.evaluate = dict  # the final evaluation is not a training step
    start = time.perf_counter()
    summary, _ = trainer.run()
    if summary is not None:  # rank 0: the loop alone, as DDP's (not the end-of-run summary)
        return summary["train_seconds"] / cfg.steps
    return (time.perf_counter() - start) / cfg.steps


def _side_by_side(cfg: RunConfig) -> dict[str, list[float]]:
    ours, ddp = [], []
    _ddp_seconds_per_step(cfg, 10)  # warm-up: connections, allocator
    for _ in range(ROUNDS):
        ours.append(_ours_seconds_per_step(cfg))
        ddp.append(_ddp_seconds_per_step(cfg, cfg.steps))
    return {"ours": ours, "ddp": ddp}


@pytest.mark.bench
@pytest.mark.parametrize("model", ["mlp", "small_cnn"])
def test_allreduce_sgd_step_time_against_ddp(benchmark, model: str) -> None:
    cfg = apply_overrides(
        RunConfig(),
        [
            "algorithm=allreduce_sgd",
            f"model={model}",
            "nproc=2",
            f"steps={STEPS}",
            "eval_every=0",
            "eval_per_rank=false",
        ],
    )
    result = benchmark.pedantic(lambda: launch(_side_by_side, 2, (cfg,))[0], rounds=1)
    ours, ddp = statistics.median(result["ours"]), statistics.median(result["ddp"])
    ratio = ours / ddp
    benchmark.extra_info.update(
        {"ours_ms_per_step": ours * 1e3, "ddp_ms_per_step": ddp * 1e3, "ratio": ratio}
    )
    print(
        f"\n{model}: allreduce_sgd {ours * 1e3:.2f} ms/step, DDP {ddp * 1e3:.2f} ms/step, "
        f"ratio {ratio:.3f} (target <= {TARGET})"
    )
    assert ratio <= TARGET
