"""LARS: layer-wise adaptive rate scaling for large-batch training.

You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks" (2017,
arXiv:1708.03888). Each weight tensor gets its own step size from a trust ratio, the ratio of
its norm to its gradient's norm, so that no layer's update is large relative to its weights
when the global learning rate is scaled up with the batch (the Crossover-SGD paper's ImageNet
recipe: coefficient 0.0025, momentum 0.96, weight decay 5e-5).

We wrote our own because torch ships no LARS optimizer. It is a plain per-parameter loop
(no ``foreach`` kernels): clarity over speed.

Per parameter ``p`` with gradient ``g`` in a param group with ``lars=True``::

    d = g + weight_decay * p
    local_lr = trust_coefficient * ||p|| / (||g|| + weight_decay * ||p|| + eps)
               (1 where ||p|| or ||g|| is 0)
    v = momentum * v + lr * local_lr * d
    p -= v

Groups with ``lars=False`` get neither weight decay nor the trust ratio: plain momentum SGD
(``v = momentum * v + lr * g; p -= v``). :func:`lars_param_groups` puts every parameter with
``ndim <= 1`` (biases, BatchNorm/LayerNorm weights and biases) there, as the paper's recipe
excludes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two param groups for :class:`LARS`: weights (``ndim >= 2``: trust ratio and weight
    decay) and the excluded rest (``ndim <= 1``: biases and norm-layer parameters; plain
    momentum SGD, no weight decay). Parameters without ``requires_grad`` are left out; an empty
    group is dropped."""
    scaled, excluded = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (excluded if param.ndim <= 1 else scaled).append(param)
    groups = [
        {"params": scaled, "lars": True, "weight_decay": weight_decay},
        {"params": excluded, "lars": False, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman, Ginsburg 2017) with heavy-ball momentum; see the module docstring.

    Param-group options: ``lr``, ``momentum``, ``weight_decay``, ``trust_coefficient``, ``eps``
    and ``lars`` (False: plain momentum SGD without weight decay, for biases and norm layers).
    The momentum buffer is ``self.state[p]["momentum_buffer"]``; it holds the step itself
    (learning rates included), as in the paper.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-9,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    wd = group["weight_decay"]
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = (
                        group["trust_coefficient"] * p_norm / (g_norm + wd * p_norm + group["eps"])
                    )
                    local_lr = torch.where(
                        (p_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust)
                    )
                    update = (g + wd * p) * (lr * local_lr)
                else:
                    update = g * lr
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = update.clone()
                else:
                    buf.mul_(momentum).add_(update)
                p.sub_(buf)
        return loss


__all__ = ["LARS", "lars_param_groups"]
