"""Compressors: pure functions from a tensor to the payload that goes on the wire.

``compress(x)`` returns the payload tensors (exactly what a transport op will send, already
packed) and a local context; ``decompress(payload, ctx)`` rebuilds a dense tensor. A compressor
never communicates. Capability flags let an algorithm refuse, at construction, a pairing that
cannot work (summing payloads that are not summable, say):

- ``unbiased``: E[decompress(compress(x))] == x;
- ``summable``: payloads of different ranks may be added element-wise (all-reduced) and the sum
  decompresses to the sum of the inputs;
- ``ragged``: payload sizes may differ between ranks or steps (needs an uneven all-gather).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from suite.registry import COMPRESSORS


class Compressor(ABC):
    """Base class of every registered compressor."""

    unbiased: ClassVar[bool] = False
    summable: ClassVar[bool] = False
    ragged: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        self.config = config

    @abstractmethod
    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        """Payload tensors to send, and the context ``decompress`` needs locally."""

    @abstractmethod
    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        """Dense tensor of the original shape from a payload (one's own or a peer's)."""


@dataclass(frozen=True)
class IdentityConfig:
    """No knobs: sends the tensor as it is."""


@COMPRESSORS.register("identity", config=IdentityConfig)
class Identity(Compressor):
    """No compression: the payload is the tensor itself (lossless, summable)."""

    unbiased = True
    summable = True

    def compress(self, x: Tensor) -> tuple[list[Tensor], Any]:
        return [x], x.shape

    def decompress(self, payload: list[Tensor], ctx: Any) -> Tensor:
        return payload[0].view(ctx)
