"""The checks a job's config gets before any rank starts, where they need the data or torch:
``suite run`` runs :func:`preflight` on its config; ``suite reproduce`` and ``suite sweep`` run
:func:`preflight_all` on every config they plan, so bad input exits 2 before the first child
run rather than failing every run one by one. (Names, keys and plain values are checked
earlier, without torch: :func:`suite.config.precheck`.)"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable

from suite.config import RunConfig
from suite.errors import ConfigError


def rank_under_torchrun() -> int | None:
    """This process's rank when torchrun started it, else None (read before importing torch)."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env or {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= env.keys():
        return int(env["RANK"])
    return None


def preflight(cfg: RunConfig) -> None:
    """Find input errors before any rank starts: missing data, a model that does not fit the
    data, a batch larger than a rank's shard, lr milestones past a step-counted run's end, CUDA
    asked for but absent, more local ranks than this machine's memory or file-descriptor limit
    holds. Loads the dataset here, so forked ranks inherit it."""
    import torch

    from suite.loop import build_dataset, initial_model
    from suite.registry import DATASETS

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available; valid choices: auto, cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cfg.device == "cuda" and not rank_under_torchrun() and cfg.nproc > gpus:
        raise ConfigError(
            f"device=cuda with nproc={cfg.nproc} needs a GPU per rank (NCCL), this host has "
            f"{gpus}; valid choices: nproc <= {gpus}, or device=cpu / auto"
        )
    check = DATASETS.get(cfg.dataset.name).meta.get("check")
    if check is not None:
        check(cfg.data_dir)
    torch.set_num_threads(1)  # nothing heavy runs here; keep thread pools out of forked ranks
    try:
        data = build_dataset(cfg)
    except ValueError as err:  # a dataset knob out of range
        raise ConfigError(f"dataset {cfg.dataset.name!r}: {err}") from None
    _check_batch_fits(cfg, data.name, len(data.train))
    _check_milestones(cfg, len(data.train))
    try:
        with torch.device("meta"):
            model = initial_model(cfg, data)
            model(torch.empty(2, *data.input_shape))
    except (ValueError, RuntimeError) as err:
        raise ConfigError(
            f"model {cfg.model.name!r} does not fit dataset {cfg.dataset.name!r} "
            f"(input shape {data.input_shape}): {err}"
        ) from None
    if rank_under_torchrun() is None:  # torchrun's processes are its own to place
        from suite.launcher import check_capacity

        check_capacity(cfg.nproc, sum(p.numel() * p.element_size() for p in model.parameters()))


def preflight_all(configs: Iterable[RunConfig]) -> None:
    """:func:`preflight` for each distinct setup among ``configs`` (a reproduction's rows
    mostly share one: data, model, ranks and batch), each once."""
    seen = set()
    for cfg in configs:
        key = (cfg.dataset, cfg.model, cfg.nproc, cfg.batch_size, cfg.micro_batches,
               cfg.device, cfg.data_dir, cfg.epochs, cfg.steps, cfg.optim)  # fmt: skip
        if key not in seen:
            seen.add(key)
            preflight(cfg)


def _check_batch_fits(cfg: RunConfig, dataset: str, n: int) -> None:
    """Every rank needs one full batch per epoch from its shard (see ShardedBatches)."""
    from suite.tasks.data import shard_size

    b, p = cfg.batch_size, cfg.nproc
    shard = shard_size(n, p)
    if b <= shard:
        return
    where = f"{n} training samples over {p} rank(s) give {shard} per rank"
    if b > n:
        fix = f"batch_size <= {shard} at nproc={p}"
    else:  # the largest world whose shards still hold one batch: ceil(n / p) >= b
        fix = f"batch_size <= {shard}, or nproc <= {math.ceil(n / (b - 1)) - 1} at batch_size={b}"
    raise ConfigError(
        f"batch_size {b} is larger than a rank's shard of {dataset} ({where}); valid: {fix}"
    )


def _check_milestones(cfg: RunConfig, n: int) -> None:
    """A run counted in steps (epochs=0) with an lr milestone (an epoch) at or past its last
    step, which would never apply: config.check can tell only for a run counted in epochs,
    this one needs the data's size for the loop's steps per epoch."""
    from suite.tasks.data import optimizer_steps_per_epoch, shard_size

    o = cfg.optim
    if o.schedule != "multistep" or cfg.epochs > 0 or not o.milestones:
        return
    per_epoch = optimizer_steps_per_epoch(
        shard_size(n, cfg.nproc), cfg.batch_size, cfg.micro_batches
    )
    steps = o.milestone_steps(per_epoch)
    late = [m for m, step in zip(o.milestones, steps, strict=True) if step >= cfg.steps]
    if late:
        raise ConfigError(
            f"optim.milestones {late} are epochs, at or past the run's end: {cfg.steps} steps "
            f"are {cfg.steps / per_epoch:.3g} epochs here ({per_epoch} steps per epoch); "
            "valid: milestones below that, or set epochs instead of steps"
        )
