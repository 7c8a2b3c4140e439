"""Local error feedback with a server: two-way compression, server error compensation.

The "EF" baseline of the SAEF paper (Xu, Huo, Huang, AAAI 2021), as the authors' code runs it
(``--method ef-Sign -cb -sec``): every worker takes a local optimizer step from the common model
x_t to x', adds its residual to the update and compresses, delta_i = (x_t - x') + e_i,
c_i = C(delta_i), e_i <- delta_i - c_i; the server averages, compresses back with its own
residual s (s <- s + cbar; m = C(s); s <- s - m) and broadcasts m; everyone sets
x_{t+1} = x_t - m. The gradient is computed at x_t, while the analysis tracks the error-corrected
point x~_t = x_t - mean_i e_i - s: the gap ||x_t - x~_t|| is the "gradient mismatch" SAEF
removes (suite.algorithms.saef). Each worker keeps its own optimizer state (momentum, Adagrad
sums), as in the authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from baselines.compressed_sgd import default_compressor
from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import assign_params, flatten_params, trainable
from suite.algorithms.server import (
    Downlink,
    Server,
    Uplink,
    build_compressor,
    check_link,
    compression_ratio,
    server_totals,
)
from suite.compressors import ErrorFeedback
from suite.config import Component
from suite.registry import ALGORITHMS


@dataclass(frozen=True)
class EFSGDConfig:
    """Knobs of error-feedback SGD with a server.

    compressor: what workers (and the server, on the way back) send (``suite list
        compressors``; knobs under ``algorithm.compressor.*``). Error feedback makes biased
        compressors (scaled sign, Top-K) converge like full precision, at the price of the
        gradient mismatch.
    downlink: "compensated" (the authors' ``-cb -sec``: compressed, with server error
        compensation), "compressed" (no server residual) or "dense".
    uplink: "auto" reduces summable payloads and gathers the rest; "reduce" or "gather" force one
        (a reduce refuses a compressor whose payloads cannot be summed).
    measure_every: steps between measurements of the gradient mismatch and the spread of the
        residuals; each costs an all-reduce of two model-sized vectors, counted as harness
        traffic, not algorithm traffic. Between measurements the last value is reported.
        0 turns it off.
    """

    compressor: Component = field(default_factory=default_compressor)
    downlink: Downlink = "compensated"
    uplink: Uplink = "auto"
    measure_every: int = 1

    def __post_init__(self) -> None:
        check_link(self.uplink, self.downlink, self.compressor)
        if self.measure_every < 0:
            raise ValueError(f"measure_every must be >= 0, got {self.measure_every}")


@ALGORITHMS.register("ef_sgd", config=EFSGDConfig, paper="baseline")
class EFSGD(Algorithm):
    """Local error feedback, two-way compression with server error compensation."""

    def __init__(self, config: EFSGDConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.params = trainable(self.model.parameters())
        sizes = [p.numel() for p in self.params]
        up = build_compressor(config.compressor, sizes, self.rank)
        self.ef = ErrorFeedback(up)
        down = build_compressor(config.compressor, sizes, self.rank)
        self.server = Server(self.transport, up, down, config.downlink, config.uplink)
        self.x = flatten_params(self.params)  # x_t: the same on every rank
        self.dense_bytes = self.x.numel() * self.x.element_size()
        self.measured = dict.fromkeys(
            ("mismatch", "iterate_gap", "error_mean", "server_residual", "error_spread"), 0.0
        )
        self.measured["error_norm"] = 0.0
        self.sums = {
            "mismatch_sum": 0.0,
            "iterate_gap_sum": 0.0,
            "error_spread_sum": 0.0,
            "measurements": 0.0,
        }

    @property
    def error(self) -> Tensor:
        """This worker's residual e_i (live: in-place changes are the algorithm's state)."""
        return self.ef.error("worker", self.x)

    def start_point(self) -> Tensor:
        """Where this step's gradient and optimizer step started: x_t."""
        return self.x

    def mix_parameters(self, step: int) -> None:
        # u = start - x' is the local optimizer's update; EF sends C(u + e_i), which is
        # C((x_t - x') + e_i) here and, from SAEF's start point x_t - e_i, C(x_t - x').
        u = self.start_point() - flatten_params(self.params)
        payload, ctx = self.ef.compress(u, "worker")
        self.x.sub_(self.server.round(payload, ctx, u))
        if step + 1 < self.ctx.total_steps:  # nothing to prepare (or measure) after the last
            self.prepare(step + 1)
            every = self.config.measure_every
            if every and step % every == 0:
                self.measure()  # at the point the next gradient is taken
        assign_params(self.params, self.start_point())

    def prepare(self, step: int) -> None:
        """State changes due before ``step``'s gradient (SAEF: error averaging and reset)."""

    def mismatch(self, target_gap: Tensor) -> float:
        """||start point - x~_t|| given x_t - x~_t = mean_j e_j + s (``target_gap``)."""
        return float(target_gap.norm())

    @torch.no_grad()
    def measure(self) -> None:
        """Gradient mismatch and residual spread, from one harness all-reduce of [e_i, N s].

        Beside the mismatch of this method's start point: ``iterate_gap`` = ||x_t - x~_t|| =
        ||mean_j e_j + s|| (EF's mismatch; for SAEF, the one a gradient at x_t would have had
        in the same state) and its two parts' norms, ``error_mean`` and ``server_residual``."""
        n, e = self.world_size, self.error
        s = self.server.residual(e) * n  # only the server holds s: N s / N on every rank
        both = torch.cat([e, s])
        with self.transport.harness():
            self.transport.all_reduce(both, op="mean")
        mean_e, s = both[: e.numel()], both[e.numel() :]
        self.measured = {
            "mismatch": self.mismatch(mean_e + s),
            "iterate_gap": float((mean_e + s).norm()),
            "error_mean": float(mean_e.norm()),
            "server_residual": float(s.norm()),
            "error_spread": float((e - mean_e).pow(2).sum()),
            "error_norm": float(e.norm()),
        }
        self.sums["mismatch_sum"] += self.measured["mismatch"]
        gap = self.sums.get("iterate_gap_sum", 0.0)  # (absent from older checkpoints)
        self.sums["iterate_gap_sum"] = gap + self.measured["iterate_gap"]
        self.sums["error_spread_sum"] += self.measured["error_spread"]
        self.sums["measurements"] += 1

    def step_metrics(self) -> dict[str, float]:
        compression = self.dense_bytes / max(self.server.payload_bytes, 1)
        return {**self.measured, "compression": compression}

    def totals(self) -> dict[str, float]:
        return {**server_totals(self.server, self.dense_bytes), **self.sums}

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        """compression_ratio, and the run means of the measured mismatch, iterate gap and
        spread (over ranks and measurements)."""
        count = max(totals["measurements"], 1.0)
        return {
            **compression_ratio(totals),
            "mismatch_mean": totals["mismatch_sum"] / count,
            "iterate_gap_mean": totals.get("iterate_gap_sum", math.nan) / count,
            "error_spread_mean": totals["error_spread_sum"] / count,
        }
