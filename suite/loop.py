"""The one training loop every algorithm runs in.

Per step, on every rank::

    for each of micro_batches micro-batches: forward, loss / micro_batches, backward
        (on algorithm.train_model(), inside algorithm.accumulate(last): DDP's hooks)
    algorithm.reduce_gradients(step)      # hook 1
    optimizer.step(); lr schedule
    algorithm.mix_parameters(step)        # hook 2

A rank whose loss turns non-finite (checked every step, before hook 1, so no other rank receives
its gradients) or whose parameters do (checked every ``log_every`` steps and before evaluations)
raises :class:`~suite.divergence.Diverged`; the launcher then stops every rank.

Per-step rows (loss, cumulative algorithm bytes (payload and wire) and messages, compute and
communication seconds, the algorithm's own metrics) stay on each rank and go to rank 0 every
``log_every`` steps in one harness gather; rank 0 shows a progress bar and hands them to MLflow.
At the end rank 0 also gathers every rank's communication trace (:mod:`suite.trace`), stores
it with the run as ``trace.npz.b64`` and replays it on the config's ``network``
(:mod:`suite.netmodel`) for the summary's ``network_seconds`` (and to the target).

Evaluation (every ``eval_every`` steps and at the end) measures the averaged model (the mean of
all ranks' parameters and buffers, each rank scoring an exact share of the test set) and, with
``eval_per_rank``, each rank's own model on the whole test set (the summary keeps their mean,
min and max, and ranks 0 and N/2 by name: ``test_accuracy_rank0``, ``test_accuracy_rank_half``).
Both are harness traffic.

With ``Job.checkpoint``, every rank saves its whole state at the end of a step every so often
(:mod:`suite.checkpoint`), after its rows are flushed to rank 0; a job built with
``resume=True`` loads the latest checkpoint and continues from the next step, to the same end
as if it had never stopped (an injected fault does not fire again in a resumed run).
"""

from __future__ import annotations

import bisect
import copy
import functools
import hashlib
import json
import math
import operator
import os
import random
import struct
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from suite import checkpoint as ckpt
from suite import netmodel, trace
from suite.algorithms.base import Algorithm, Context
from suite.config import RunConfig, flatten, to_json
from suite.divergence import Diverged
from suite.launcher import beating, heartbeat, placement, resolve_device
from suite.optim import LARS, lars_param_groups
from suite.registry import ALGORITHMS, DATASETS, MODELS
from suite.tasks.data import (
    Dataset,
    ShardedBatches,
    eval_batches,
    eval_shard,
    optimizer_steps_per_epoch,
)
from suite.tracking import MetricsSink
from suite.transport import Transport, Work

# Columns of a rank's per-step row, before the algorithm's own metrics.
# Summed over ranks when gathered (the rest are averaged).
_SUMMED = {"bytes_sent", "bytes_recv", "messages", "wire_bytes"}
_ROW = (
    "train_loss",
    "lr",
    "bytes_sent",
    "bytes_recv",
    "messages",
    "wire_bytes",
    "step_seconds",
    "comm_seconds",
    "compute_seconds",
)


@dataclass(frozen=True)
class Job:
    """A run config plus how to report it (none of this changes the result)."""

    config: RunConfig
    target: str
    paper: str
    metrics: MetricsSink | None = None  # rank 0's per-step metrics go here (None: no MLflow)
    progress: bool = True
    # Rank 0 calls prune(step, test_accuracy) at each evaluation; True stops the run there.
    prune: Callable[[int, float], bool] | None = None
    checkpoint: ckpt.Checkpointing | None = None  # where and how often; resume from there


def run_worker(job: Job) -> tuple[dict[str, Any], dict[str, str]] | None:
    """Worker entry point (local launcher or torchrun): train; rank 0 returns the summary and
    the artifacts to store with the run, the other ranks None."""
    transport = Transport()
    trainer = Trainer(job, transport, job.metrics if transport.rank == 0 else None)
    summary, artifacts = trainer.run()
    if summary is None:
        return None
    if job.metrics is not None:
        job.metrics.close()
    return summary, artifacts


