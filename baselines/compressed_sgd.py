"""Compressed SGD without error feedback: the gradient is compressed, averaged by a server and
sent back (compressed or not), then every rank takes the same optimizer step.

This is the "compression without EF" baseline of the SAEF paper (Xu, Huo, Huang, AAAI 2021), as
the authors' code runs it (``--method va-Sign`` / ``va-TopK``): workers compress their
gradients, rank 0 averages them and broadcasts the result, and the optimizer (with its momentum)
runs on that common gradient, so the models stay identical. With the identity compressor it is
full-precision SGD through a server (``--method va``), equal to all-reduce SGD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import FlatGrads
from suite.algorithms.server import (
    Downlink,
    Server,
    Uplink,
    build_compressor,
    check_link,
    compression_ratio,
    server_totals,
)
from suite.config import Component, make_component
from suite.registry import ALGORITHMS


def default_compressor() -> Component:
    return make_component("compressor", "scaled_sign")


@dataclass(frozen=True)
class CompressedSGDConfig:
    """Knobs of compressed SGD (no error feedback).

    compressor: what each worker sends (``suite list compressors``; its knobs under
        ``algorithm.compressor.*``). Without error feedback a biased compressor (sign, Top-K)
        loses what it drops for good: expect it to train worse than with EF.
    downlink: what the server sends back: "dense" (the float average), "compressed" (the
        average compressed again; the authors' ``-cb``) or "compensated" (compressed, with the
        server keeping what it dropped for the next round).
    uplink: "auto" reduces summable payloads and gathers the rest; "reduce" insists on a
        reduce and refuses a compressor whose payloads cannot be summed; "gather" always
        gathers.
    """

    compressor: Component = field(default_factory=default_compressor)
    downlink: Downlink = "compressed"
    uplink: Uplink = "auto"

    def __post_init__(self) -> None:
        check_link(self.uplink, self.downlink, self.compressor)


@ALGORITHMS.register("compressed_sgd", config=CompressedSGDConfig, paper="baseline")
class CompressedSGD(Algorithm):
    """Compressed gradients averaged through a server, no error feedback."""

    def __init__(self, config: CompressedSGDConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        self.grads = FlatGrads(self.model.parameters())
        sizes = [p.numel() for p in self.grads.params]
        self.server = Server(
            self.transport,
            build_compressor(config.compressor, sizes, self.rank),
            build_compressor(config.compressor, sizes, self.rank),
            config.downlink,
            config.uplink,
        )
        self.dense_bytes = self.grads.flat.numel() * self.grads.flat.element_size()

    def reduce_gradients(self, step: int) -> None:
        g = self.grads.buffer()
        payload, ctx = self.server.up.compress(g)
        g.copy_(self.server.round(payload, ctx, g))

    def step_metrics(self) -> dict[str, float]:
        return {"compression": self.dense_bytes / max(self.server.payload_bytes, 1)}

    def totals(self) -> dict[str, float]:
        return server_totals(self.server, self.dense_bytes)

    derived = staticmethod(compression_ratio)
