"""PowerSGD (Vogels, Karimireddy, Jaggi, NeurIPS 2019) as PyTorch ships it: DDP with
``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``, ported so that its all-reduces
go through the suite's transport.

The port follows PyTorch's hook step for step (``batch_tensors_with_same_shape=False``): for the
first ``start_iter`` steps a bucket is all-reduced plainly (as ``ddp``). After that, per bucket:
add the error of the previous step (error feedback); view each gradient as a matrix n x m
(``tensor.view(shape[0], -1)``); compress those with ``(n + m) r * min_compression_rate < n m``
to rank ``r = min(n, m, rank)``, the rest (biases, small layers) are all-reduced uncompressed in
one flat buffer; P = M Q with Q from the previous step (warm start, orthogonalised) or random
(seeded as PyTorch seeds it); all-reduce P, orthogonalise, Q = M^T P, all-reduce Q, divide by the
world size, M ~ P Q^T; the error is what the approximation dropped. So a bucket costs three
all-reduces per step: the uncompressed tensors, all Ps, all Qs (the first may be empty: 0
bytes). tests/test_ddp.py checks that parameters equal those of torch's own hook on 2 ranks.

Unlike PyTorch's hook, which chains the three all-reduces as futures, the port runs them in
sequence when the bucket is ready, so a bucket's compression does not overlap the rest of the
backward pass; the results are the same. Everything else (what DDP counts and does not) is as
in :mod:`baselines.ddp`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import (
    _orthogonalize,
    _should_compress,
)

from baselines.ddp import DDP, done, settle_buckets, wrap
from suite.algorithms.base import Algorithm, Context
from suite.registry import ALGORITHMS
from suite.transport import Work

SEED = 0  # PowerSGDState's random_seed default: the seeds of the random Qs


@dataclass(frozen=True)
class PowerSGDConfig:
    """Knobs of PowerSGD (names of PyTorch's PowerSGDState in brackets).

    When to use it: a network-bound run with large matrices (conv and linear layers of
    thousands of elements): rank 1-4 sends a few percent of the gradient. On a fast network or
    a small model, ``ddp``/``ddp_fp16`` are usually faster end to end (the compression costs
    compute and the three all-reduces per bucket cost latency).

    rank (matrix_approximation_rank): r of the low-rank approximation. Higher: closer to the
        full gradient and better accuracy, r (n + m) floats per matrix on the wire. Start at 1,
        raise it (2, 4) if accuracy falls short.
    start_iter (start_powerSGD_iter): steps of plain all-reduce before compressing (a warm-up
        in which the model moves most). More: safer accuracy, more bytes. Must be > 1 with
        error feedback or warm start.
    min_compression_rate: a matrix is compressed only when n m / ((n + m) r) exceeds this;
        others (biases, small layers) are all-reduced uncompressed.
    warm_start: reuse last step's Q as the starting point (one power iteration per step
        converges over steps); off, Q is random every step (worse approximation).
    error_feedback: add back what the approximation dropped at the next step. Keep it on:
        without it PowerSGD loses accuracy.
    orthogonalization_epsilon: added to column norms in Gram-Schmidt; set 1e-8 if a layer's
        gradient can be all zero (division by zero otherwise).
    """

    rank: int = 1
    start_iter: int = 10
    min_compression_rate: float = 2.0
    warm_start: bool = True
    error_feedback: bool = True
    orthogonalization_epsilon: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if (self.error_feedback or self.warm_start) and self.start_iter <= 1:
            raise ValueError(
                "start_iter must be > 1 with error_feedback or warm_start (DDP rebuilds its "
                f"buckets at step 1), got {self.start_iter}"
            )


@ALGORITHMS.register("powersgd", config=PowerSGDConfig, paper="baseline")
class PowerSGD(DDP):
    """PyTorch's PowerSGD DDP hook (rank-r, warm start, error feedback) through the
    transport."""

    def __init__(self, config: PowerSGDConfig, ctx: Context) -> None:
        Algorithm.__init__(self, config, ctx)
        self.ddp = wrap(self.model, ctx, 25.0, True)
        # unannotated: DDP checks a hook's annotations against the classes, not strings
        self.ddp.register_comm_hook(None, lambda state, bucket: self._hook(bucket))
        self.pending: list[tuple[Work, Tensor, Tensor | None, torch.futures.Future]] = []
        self.compiled = None  # its hook is Python's (three all-reduces a bucket, and state)
        self.dry = False
        self.iter = 0
        self.draws = 0  # seeds drawn from RandomState(SEED) so far (restored on resume)
        self.rng = np.random.RandomState(SEED)
        self.error: dict[int, Tensor] = {}
        self.p: dict[int, Tensor] = {}
        self.q: dict[int, Tensor] = {}
        self.numel_before = 0
        self.numel_after = 0
        settle_buckets(self)

    def _hook(self, bucket: dist.GradBucket) -> torch.futures.Future[Tensor]:
        cfg, n_ranks = self.config, self.world_size
        buffer = bucket.buffer()
        if self.dry:
            return done(buffer)
        if self.iter < cfg.start_iter:
            self._count_iter(bucket)
            return self._all_reduce(bucket, buffer.div_(n_ranks))
        index = bucket.index()
        if cfg.error_feedback:
            if index in self.error:
                buffer.add_(self.error[index])
            else:
                self.error[index] = torch.zeros_like(buffer)
            before = buffer.detach().clone()
        compress, plain, ps_size, qs_size = [], [], 0, 0
        for tensor in bucket.gradients():
            matrix = tensor.view(tensor.shape[0], -1)
            n, m = matrix.shape
            r = min(n, m, cfg.rank)
            worth, dense, low = _should_compress(n, m, r, cfg.min_compression_rate)
            self.numel_before += dense
            if worth:
                compress.append(matrix)
                ps_size, qs_size = ps_size + n * r, qs_size + m * r
                self.numel_after += low
            else:
                plain.append(tensor)
                self.numel_after += dense
        flat = (
            torch.cat([t.view(-1) for t in plain]) if plain else buffer.new_empty(0)
        )  # fmt: skip
        fresh = not cfg.warm_start or index not in self.p
        if fresh:
            self.p[index] = buffer.new_empty(ps_size)
            self.q[index] = buffer.new_empty(qs_size)
        ps, qs, pi, qi = [], [], 0, 0
        for matrix in compress:
            n, m = matrix.shape
            r = min(n, m, cfg.rank)
            ps.append(self.p[index][pi : pi + n * r].view(1, n, r))
            qs.append(self.q[index][qi : qi + m * r].view(1, m, r))
            pi, qi = pi + n * r, qi + m * r
        eps = cfg.orthogonalization_epsilon
        if fresh:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.rng.randint(1_000_000_000))
                self.draws += 1
                for q in qs:
                    q.copy_(torch.randn(*q.shape, device="cpu", dtype=buffer.dtype))
                    _orthogonalize(q, eps)
        else:
            for q in qs:
                _orthogonalize(q, eps)
        matrices = [matrix.unsqueeze(0) for matrix in compress]
        for matrix, q, p in zip(matrices, qs, ps, strict=True):
            torch.bmm(matrix, q, out=p)
        # the three all-reduces, in PyTorch's order: uncompressed tensors, Ps, Qs
        self.transport.all_reduce(flat).div_(n_ranks)
        offset = 0
        for tensor in plain:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()
        self.transport.all_reduce(self.p[index])
        for p in ps:
            _orthogonalize(p, eps)
        for matrix, p, q in zip(matrices, ps, qs, strict=True):
            torch.bmm(matrix.transpose(1, 2), p, out=q)
        self.transport.all_reduce(self.q[index]).div_(n_ranks)
        for p, q, matrix in zip(ps, qs, matrices, strict=True):
            torch.bmm(p, q.transpose(1, 2), out=matrix)
        if cfg.error_feedback:
            self.error[index] = before - buffer
        if not cfg.warm_start:
            self.p.clear()
            self.q.clear()
        self._count_iter(bucket)
        return done(buffer)

    def _count_iter(self, bucket: dist.GradBucket) -> None:
        if bucket.is_last():
            self.iter += 1

    def totals(self) -> dict[str, float]:
        return {
            "powersgd_numel_before": self.numel_before,
            "powersgd_numel_after": self.numel_after,
        }

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        after = totals.get("powersgd_numel_after", 0)
        return {"compression": totals["powersgd_numel_before"] / after} if after else {}

    # -- checkpoints: the state, but the RandomState (re-drawn to the same point) ----------

    def state_dict(self) -> dict[str, Any]:
        from suite.checkpoint import capture

        keep = ("iter", "draws", "error", "p", "q", "numel_before", "numel_after")
        return capture({name: getattr(self, name) for name in keep})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from suite.checkpoint import restore

        for name, value in restore(state, None, self.ctx.device).items():
            setattr(self, name, value)
        self.rng = np.random.RandomState(SEED)
        for _ in range(self.draws):
            self.rng.randint(1_000_000_000)
