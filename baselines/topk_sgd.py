"""Top-K SGD: data-parallel SGD whose ranks exchange only the K largest gradient entries.

Every step each rank selects the K largest |v| of its gradient v (plus its error-feedback
residual, with ``error_feedback``: Stich et al. 2018, "Sparsified SGD with memory"), all-gathers
the values and indices (one packed message), and every rank applies the same average of the N
sparse vectors, so the models stay identical. With a fixed K = floor(rho d) this is the fixed-K
baseline of the Adaptive Top-K paper (Ruan et al., arXiv 2210.13532), spending rho d T elements
per rank over T steps; ``adaptive_topk`` (suite.algorithms.adaptive_topk) spends the same budget
with a K that changes every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import FlatGrads
from suite.compressors import index_dtype, pack, top_indices
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class TopKSGDConfig:
    """Knobs of Top-K SGD.

    density [rho]: the communication budget, as the average fraction of the d gradient entries
        each rank sends per step: K = max(1, floor(rho d)), and a run of T steps may send
        K T entries per rank (values in float32 plus indices in the smallest integer type).
        1.0 sends everything (dense SGD through an all-gather).
    error_feedback: keep what was not sent and add it to the next gradient (memory / error
        compensation). Without it small densities lose most of the gradient for good.
    """

    density: float = 0.01
    error_feedback: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"density is a fraction of the entries in (0, 1], got {self.density}")


@ALGORITHMS.register("topk_sgd", config=TopKSGDConfig, paper="baseline")
class TopKSGD(Algorithm):
    """Fixed-K Top-K gradient sparsification, all-gathered, with optional error feedback."""

    def __init__(self, config: TopKSGDConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.grads = FlatGrads(self.model.parameters())
        flat = self.grads.flat
        self.d = flat.numel()
        self.k_mean = max(1, int(config.density * self.d))
        self.budget = self.k_mean * ctx.total_steps  # entries per rank over the whole run
        self.index_type = index_dtype(self.d - 1)
        self.residual = torch.zeros_like(flat) if config.error_feedback else None
        self.generator = torch.Generator(device=flat.device).manual_seed(ctx.seed)
        self.k = 0
        self.spent = 0  # entries this rank has sent
        self.k_log: list[int] = []  # K of every step (tests, debugging)
        self.energy = 0.0  # fraction of ||v||^2 the last selection kept
        self.sums = {"energy_sum": 0.0, "selections": 0.0, "k_first_quarter": 0.0,
                     "k_last_quarter": 0.0}  # fmt: skip

    def choose_k(self, v: Tensor, step: int) -> int:
        """How many entries to send at ``step`` (the same on every rank)."""
        return self.k_mean

    def reduce_gradients(self, step: int) -> None:
        g = self.grads.buffer()
        v = g.add(self.residual) if self.residual is not None else g.clone()
        self.k = k = self.choose_k(v, step)
        idx = top_indices(v, k, self.generator) if k else v.new_empty(0, dtype=torch.long)
        values = v[idx]
        self.energy = float(values.pow(2).sum() / v.pow(2).sum().clamp_min(1e-30))
        side = self.side_message(v)  # before v turns into the residual
        if self.residual is not None:
            v[idx] = 0.0
            self.residual = v  # what was not sent
        message = pack([values, idx.to(self.index_type), side])
        parts = self.transport.all_gather(message, sizes=[message.numel()] * self.world_size)
        g.zero_()
        sides = []
        for part in parts:
            vals, where, rest = self._unpack(part, k, g.dtype)
            g.index_put_((where,), vals, accumulate=True)
            sides.append(rest.clone().view(torch.float32))  # clone: the view needs alignment
        g.div_(self.world_size)
        self.side_received(sides)
        self._account(step, k)

    def side_message(self, v: Tensor) -> Tensor:
        """float32 scalars each rank appends to its message (none for fixed K): adaptive K
        agrees on the next step's K this way, without a collective round of its own."""
        return v.new_empty(0, dtype=torch.float32)

    def side_received(self, sides: list[Tensor]) -> None:
        """Every rank's :meth:`side_message` of this step, in rank order."""

    def _unpack(self, part: Tensor, k: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        size = k * dtype.itemsize
        end = size + k * self.index_type.itemsize
        values = part[:size].view(dtype)
        return values, part[size:end].view(self.index_type).long(), part[end:]

    def _account(self, step: int, k: int) -> None:
        self.spent += k
        self.k_log.append(k)
        self.sums["energy_sum"] += self.energy
        self.sums["selections"] += 1
        quarter = max(1, self.ctx.total_steps // 4)
        if step < quarter:
            self.sums["k_first_quarter"] += k
        if step >= self.ctx.total_steps - quarter:
            self.sums["k_last_quarter"] += k

    def step_metrics(self) -> dict[str, float]:
        return {
            "k": float(self.k),
            "energy": self.energy,
            "elements_total": float(self.spent),
            "budget_spent": self.spent / self.budget,
        }

    def totals(self) -> dict[str, float]:
        return {
            **self.sums,
            "elements_sent": float(self.spent),
            "budget": float(self.budget),
        }

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        """budget_used = entries sent / budget (<= 1), the mean captured energy, and how much
        more K the first quarter of the run spent than the last."""
        return {
            "budget_used": totals["elements_sent"] / max(totals["budget"], 1.0),
            "energy_mean": totals["energy_sum"] / max(totals["selections"], 1.0),
            "k_early_late": totals["k_first_quarter"] / max(totals["k_last_quarter"], 1.0),
        }
