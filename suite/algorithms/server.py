"""Server aggregation of compressed payloads: rank 0 is the server and also a worker.

One round, on every rank, for a payload each rank made with the same compressor config:

1. uplink: a ``reduce`` to the server of the payload itself when the compressor is summable
   (identity, random_k with a shared seed), else a ``gather`` of the packed payload bytes (an
   uneven gather for ragged compressors, whose sizes are exchanged first and counted);
2. the server decompresses and averages: cbar = mean_i C^-1(c_i);
3. downlink, one of
   - ``dense``: m = cbar, sent as float32;
   - ``compressed``: m = C(cbar);
   - ``compensated``: server error compensation, s <- s + cbar; m = C(s); s <- s - m;
4. ``broadcast`` of m (packed); every rank returns the same dense m.

A compressor/collective pairing that cannot work (``uplink="reduce"`` with a compressor whose
payloads cannot be summed) raises at construction, before anything is sent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
from torch import Tensor

from suite.compressors import Compressor, ErrorFeedback, pack
from suite.config import Component
from suite.registry import COMPRESSORS
from suite.transport import Transport

Downlink = Literal["dense", "compressed", "compensated"]
Uplink = Literal["auto", "reduce", "gather"]
DOWNLINKS: tuple[str, ...] = ("dense", "compressed", "compensated")
UPLINKS: tuple[str, ...] = ("auto", "reduce", "gather")


def build_compressor(component: Component, sizes: list[int], rank: int = 0) -> Compressor:
    """The compressor a config names, for flat vectors made of segments of ``sizes``.

    Its randomness is this rank's own (QSGD's rounding noise must be independent across
    ranks, or averaging cancels less of it), except for summable compressors, whose draws
    every rank must share (random_k's indices: that is what makes payloads summable)."""
    entry = COMPRESSORS.get(component.name)
    args = component.args if component.args is not None else entry.make_config()
    if rank and not entry.obj.summable and hasattr(args, "seed"):
        args = dataclasses.replace(args, seed=args.seed + 1_000_003 * rank)
    return entry.obj(args, sizes)


def check_link(uplink: str, downlink: str, compressor: Component) -> None:
    """Validate the link knobs of an algorithm config against its compressor, so a pairing
    that cannot work is bad input (exit 2) before any rank starts."""
    if uplink not in UPLINKS:
        raise ValueError(f"uplink {uplink!r}; valid choices: {', '.join(UPLINKS)}")
    if downlink not in DOWNLINKS:
        raise ValueError(f"downlink {downlink!r}; valid choices: {', '.join(DOWNLINKS)}")
    if uplink == "reduce" and not COMPRESSORS.get(compressor.name).obj.summable:
        summable = [e.name for e in COMPRESSORS.entries() if e.obj.summable]
        raise ValueError(
            f"uplink=reduce sums payloads, but compressor {compressor.name!r} is not summable; "
            f"valid choices: uplink=auto or uplink=gather, or a summable compressor "
            f"({', '.join(summable)})"
        )


class Server:
    """Counted uplink, server average and downlink of one compressed vector per round.

    ``up`` compresses what workers send; ``down`` (a separate instance of the same config, so
    shared random state advances identically on every rank) what the server sends back.
    ``bytes_up`` / ``bytes_down`` are this rank's bytes handed to the uplink and downlink ops.
    """

    def __init__(
        self,
        transport: Transport,
        up: Compressor,
        down: Compressor,
        downlink: Downlink = "compressed",
        uplink: Uplink = "auto",
        root: int = 0,
    ) -> None:
        if uplink not in UPLINKS or downlink not in DOWNLINKS:
            raise ValueError(
                f"uplink {uplink!r} / downlink {downlink!r}; valid choices: "
                f"{', '.join(UPLINKS)} / {', '.join(DOWNLINKS)}"
            )
        if uplink == "reduce" and not up.summable:
            raise ValueError(
                f"uplink=reduce sums payloads, but compressor {type(up).__name__} is not "
                "summable; valid choices for it: uplink=gather or uplink=auto"
            )
        self.transport, self.up, self.down, self.root = transport, up, down, root
        self.reduce = up.summable if uplink == "auto" else uplink == "reduce"
        self.downlink = downlink
        self.server_ef = ErrorFeedback(down) if downlink == "compensated" else None
        self.bytes_up = self.bytes_down = 0
        self.payload_bytes = 0  # this rank's last uplink payload (what it hands the uplink)
        self.payload_total = 0  # ... summed over rounds (the root's too, though it sends 0)
        self.rounds = 0

    @property
    def is_root(self) -> bool:
        return self.transport.rank == self.root

    def residual(self, like: Tensor) -> Tensor:
        """The server's error s (zeros off the server or without compensation)."""
        if self.server_ef is None or not self.is_root:
            return torch.zeros_like(like)
        return self.server_ef.error("server", like)

    def round(self, payload: list[Tensor], ctx: Any, like: Tensor) -> Tensor:
        """Aggregate this rank's ``payload`` with everyone's; the dense m every rank applies.
        ``like`` is a tensor of the uncompressed vector's numel, dtype and device."""
        self.payload_bytes = sum(t.numel() * t.element_size() for t in payload)
        self.payload_total += self.payload_bytes
        self.rounds += 1
        sent = self.transport.stats.bytes_sent
        mean = self._uplink(payload, ctx)
        self.bytes_up += self.transport.stats.bytes_sent - sent
        sent = self.transport.stats.bytes_sent
        out = self._downlink(mean, like)
        self.bytes_down += self.transport.stats.bytes_sent - sent
        return out

    def _uplink(self, payload: list[Tensor], ctx: Any) -> Tensor | None:
        t, n = self.transport, self.transport.world_size
        if self.reduce:
            (buf,) = payload
            buf = t.reduce(buf.clone(), dst=self.root, op="sum")
            return self.up.decompress([buf], ctx).div_(n) if self.is_root else None
        buf = pack(payload)
        sizes = None if self.up.ragged else [buf.numel()] * n
        parts = t.gather(buf, dst=self.root, sizes=sizes)
        if parts is None:
            return None
        total = self.up.decompress(self.up.unpack(parts[0], ctx), ctx)
        for part in parts[1:]:
            total.add_(self.up.decompress(self.up.unpack(part, ctx), ctx))
        return total.div_(n)

    def _downlink(self, mean: Tensor | None, like: Tensor) -> Tensor:
        t = self.transport
        if self.downlink == "dense":
            out = mean if mean is not None else torch.empty_like(like)
            return t.broadcast(out, src=self.root)
        if mean is not None:  # the server compresses (with its error compensation)
            if self.server_ef is not None:
                payload, ctx = self.server_ef.compress(mean, "server")
            else:
                payload, ctx = self.down.compress(mean)
            buf = pack(payload)
        else:
            # Only the server compresses; a worker needs the context (and, for a fixed-size
            # compressor, the byte count) that the same call gives, so it compresses zeros:
            # shared random state (random_k's seed) advances exactly as on the server.
            payload, ctx = self.down.compress(torch.zeros_like(like))
            buf = pack(payload)
        if self.down.ragged:  # the size is data-dependent: send it first (counted)
            size = torch.tensor([buf.numel()], dtype=torch.int64, device=like.device)
            t.broadcast(size, src=self.root)
            if not self.is_root:
                buf = torch.empty(int(size), dtype=torch.uint8, device=like.device)
        elif not self.is_root:
            buf = torch.empty_like(buf)
        t.broadcast(buf, src=self.root)
        return self.down.decompress(self.down.unpack(buf, ctx), ctx)


def server_totals(server: Server, dense_bytes: int) -> dict[str, float]:
    """One rank's run totals of a server algorithm (summed over ranks into the summary)."""
    return {
        "bytes_up": float(server.bytes_up),
        "bytes_down": float(server.bytes_down),
        "dense_bytes": float(dense_bytes * server.rounds),
        "payload_bytes": float(server.payload_total),
    }


def compression_ratio(totals: dict[str, float]) -> dict[str, float]:
    """compression_ratio = dense bytes / uplink payload bytes, over all ranks and rounds."""
    return {"compression_ratio": totals["dense_bytes"] / max(totals["payload_bytes"], 1.0)}