def _state_digest(model: nn.Module) -> str:
    """sha256 of a model's parameters and buffers, names and bytes, in state_dict order."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adagrad":
        return torch.optim.Adagrad(
            model.parameters(), lr=o.lr, weight_decay=o.weight_decay, eps=o.eps
        )
    if o.name == "lars":
        return LARS(
            lars_param_groups(model, o.weight_decay),
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            trust_coefficient=o.trust_coefficient,
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        nesterov=o.nesterov,
    )


def _lr_factor(
    cfg: RunConfig, steps_per_epoch: int, total_steps: int | None = None
) -> Callable[[int], float]:
    """Multiplier of the base lr at each step (LambdaLR): warm-up, then the schedule.

    ``total_steps`` (the run's optimizer steps) is needed by the poly schedule only."""
    o = cfg.optim
    milestones = o.milestone_steps(steps_per_epoch)
    warmup = o.warmup_steps
    if o.warmup_epochs > 0:
        warmup = max(1, round(o.warmup_epochs * steps_per_epoch))
    if o.schedule == "poly" and total_steps is None:
        raise ValueError("the poly schedule needs total_steps")
    hold = round(o.hold_epochs * steps_per_epoch)
    decay_steps = max(1, (total_steps or 0) - warmup - hold)

    def factor(step: int) -> float:
        value = 1.0
        if warmup and step < warmup:
            value = (step + 1) / warmup
        if o.schedule == "multistep":
            value *= o.gamma ** sum(step >= m for m in milestones)
        elif o.schedule == "poly" and step >= warmup:
            left = max(0.0, 1.0 - (step - warmup) / decay_steps) ** o.power
            value = (1.0 - o.end_lr) * left + o.end_lr
        return value

    return factor


def parameters_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite: one fused norm and one sync."""
    params = [p.detach() for p in model.parameters()]
    if not params or math.isfinite(torch.stack(torch._foreach_norm(params)).sum().item()):
        return True
    # a huge but finite norm can overflow: only a non-finite value itself is divergence
    return all(bool(torch.isfinite(p).all()) for p in params)


def initial_model(cfg: RunConfig, data: Dataset) -> nn.Module:
    """The model every rank starts from: built from ``cfg.seed`` alone, so identical on all."""
    _seed_everything(cfg.seed)
    entry = MODELS.get(cfg.model.name)
    return entry.obj(cfg.model.args, data.input_shape, data.num_classes)


def build_dataset(cfg: RunConfig) -> Dataset:
    """The run's dataset. Cached: the launcher's preflight loads it once, and forked ranks
    inherit it instead of each loading it again."""
    return _load_dataset(cfg.dataset.name, cfg.dataset.args, cfg.data_dir)


@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, args: Any, data_dir: str) -> Dataset:
    return DATASETS.get(name).obj(args, data_dir)


class Trainer:
    """State of one rank's training run."""

    def __init__(self, job: Job, transport: Transport, metrics: MetricsSink | None = None) -> None:
        self.job, self.cfg, self.transport, self.metrics = job, job.config, transport, metrics
        cfg = self.cfg
        self.rank, self.world = transport.rank, transport.world_size
        local = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.device = placement(self.rank, resolve_device(cfg.device, local))
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        with beating():  # local work, minutes for a large image folder under spawn
            self.data = build_dataset(cfg)
        self.model = initial_model(cfg, self.data).to(self.device)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        _seed_everything(cfg.seed * 7919 + self.rank + 1)  # per-rank dropout etc.

        self.batches = ShardedBatches(
            self.data,
            cfg.batch_size,
            self.rank,
            self.world,
            cfg.seed,
            self.device,
            cfg.num_workers,
        )
        self.steps_per_epoch = optimizer_steps_per_epoch(
            self.batches.sampler.num_samples, cfg.batch_size, cfg.micro_batches
        )
        self.steps = math.ceil(cfg.epochs * self.steps_per_epoch) if cfg.epochs > 0 else cfg.steps
        self.optimizer = _build_optimizer(cfg, self.model)
        self.lr_factor = _lr_factor(cfg, self.steps_per_epoch, self.steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        o = cfg.optim  # a constant lr needs no scheduler step (~6 us, 1% of a digits MLP step)
        self.lr_moves = o.schedule != "constant" or o.warmup_steps > 0 or o.warmup_epochs > 0
        if not self.lr_moves and hasattr(vars(self.optimizer).get("step"), "_wrapped_by_lr_sched"):
            # nor the wrapper the scheduler put on optimizer.step (to warn if the scheduler
            # steps first; it never steps): another ~0.5% of that step
            del self.optimizer.step
        self.base_weight_decay = [g["weight_decay"] for g in self.optimizer.param_groups]
        self._schedule_weight_decay()
        ctx = Context(
            transport=transport,
            model=self.model,
            optimizer=self.optimizer,
            device=self.device,
            total_steps=self.steps,
            steps_per_epoch=self.steps_per_epoch,
            seed=cfg.seed,
            input_shape=tuple(self.data.input_shape),
        )
        entry = ALGORITHMS.get(cfg.algorithm.name)
        self.algorithm: Algorithm = entry.obj(cfg.algorithm.args, ctx)
        self.averaged = copy.deepcopy(self.model) if self.world > 1 else self.model
        # rows since the last flush, flat (1 + len(metric_names) doubles each): appending to
        # an array costs what a list's append does, and the flush reads it without converting
        self.rows = array("d")
        self.rows_in_flight: Work | None = None  # the last flush's gather (_flush_rows)
        self.metric_names: list[str] | None = None
        self.pack_row: Callable[..., bytes] | None = None  # a row's bytes (_record)
        self.compute_seconds = 0.0  # this rank's total step time outside communication
        self.steps_run = 0
        self.pruned = False  # stopped early by the job's pruner (a sweep trial)
        self.last_losses: list[float] = []
        self.loss_area = [0.0, 0.0]  # rank 0: sums of the rank-mean loss, all steps / 1st quarter
        self.last_eval: dict[str, float] = {}
        self.reached: tuple[int, float, float] | None = None  # (steps, seconds, algorithm clock)
        self.bar = None
        self.start = 0.0  # perf_counter at the run's step 0 (begin; earlier if resumed)
        self._init_checkpointing()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> tuple[dict[str, Any] | None, dict[str, str]]:
        first = self.begin()
        for step in range(first, self.steps):
            if self.train_step(step):
                break
        return self.end()

    def begin(self) -> int:
        """Start (or resume) the run's clock, progress bar and trace; returns the first step."""
        first = self.resume()
        if self.rank == 0 and self.job.progress:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.steps,
                initial=first,
                desc=f"{self.job.target} x{self.world}",
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.5,
            )
        self.start = time.perf_counter() - self.elapsed_before  # a resumed run's clock goes on
        self.model.train()
        self.transport.trace_begin()
        return first

    def train_step(self, step: int) -> bool:
        """One step of the loop, with all its bookkeeping (rows, logging, evaluation,
        checkpoints); True when the run stops here early (pruned)."""
        cfg, transport, start = self.cfg, self.transport, self.start
        self._maybe_inject_fault(step)
        transport.set_step(step)
        t0 = time.perf_counter()
        comm0 = transport.counted()[-1]
        self.optimizer.zero_grad(set_to_none=False)
        loss_sum, at_x = 0.0, None
        probe = self.algorithm.loss_model()  # x_t, where the gradient is taken elsewhere
        forward = self.algorithm.train_model()  # the model, or a DDP wrapper of it
        for i in range(cfg.micro_batches):
            x, y = next(self.batches)
            with self.algorithm.accumulate(i == cfg.micro_batches - 1):
                loss = F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)
                if cfg.micro_batches > 1:  # x / 1 is exact: no op (and grad node) for it
                    loss = loss / cfg.micro_batches
                loss.backward()
            loss_sum += loss.item()
            if probe is not None:
                at_x = (at_x or 0.0) + self._probe_loss(probe, x, y) / cfg.micro_batches
            heartbeat()
        if not math.isfinite(loss_sum):  # before its gradients reach any other rank
            raise Diverged(step, self.rank, "loss")
        self.algorithm.reduce_gradients(step)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if self.lr_moves:
            self.scheduler.step()
            self._schedule_weight_decay()
        self.algorithm.mix_parameters(step)
        step_s = time.perf_counter() - t0
        counted = transport.counted()
        self._record(step, loss_sum, lr, step_s, counted, counted[-1] - comm0, at_x)
        if self.bar is not None:
            self.bar.update()
        last = step == self.steps - 1
        self.steps_run = step + 1
        evaluating = (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last
        if evaluating or (step + 1) % cfg.log_every == 0:
            self._check_parameters(step)
        if evaluating:
            self._flush_rows()
            scores = self.evaluate()
            self._note_target(step, scores, time.perf_counter() - start)
            self._log(step, scores)
            if not last and self._prune(step, scores):
                return True
        elif (step + 1) % cfg.log_every == 0:
            self._flush_rows(wait=False)
        if self._checkpoint_due(step, time.perf_counter() - start):
            self._check_parameters(step)  # a checkpoint never holds non-finite values
            self.save_checkpoint(step, time.perf_counter() - start)
        return False

    def end(self) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """Stop the clock and the trace; the run's summary (rank 0) and artifacts."""
        self._flush_rows()  # nothing left after the last step's evaluation; a caller's stop
        train_seconds = time.perf_counter() - self.start
        self.transport.trace_end()
        if self.bar is not None:
            self.bar.close()
        return self._finish(train_seconds)

    def _check_parameters(self, step: int) -> None:
        """Raise :class:`Diverged` if any parameter is non-finite. The loss is checked every
        step (it is free); this check costs ~6% of a digits MLP step (~0.1% of ResNet-20's:
        tests/benchmarks/test_bench_divergence.py), so it runs only when rows are logged and
        before evaluations. A non-finite parameter makes the next step's loss non-finite."""
        if not parameters_finite(self.model):
            raise Diverged(step, self.rank, "parameters")

    def _note_target(self, step: int, scores: dict[str, float], seconds: float) -> None:
        """Remember when the run first reached ``target_accuracy`` (every rank sees the same
        accuracy: the averaged model's, all-reduced)."""
        target = self.cfg.target_accuracy
        if target and self.reached is None and scores["test_accuracy"] >= target:
            clock = self.algorithm.elapsed()
            self.reached = (step + 1, seconds, math.nan if clock is None else clock)

    def _prune(self, step: int, scores: dict[str, float]) -> bool:
        """Ask the job's pruner (rank 0 decides, every rank learns it) whether to stop now."""
        if self.job.prune is None:
            return False
        stop = torch.zeros(1)
        if self.rank == 0:
            stop[0] = float(self.job.prune(step + 1, scores.get("test_accuracy", math.nan)))
        with self.transport.harness():
            self.transport.broadcast(stop, src=0)
        self.pruned = bool(stop.item())
        return self.pruned

    def _maybe_inject_fault(self, step: int) -> None:
        fault = self.cfg.fault
        if fault.kind == "none" or fault.rank != self.rank or fault.step != step:
            return
        if self.resumed:  # the fault happened in the run's first life; it does not recur
            return
        if fault.kind == "crash":
            raise RuntimeError(f"injected fault: rank {self.rank} crashes at step {step}")
        if fault.kind == "exit":
            os._exit(3)
        if fault.kind == "diverge":
            raise Diverged(step, self.rank, "loss")
        while True:  # hang
            time.sleep(1.0)

    def _probe_loss(self, probe: nn.Module, x: Tensor, y: Tensor) -> float:
        """Loss of ``probe`` on the batch, without gradients and without drawing from the
        random generators (dropout), so the run's trajectory is the same as without it."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = probe(x)
        return F.cross_entropy(out, y, label_smoothing=self.cfg.label_smoothing).item()

    def _record(
        self,
        step: int,
        loss: float,
        lr: float,
        step_s: float,
        counted: tuple[float, ...],
        comm_s: float,
        at_x: float | None,
    ) -> None:
        """One step's row, ``counted`` the transport's totals (:meth:`Transport.counted`); with
        ``at_x`` (the loss at x_t, see Algorithm.loss_model) that is the logged train_loss, and
        ``loss`` (at the gradient point) is algo.train_loss_ahead."""
        sent, recv, messages, wire, _ = counted
        extra = self.algorithm.step_metrics()
        if at_x is not None:
            extra, loss = {**extra, "train_loss_ahead": loss}, at_x
        if self.pack_row is None:  # this process's first row (a resumed run has the names)
            if self.metric_names is None:
                self.metric_names = [*_ROW, *(f"algo.{k}" for k in extra)]
            # a row's bytes as the array holds them (4x faster than extending it by a tuple)
            self.pack_row = struct.Struct(f"{1 + len(self.metric_names)}d").pack
        self.rows.frombytes(
            self.pack_row(step, loss, lr, sent, recv, messages, wire, step_s, comm_s,
                          step_s - comm_s, *extra.values())
        )  # fmt: skip
        self.compute_seconds += step_s - comm_s

    # -- checkpoints -----------------------------------------------------------------------

    def _init_checkpointing(self) -> None:
        plan = self.job.checkpoint
        self.resumed = False
        self.elapsed_before = 0.0  # training seconds before this process started (resumed)
        self.checkpoint_timer = ckpt.Timer()
        # steps between checkpoints: 0 none; None "auto", decided after log_every steps
        self.checkpoint_every: int | None = 0 if plan is None else plan.every
        if plan is not None and not self.algorithm.checkpointable:
            if self.rank == 0 and plan.every:
                print(f"note: {self.cfg.algorithm.name} with these settings cannot be "
                      "checkpointed; no checkpoints are taken", file=sys.stderr)  # fmt: skip
            self.checkpoint_every = 0

    def _checkpoint_due(self, step: int, elapsed: float) -> bool:
        """Whether to checkpoint after ``step`` (never after the last one)."""
        if self.checkpoint_every == 0 or step + 1 >= self.steps:
            return False
        if self.checkpoint_every is None:  # auto: decide once, on every rank alike
            if step + 1 < self.cfg.log_every:
                return False
            per_step = torch.tensor([elapsed / (step + 1)], dtype=torch.float64, device=self.device)
            with self.transport.harness():
                self.transport.all_reduce(per_step, op="max")
            self.checkpoint_every = ckpt.auto_interval(float(per_step), self.steps)
            if self.checkpoint_every == 0:
                return False
        return (step + 1) % self.checkpoint_every == 0

    def checkpoint_state(self, done: int, elapsed: float) -> dict[str, Any]:
        """This rank's whole state after ``done`` steps, encoded for ``torch.save``."""
        timer = self.checkpoint_timer
        loop = {
            "step": done,
            "elapsed": elapsed,
            "compute_seconds": self.compute_seconds,
            "loss_area": self.loss_area,
            "last_losses": self.last_losses,
            "last_eval": self.last_eval,
            "reached": self.reached,
            "metric_names": self.metric_names,
            "checkpoint_every": self.checkpoint_every,
            "checkpoints": timer.count + 1,  # this one included
            "checkpoint_seconds": timer.seconds,
        }
        return {
            "rank": self.rank,
            "world_size": self.world,
            "model": ckpt.capture(self.model.state_dict()),
            "optimizer": ckpt.capture(self.optimizer.state_dict()),
            "scheduler": ckpt.capture(self.scheduler.state_dict()),
            "batches": ckpt.capture(self.batches.state_dict()),
            "transport": ckpt.capture(self.transport.state_dict()),
            "rng": ckpt.capture(ckpt.rng_state()),
            "loop": ckpt.capture(loop),
            "algorithm": self.algorithm.state_dict(),
        }

    def save_checkpoint(self, step: int, elapsed: float) -> None:
        """Checkpoint after ``step``: every rank writes its file, then (all written: a barrier)
        rank 0 points the manifest at them. Rows are flushed first, so none is lost."""
        plan = self.job.checkpoint
        assert plan is not None
        self._flush_rows()
        done = step + 1
        with self.checkpoint_timer:
            ckpt.save_rank(plan.directory, done, self.rank, self.checkpoint_state(done, elapsed))
            self.transport.barrier()
            if self.rank == 0:
                manifest = {
                    "step": done,
                    "world_size": self.world,
                    "every": self.checkpoint_every,
                    "target": self.job.target,
                    "paper": self.job.paper,
                    "config": flatten(self.cfg),
                    "saved_at": time.time(),
                }
                ckpt.write_manifest(plan.directory, manifest)

    def _schedule_weight_decay(self) -> None:
        """``optim.schedule_weight_decay``: each param group's weight decay times the lr's
        factor for the next step (a resumed run gets it back with the optimizer's state)."""
        if self.cfg.optim.schedule_weight_decay:
            factor = self.lr_factor(self.scheduler.last_epoch)
            for group, base in zip(
                self.optimizer.param_groups, self.base_weight_decay, strict=True
            ):
                group["weight_decay"] = base * factor

    def resume(self) -> int:
        """Load the latest checkpoint if the job resumes; the first step to run."""
        plan = self.job.checkpoint
        if plan is None or not plan.resume:
            return 0
        manifest = ckpt.read_manifest(plan.directory)
        if manifest is None:
            raise RuntimeError(f"no checkpoint to resume from in {plan.directory}")
        if manifest["world_size"] != self.world:
            raise RuntimeError(
                f"the checkpoint in {plan.directory} has {manifest['world_size']} ranks, "
                f"this job {self.world}"
            )
        state = ckpt.load_rank(plan.directory, manifest["step"], self.rank)
        dev = self.device
        self.model.load_state_dict(ckpt.restore(state["model"], None, dev))
        self.optimizer.load_state_dict(ckpt.restore(state["optimizer"], None, dev))
        self.scheduler.load_state_dict(ckpt.restore(state["scheduler"]))
        self.batches.load_state_dict(ckpt.restore(state["batches"]))
        self.transport.load_state_dict(ckpt.restore(state["transport"]))
        self.algorithm.load_state_dict(state["algorithm"])
        loop = ckpt.restore(state["loop"])
        self.steps_run = loop["step"]
        self.elapsed_before = loop["elapsed"]
        self.compute_seconds = loop["compute_seconds"]
        self.loss_area = loop["loss_area"]
        self.last_losses = loop["last_losses"]
        self.last_eval = loop["last_eval"]
        self.reached = loop["reached"]
        self.metric_names = loop["metric_names"]
        self.checkpoint_every = loop["checkpoint_every"]
        self.checkpoint_timer.count = loop["checkpoints"]
        self.checkpoint_timer.seconds = loop["checkpoint_seconds"]
        # last: building the data iterator above may draw from the global generators
        ckpt.set_rng_state(ckpt.restore(state["rng"]))
        self.resumed = True
        return int(loop["step"])

    # -- metrics to rank 0 -----------------------------------------------------------------

    def _flush_rows(self, wait: bool = True) -> None:
        """Send the buffered per-step rows to rank 0 (one harness gather) and log them there.

        With ``wait=False`` (every ``log_every`` steps between evaluations) the gather is left
        in flight and rank 0 takes it at the next flush, so no rank stops for its latency
        (0.5-0.9 ms on 2 vCPUs: 1-2% of a digits MLP step at log_every 50); the progress bar
        and MLflow's metrics then lag by ``log_every`` steps. Evaluations, checkpoints and the
        run's end wait for every row."""
        before, self.rows_in_flight = self.rows_in_flight, None
        local = None
        if self.rows:
            width = 1 + len(self.metric_names or ())
            local = torch.from_numpy(np.frombuffer(self.rows).reshape(-1, width).copy())
            self.rows = array("d")
        gathered = []  # in step order: the rows in flight, then these if waiting
        with self.transport.harness():
            if local is not None and not wait:
                self.rows_in_flight = self.transport.gather_async(local, dst=0)
            if before is not None:
                gathered.append(before.wait())
            if local is not None and wait:
                gathered.append(self.transport.gather(local, dst=0))
        for parts in gathered:
            if parts is not None:
                self._take_rows(np.stack([p.numpy() for p in parts]))

    def _take_rows(self, table: np.ndarray) -> None:
        """Rank 0: log gathered rows (ranks x steps x (1 + columns)) and update the bar.

        Whole-array operations only: it runs once every ``log_every`` steps, with nothing of
        it left in the CPU's caches, where each numpy call or Python loop turn costs several
        times its warm price (on the digits MLP a step-by-step version took 107 us in place,
        this one 79)."""
        names = self.metric_names or list(_ROW)
        # the rank mean (the sum's own rounding, then one division: np.mean's) or the sum
        divisor = np.array([1.0 if name in _SUMMED else len(table) for name in names])
        values = table[:, :, 1:].sum(0) / divisor
        steps = table[0, :, 0].tolist()
        loss = names.index("train_loss")
        losses = values[:, loss].tolist()
        # summed one step at a time, left to right: the same sums however the rows are chunked
        early = bisect.bisect_left(steps, max(1, self.steps // 4))
        self.loss_area[0] = functools.reduce(operator.add, losses, self.loss_area[0])
        self.loss_area[1] = functools.reduce(operator.add, losses[:early], self.loss_area[1])
        if self.metrics is not None:  # one message for the lot, not one a step
            slowest = table[:, :, 1 + names.index("step_seconds")].max(0).tolist()
            self.metrics.log_steps(
                [
                    (int(step), {**dict(zip(names, row, strict=True)), "step_seconds_max": worst})
                    for step, row, worst in zip(steps, values.tolist(), slowest, strict=True)
                ]
            )
        self.last_losses = table[:, -1, 1 + loss].tolist()
        if self.bar is not None:
            post = {"loss": f"{sum(self.last_losses) / len(self.last_losses):.4f}"}
            if "test_accuracy" in self.last_eval:
                post["acc"] = f"{self.last_eval['test_accuracy']:.3f}"
            sent = table[:, -1, 1 + names.index("bytes_sent")].sum()
            post["sent"] = f"{sent / 1e6:.2f}MB"
            self.bar.set_postfix(post, refresh=False)

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if self.metrics is not None and metrics:
            self.metrics.log(step, metrics)

    # -- evaluation ------------------------------------------------------------------------

    @torch.no_grad()
    def _score(self, model: nn.Module, indices: range) -> Tensor:
        """(correct, count, summed loss) of ``model`` on test samples ``indices``."""
        model.eval()
        acc = torch.zeros(3, dtype=torch.float64)
        for x, y in eval_batches(
            self.data, indices, self.cfg.eval_batch_size, self.device, self.cfg.num_workers
        ):
            out = model(x)
            acc[0] += (out.argmax(1) == y).sum().item()
            acc[1] += len(y)
            acc[2] += F.cross_entropy(out, y, reduction="sum").item()
            heartbeat()
        model.train()
        return acc

    @torch.no_grad()
    def _average_into(self, source: nn.Module) -> None:
        """Load the mean over ranks of ``source``'s floating state into ``self.averaged``."""
        src_state, dst_state = source.state_dict(), self.averaged.state_dict()
        floats = [name for name, t in src_state.items() if t.is_floating_point()]
        flat = torch.cat([src_state[name].reshape(-1) for name in floats])
        self.transport.all_reduce(flat, op="mean")
        parts = flat.split([src_state[name].numel() for name in floats])
        for name, part in zip(floats, parts, strict=True):
            dst_state[name].copy_(part.view_as(dst_state[name]))
        for name, t in dst_state.items():  # integer buffers (BN batch counts): this rank's
            if not t.is_floating_point():
                t.copy_(src_state[name])

    def evaluate(self) -> dict[str, float]:
        """Averaged-model accuracy (and per-rank accuracies) on the whole test set."""
        n = len(self.data.test)
        local_model = self.algorithm.eval_model()
        with self.transport.harness():
            if self.world > 1:
                self._average_into(local_model)
                score = self._score(self.averaged, eval_shard(n, self.rank, self.world))
                self.transport.all_reduce(score)
            else:
                score = self._score(local_model, range(n))
            metrics = {
                "test_accuracy": float(score[0] / score[1]),
                "test_loss": float(score[2] / score[1]),
            }
            if self.cfg.eval_per_rank and self.world > 1:
                own = self._score(local_model, range(n))
                parts = self.transport.gather(own, dst=0)
                if parts is not None:
                    accs = torch.stack([p[0] / p[1] for p in parts])
                    metrics["test_accuracy_rank_mean"] = float(accs.mean())
                    metrics["test_accuracy_rank_min"] = float(accs.min())
                    metrics["test_accuracy_rank_max"] = float(accs.max())
                    # the local models the Crossover-SGD authors score: ranks 0 and N/2
                    metrics["test_accuracy_rank0"] = float(accs[0])
                    metrics["test_accuracy_rank_half"] = float(accs[self.world // 2])
        self.last_eval = metrics
        return metrics

    # -- the end ---------------------------------------------------------------------------

    def _finish(self, train_seconds: float) -> tuple[dict[str, Any] | None, dict[str, str]]:
        stats = self.transport.stats
        mine = {
            "rank": self.rank,
            "algorithm": stats.to_dict(),
            "harness": self.transport.harness_stats.to_dict(),
            "compute_seconds": self.compute_seconds,
            "totals": self.algorithm.totals(),
            "params_sha256": _state_digest(self.model),
            "checkpoints": self.checkpoint_timer.count,
            "checkpoint_seconds": self.checkpoint_timer.seconds,
        }
        with self.transport.harness():
            everyone = self.transport.gather_object(mine, dst=0)
            traces = self.transport.gather_object(self.transport.trace_records(), dst=0)
        artifacts = self.algorithm.artifacts() if self.rank == 0 else {}
        if everyone is None or traces is None:
            return None, {}
        cfg = self.cfg
        per_rank = [
            {
                "rank": r["rank"],
                "bytes_sent": r["algorithm"]["bytes_sent"],
                "bytes_recv": r["algorithm"]["bytes_recv"],
                "messages": r["algorithm"]["messages"],
                "wire_bytes": r["algorithm"]["wire_bytes"],
                "comm_seconds": r["algorithm"]["seconds"],
                "compute_seconds": r["compute_seconds"],
                "harness_bytes_sent": r["harness"]["bytes_sent"],
            }
            for r in everyone
        ]
        samples = self.steps_run * cfg.batch_size * cfg.micro_batches * self.world
        summary: dict[str, Any] = {
            "target": self.job.target,
            "algorithm": cfg.algorithm.name,
            "stand_in": ALGORITHMS.get(cfg.algorithm.name).stand_in,  # our rule, not the paper's
            "paper": self.job.paper,
            "dataset": cfg.dataset.name,
            "model": cfg.model.name,
            "world_size": self.world,
            "steps": self.steps_run,
            "epochs": self.steps_run / self.steps_per_epoch,
            "pruned": self.pruned,
            "num_params": self.num_params,
            "test_accuracy": self.last_eval.get("test_accuracy"),
            "test_loss": self.last_eval.get("test_loss"),
            "train_loss": sum(self.last_losses) / max(1, len(self.last_losses)),
            # loss AUC per step: the mean training loss over the run, and over its first quarter
            # (how fast a method trains, not only where it ends)
            "train_loss_auc": self.loss_area[0] / max(1, self.steps_run),
            "train_loss_early": self.loss_area[1] / min(self.steps_run, max(1, self.steps // 4)),
            "bytes_sent": sum(r["bytes_sent"] for r in per_rank),
            "bytes_recv": sum(r["bytes_recv"] for r in per_rank),
            "messages": sum(r["messages"] for r in per_rank),
            "harness_bytes_sent": sum(r["harness_bytes_sent"] for r in per_rank),
            # on the wire under suite.wire's algorithms: all ranks, busiest rank, busiest link
            "wire_bytes": sum(r["wire_bytes"] for r in per_rank),
            "wire_bytes_max": max(r["wire_bytes"] for r in per_rank),
            "link_wire_bytes_max": _busiest_link(everyone),
            # load balance: the busiest rank's and the busiest (src, dst) link's bytes
            "bytes_sent_max": max(r["bytes_sent"] for r in per_rank),
            "link_bytes_max": max(
                (link["bytes"] for r in everyone for link in r["algorithm"]["links"].values()),
                default=0,
            ),
            "train_seconds": train_seconds,
            "samples_per_second": samples / max(train_seconds, 1e-9),
            # means over ranks
            "compute_seconds": _mean(r["compute_seconds"] for r in per_rank),
            "comm_seconds": _mean(r["comm_seconds"] for r in per_rank),
            "per_rank": per_rank,
            # every rank's parameters and buffers, bit for bit (equal runs have equal digests)
            "params_sha256": hashlib.sha256(
                "".join(r["params_sha256"] for r in everyone).encode()
            ).hexdigest(),
            "checkpoints": everyone[0]["checkpoints"],
            "checkpoint_seconds": max(r["checkpoint_seconds"] for r in everyone),
            "run_id": None,
        }
        totals: dict[str, float] = {}
        for r in everyone:
            for key, value in r["totals"].items():
                totals[key] = totals.get(key, 0.0) + value
        if cfg.target_accuracy:
            steps, seconds, clock = self.reached or (math.nan, math.nan, math.nan)
            summary.update(steps_to_target=steps, seconds_to_target=seconds, clock_to_target=clock)
        # rank 0 alone from here, for as long as the replay and encoding take (minutes at
        # scale): the launcher must not take the silence for a hang
        with beating():
            merged = _merge_traces(self.world, traces)
            summary.update(self._network_figures(merged))
            summary.update(totals)
            summary.update(self.algorithm.derived(totals) if totals else {})
            for key in self.last_eval:
                if key.startswith("test_accuracy_rank"):
                    summary[key] = self.last_eval[key]
            artifacts = {
                **artifacts,
                "config.json": to_json(cfg),
                "comm.json": json.dumps(everyone, indent=2),
                trace.ARTIFACT: trace.encode(
                    merged.world_size,
                    list(merged.groups),
                    list(merged.channels),
                    list(merged.ranks),
                    list(merged.truncated),
                    list(merged.tail),
                ),
            }
        return summary, artifacts

    def _network_figures(self, merged: trace.Trace) -> dict[str, Any]:
        """The run's trace replayed on ``cfg.network`` (:mod:`suite.netmodel`): simulated
        seconds in all, per step and, with ``target_accuracy``, to the target."""
        target = None
        if self.cfg.target_accuracy:
            target = self.reached[0] if self.reached else math.nan
        try:
            figures = netmodel.network_seconds(
                merged, self.cfg.network, steps=self.steps_run, steps_to_target=target
            )
        except ValueError as err:  # a trace the model cannot replay must not lose the run
            print(f"warning: network model: {err}", file=sys.stderr, flush=True)
            figures = {"network_seconds": math.nan, "network_seconds_per_step": math.nan}
            if target is not None:
                figures["network_seconds_to_target"] = math.nan
        return {"network": self.cfg.network, **figures}


def _busiest_link(everyone: list[dict[str, Any]]) -> int:
    """Wire bytes of the busiest (src, dst) link (each link is recorded by its sender only)."""
    links = [n for r in everyone for n in r["algorithm"]["wire_links"].values()]
    return max(links, default=0)


def _merge_traces(world: int, traces: list[Any]) -> trace.Trace:
    """Every rank's trace in one artifact, group and channel ids re-mapped onto rank 0's
    tables (extended with any group or channel only other ranks know)."""
    _, groups, channels, *_ = traces[0]
    groups, channels = list(groups), list(channels)
    ranks = []
    for records, their_groups, their_channels, *_ in traces:
        for g in their_groups:
            if g not in groups:
                groups.append(g)
        for name in their_channels:
            if name not in channels:
                channels.append(name)
        gmap = np.array([groups.index(g) for g in their_groups] or [0])
        cmap = np.array([channels.index(n) for n in their_channels] or [0])
        records = records.copy()
        records["group"] = gmap[records["group"]]
        records["channel"] = cmap[records["channel"]]
        ranks.append(records)
    return trace.Trace(
        world,
        tuple(groups),
        tuple(channels),
        tuple(ranks),
        tuple(t[3] for t in traces),
        tuple(t[4] for t in traces),
    )
