"""DDP: torch's DistributedDataParallel, the data-parallel training practitioners run anyway.

The model is wrapped in :class:`torch.nn.parallel.DistributedDataParallel`, so gradients are
grouped into buckets (``bucket_cap_mb``) and each bucket is all-reduced as soon as its last
gradient is ready, overlapping communication with the rest of the backward pass. Every bucket's
all-reduce goes through a DDP communication hook that does what PyTorch's own does:
``allreduce_hook`` (divide by the world size, all-reduce, as DDP's built-in reducer) or, with
``compression``, ``fp16_compress_hook`` / ``bf16_compress_hook`` (cast the bucket to 16 bits,
divide, all-reduce, cast back into the bucket), and every one is counted like every other
method's (bytes, wire bytes, messages, trace records). Two hooks do this (``DDPConfig.hook``):
the compiled one (baselines/ddp_hook.py: C++, the default) keeps each all-reduce's bytes and
times and the transport takes them when its counters or trace are read, no Python running for
them step by step (:meth:`suite.transport.Transport.count_outside`); the Python one calls the
transport (:meth:`suite.transport.Transport.all_reduce_async`) from the hook. They train, count
and trace the same (tests/test_ddp.py). The loop runs forward and backward on the wrapper
(``Algorithm.train_model``) and every micro-batch but the last under ``no_sync()``.

What is and is not counted. DDP's other communication is switched off rather than left
uncounted: ``init_sync=False`` (no shape check and no broadcast of parameters and buffers at
construction: every rank builds the same model from the run's seed, the loop's
``initial_model``) and ``forward_sync_buffers=False`` (no broadcast of buffers before each
forward: each rank keeps its own BatchNorm statistics, as allreduce_sgd does, and evaluation
averages them). One exchange cannot be switched off: DDP rebuilds its buckets once, in the
order gradients became ready, and broadcasts that assignment from rank 0 (two small integer
tensors, a few hundred bytes). We make it happen when the algorithm is built
(:func:`settle_buckets`: two dry passes on zeros, no gradient exchanged), so every step has
the same layout and a resumed run ends bit for bit as the uninterrupted one; it is set-up
bookkeeping outside the transport, not counted.

Time. Each all-reduce is issued from the hook and waited for at the end of backward (by the
Python hook in a callback queued before DDP's own, by DDP itself for the compiled one); both
hooks record when, so ``comm_seconds`` is the issue plus the time the rank actually waited,
and the trace replay (``network_seconds``, :mod:`suite.netmodel`) lets the rank compute the
rest of backward while the all-reduce runs on the modelled network: DDP's overlap.

Cost. DDP calls a Python hook from backward for every bucket, and on a small model on a CPU
that costs more than counting does: PyTorch's own ``allreduce_hook`` costs a digits-MLP step
4-8% over DDP's built-in C++ all-reduce on 2 vCPUs (tests/benchmarks/test_bench_ddp.py). Hence
the compiled hook. No Python runs for its all-reduces step by step either: the loop's row reads
the hook's running totals in its memory, and the transport takes its records when read
(:meth:`suite.transport.Transport.count_outside`); handing them over after every backward pass
cost that step ~13 us (~1.1%), which put it at the edge of the benchmark's 2% (README: DDP).
The Python hook is kept for one rank, for emulated runs (their trace records each op's CPU
time as it runs, which deferred records cannot) and where no compiler is at hand.

A non-finite loss is caught after backward, as with every method, but DDP has already
all-reduced that step's gradients by then, so other ranks may receive them before the launcher
stops the run.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Variable
from torch.nn.parallel import DistributedDataParallel

from baselines import ddp_hook
from suite import trace
from suite.algorithms.base import CONTEXT_ATTRIBUTES, NO_CONTEXT, Algorithm, Context
from suite.launcher import communicating_flag
from suite.registry import ALGORITHMS
from suite.transport import Work

Compression = Literal["none", "fp16", "bf16"]
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DDPConfig:
    """Knobs of DDP (the defaults are PyTorch's).

    When to use it: the baseline to beat. On a fast network (data centre) it is hard to beat,
    because its all-reduces overlap the backward pass; compression methods pay off only where
    the network, not compute, bounds the step. Compare them against ``ddp_fp16``/``ddp_bf16``,
    not 32-bit ``ddp`` (Agarwal et al., MLSys 2022).

    bucket_cap_mb: bucket size in MiB. Smaller buckets start communicating earlier in backward
        (more overlap) but cost more messages, each with its own latency; larger ones fewer
        messages, less overlap. A model smaller than one bucket sends one all-reduce per step.
    gradient_as_bucket_view: gradients are views into the buckets (no copy in or out of them;
        less memory). Off only to debug code that replaces ``p.grad``.
    compression: "none" (32-bit all-reduce), "fp16" or "bf16": each bucket is cast to 16 bits
        for the all-reduce (half the bytes). fp16 keeps more mantissa but can overflow on
        large gradients; bf16 has fp32's range and less precision. Both usually train to the
        same accuracy.
    hook: "compiled" (a C++ hook, baselines/ddp_hook.py, built once on first use) or
        "python". Both compute and count the same; the Python one costs a small model's step
        4-8% more on a CPU (DDP calls it from backward for every bucket). The Python hook is
        used anyway on one rank, in emulated runs (their trace records each op's CPU time as
        it runs) and where the compiled one cannot be built (with a warning).
    """

    bucket_cap_mb: float = 25.0
    gradient_as_bucket_view: bool = True
    compression: Compression = "none"
    hook: Literal["compiled", "python"] = "compiled"

    def __post_init__(self) -> None:
        if self.bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {self.bucket_cap_mb}")
        if self.compression not in ("none", *_DTYPES):
            raise ValueError(
                f"unknown compression {self.compression!r}; valid choices: none, fp16, bf16"
            )
        if self.hook not in ("compiled", "python"):
            raise ValueError(f"unknown hook {self.hook!r}; valid choices: compiled, python")


def wrap(model: nn.Module, ctx: Context, bucket_cap_mb: float, as_view: bool) -> nn.Module:
    """``model`` in DistributedDataParallel with no communication outside the hook (see the
    module docstring)."""
    device = ctx.device
    return DistributedDataParallel(
        model,
        device_ids=[device.index or 0] if device.type == "cuda" else None,
        process_group=ctx.transport.group,
        bucket_cap_mb=bucket_cap_mb,
        gradient_as_bucket_view=as_view,
        init_sync=False,
        forward_sync_buffers=False,
    )


def done(x: Tensor) -> torch.futures.Future[Tensor]:
    """A completed future of ``x`` (a hook's result when it has nothing to wait for)."""
    future: torch.futures.Future[Tensor] = torch.futures.Future()
    future.set_result(x)
    return future


# Unannotated: DDP checks a hook's annotations against the classes, and this module's are
# strings. Lean: it runs for every bucket of every step, in the backward pass.
def _hook(algorithm, bucket):
    """DDP's communication hook: PyTorch's ``allreduce_hook`` (divide the bucket by the world
    size, as DDP's built-in reducer does, and all-reduce it) or, with 16-bit compression, its
    ``fp16_compress_hook``/``bf16_compress_hook`` (cast, divide, all-reduce, cast back into
    the bucket), through the transport."""
    buffer = bucket.buffer()
    if algorithm.dry:
        return done(buffer)
    if algorithm.dtype is None:
        return algorithm._all_reduce(bucket, buffer.div_(algorithm.world_size))
    return algorithm._all_reduce(
        bucket, buffer.to(algorithm.dtype).div_(algorithm.world_size), buffer
    )


def settle_buckets(algorithm: Any) -> None:
    """Two dry forward and backward passes on zeros when the algorithm is built (its hook
    passes buckets through, ``algorithm.dry``; model buffers, gradients and RNGs are left as
    they were), so DDP rebuilds its buckets in gradient-ready order now rather than after the
    first training step. Every step, a resumed run's first included, then has the same bucket
    layout: gloo's ring sums each chunk in an order that depends on it, so otherwise a resumed
    run on 3 or more ranks would not end bit for bit as the uninterrupted one."""
    ctx = algorithm.ctx
    if not ctx.input_shape:
        return
    model, device = algorithm.model, ctx.device
    buffers = [b.detach().clone() for b in model.buffers()]
    algorithm.dry = True
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for _ in range(2):  # the first records the ready order, the second's forward rebuilds
            x = torch.zeros(2, *ctx.input_shape, device=device)
            algorithm.ddp(x).float().sum().backward()
    algorithm.dry = False
    with torch.no_grad():
        for b, saved in zip(model.buffers(), buffers, strict=True):
            b.copy_(saved)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()


@ALGORITHMS.register("ddp", config=DDPConfig, paper="baseline")
class DDP(Algorithm):
    """torch DistributedDataParallel (bucketed all-reduce overlapping backward) through the
    transport."""

    def __init__(self, config: DDPConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.ddp = wrap(self.model, ctx, config.bucket_cap_mb, config.gradient_as_bucket_view)
        # this step's all-reduces: (work, tensor, bucket to copy it into, DDP's future)
        self.pending: list[tuple[Work, Tensor, Tensor | None, torch.futures.Future]] = []
        self._dry = False
        self.dtype = _DTYPES.get(config.compression)  # of the all-reduce; None: the bucket's
        self.compiled = compiled_hook(config, ctx)
        if self.compiled is None:
            self.ddp.register_comm_hook(self, _hook)
        else:  # what it saw, taken by the transport when read
            group = self.transport.process_group
            self.records = self.compiled.install(
                self.ddp.reducer, group, self.world_size, config.compression, communicating_flag()
            )
            self.transport.count_outside(self.records)
        settle_buckets(self)  # after the hook: DDP's own all-reduce would exchange the zeros

    @property
    def dry(self) -> bool:
        """The hook passes buckets through untouched (settle_buckets)."""
        return self._dry

    @dry.setter
    def dry(self, on: bool) -> None:
        self._dry = on
        if self.compiled is not None:
            self.records.dry = on

    def state_dict(self) -> dict[str, Any]:
        """Every attribute but the context and the compiled hook's handles (made anew)."""
        from suite.checkpoint import capture_attrs

        return capture_attrs(self, (*CONTEXT_ATTRIBUTES, "compiled", "records"))

    def _all_reduce(
        self, bucket: dist.GradBucket, x: Tensor, into: Tensor | None = None
    ) -> torch.futures.Future[Tensor]:
        """Issue the all-reduce of ``x`` (copied ``into`` the bucket once done, if given) and
        return the future DDP waits on. After the step's last bucket, a callback queued now
        (so it runs at the end of backward, before DDP's own, queued after this hook returns)
        waits for them all and completes their futures, so the transport records when this
        rank waited."""
        future: torch.futures.Future[Tensor] = torch.futures.Future()
        self.pending.append((self.transport.all_reduce_async(x), x, into, future))
        if bucket.is_last():
            Variable._execution_engine.queue_callback(self._wait)
        return future

    def _wait(self) -> None:
        for work, x, into, future in self.pending:
            work.wait()
            future.set_result(x if into is None else into.copy_(x))
        self.pending.clear()

    def train_model(self) -> nn.Module:
        return self.ddp

    def accumulate(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        # the compiled hook's all-reduces are waited for inside backward, out of Python's
        # sight: the hook marks this rank as communicating meanwhile, so a hang detected then
        # blames the peer that stopped rather than this rank waiting for it (suite.launcher)
        return NO_CONTEXT if last else self.ddp.no_sync()


def compiled_hook(config: DDPConfig, ctx: Context) -> Any | None:
    """The compiled hook's extension where ``config`` asks for it and it can serve (see
    ``DDPConfig.hook``), else None (the Python hook)."""
    if config.hook != "compiled" or ctx.transport.world_size == 1 or trace.CPU_CLOCK:
        return None
    return ddp_hook.compiled()


ALGORITHMS.preset(
    "ddp_fp16",
    "ddp",
    description="DDP with PyTorch's fp16_compress_hook: buckets all-reduced in float16 (half "
    "the bytes)",
    compression="fp16",
)
ALGORITHMS.preset(
    "ddp_bf16",
    "ddp",
    description="DDP with PyTorch's bf16_compress_hook: buckets all-reduced in bfloat16 (half "
    "the bytes)",
    compression="bf16",
)
