"""Parameters and gradients as one contiguous buffer, so one collective moves all of them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    out = [p for p in params if p.requires_grad]
    kinds = {(p.dtype, p.device) for p in out}
    if len(kinds) > 1:
        raise ValueError(
            f"one flat buffer needs one dtype and device, got {sorted(map(str, kinds))}"
        )
    return out


class FlatGrads:
    """Gradients of ``params`` kept as views into one buffer (zero-copy all-reduce, as DDP's
    ``gradient_as_bucket_view``). If anything replaces a ``.grad`` (``zero_grad(set_to_none=
    True)``, say), :meth:`buffer` copies it back in and rebinds, so the buffer is never stale."""

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        self.params = trainable(params)
        first = self.params[0]
        self.flat = torch.zeros(
            sum(p.numel() for p in self.params), dtype=first.dtype, device=first.device
        )
        self.views: list[Tensor] = []
        offset = 0
        for p in self.params:
            self.views.append(self.flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        for p, view in zip(self.params, self.views, strict=True):
            if p.grad is not None:
                view.copy_(p.grad)
            p.grad = view

    def buffer(self) -> Tensor:
        """The flat gradient, current with every ``p.grad``."""
        for p, view in zip(self.params, self.views, strict=True):
            if p.grad is not view:
                if p.grad is None:
                    view.zero_()
                else:
                    view.copy_(p.grad)
                p.grad = view
        return self.flat


def flatten_params(params: list[nn.Parameter]) -> Tensor:
    """A fresh 1-D copy of ``params``."""
    return torch.nn.utils.parameters_to_vector(params).detach()


def assign_params(params: list[nn.Parameter], flat: Tensor) -> None:
    """Copy a flat vector back into ``params`` in place (the optimizer keeps its references).
    Not ``vector_to_parameters``: that rebinds each ``p.data`` to a view of ``flat``, so a
    later in-place step on the parameters would silently write into ``flat``."""
    with torch.no_grad():
        for p, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
            p.copy_(chunk.view_as(p))
