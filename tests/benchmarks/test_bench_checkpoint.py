"""What checkpoints cost: seconds per checkpoint, and their share of training time.

ResNet-20 on synthetic CIFAR-shaped data (the README's example), all-reduce SGD with momentum on
2 gloo ranks, the full training loop (``Trainer.run``) checkpointing every ``EVERY`` steps so a
few checkpoints are timed. A checkpoint's cost is the loop's own measure (the summary's
``checkpoint_seconds``: writing every rank's file, the barrier and the manifest, on the slowest
rank); a step's is the mean step time. The share is cost / (interval x step time), at the
default interval ("auto": about every 10 minutes of a run long enough to be checkpointed,
suite.checkpoint.auto_interval) and, for scale, at every 100 steps. Target: <= 2% at the
default interval.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from suite import checkpoint as ckpt
from suite.config import RunConfig, apply_overrides
from suite.launcher import launch
from suite.loop import Job, Trainer
from suite.transport import Transport

TARGET = 0.02
STEPS, EVERY = 42, 8  # checkpoints after steps 8, 16, 24, 32, 40
LONG_RUN = 20 * 781  # steps of 20 CIFAR-10 epochs at batch 32 on 2 ranks


def _train(cfg: RunConfig, folder: str) -> dict:
    job = Job(cfg, "bench", "bench", progress=False, checkpoint=ckpt.Checkpointing(folder, EVERY))
    return Trainer(job, Transport()).run()[0]


@pytest.mark.bench
def test_checkpoint_cost_resnet20(benchmark, tmp_path: Path) -> None:
    cfg = apply_overrides(
        RunConfig(),
        [
            "algorithm=allreduce_sgd",
            "dataset=synthetic",
            "dataset.input_shape=3,32,32",
            "model=resnet20",
            "optim.momentum=0.9",
            "nproc=2",
            f"steps={STEPS}",
            "eval_every=0",
            "eval_per_rank=false",
            "device=cpu",
        ],
    )
    summary = benchmark.pedantic(lambda: launch(_train, 2, (cfg, str(tmp_path)))[0], rounds=1)
    per_checkpoint = summary["checkpoint_seconds"] / summary["checkpoints"]
    step = (summary["compute_seconds"] + summary["comm_seconds"]) / summary["steps"]
    interval = ckpt.auto_interval(step, LONG_RUN)
    share = per_checkpoint / (interval * step)
    share_100 = per_checkpoint / (100 * step)
    manifest = ckpt.read_manifest(tmp_path)
    size = ckpt.rank_file(tmp_path, manifest["step"], 0).stat().st_size
    benchmark.extra_info.update(
        {
            "seconds_per_checkpoint": per_checkpoint,
            "seconds_per_step": step,
            "default_interval_steps": interval,
            "share_at_default_interval": share,
            "share_every_100_steps": share_100,
            "rank_file_bytes": size,
        }
    )
    print(
        f"\nresnet20, 2 ranks: {per_checkpoint * 1e3:.1f} ms per checkpoint "
        f"({size / 1e6:.2f} MB per rank), {step * 1e3:.1f} ms per step; default interval "
        f"{interval} steps -> {share:.3%} of training time (target <= {TARGET:.0%}); "
        f"every 100 steps -> {share_100:.2%}"
    )
    assert summary["checkpoints"] == STEPS // EVERY
    assert interval > 0 and share <= TARGET
