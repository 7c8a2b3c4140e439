"""What an algorithm is to the training loop.

An algorithm is a frozen config dataclass (its knobs: what MLflow logs and Optuna varies) turned
into a runtime object bound to a transport. It plugs into the loop at two hook points, which are
enough for almost every method (epfml/powersgd's ``aggregate``, PyTorch's ModelAverager):

- :meth:`Algorithm.reduce_gradients` after backward, before ``optimizer.step()``;
- :meth:`Algorithm.mix_parameters` after ``optimizer.step()``.

An algorithm that communicates *during* backward (DDP's bucketed all-reduces, overlapping the
backward pass: baselines/ddp.py) instead hands the loop the module to run forward and backward
on (:meth:`Algorithm.train_model`, a wrapper of the model) and the context each micro-batch runs
in (:meth:`Algorithm.accumulate`: DDP's ``no_sync`` on all but the last); its
``reduce_gradients`` is then a no-op.

Event triggers, K controllers or straggler clocks are small policy objects an algorithm holds,
not new hook points.

Checkpoints (:mod:`suite.checkpoint`) save and restore an algorithm's state with
:meth:`Algorithm.state_dict` / :meth:`Algorithm.load_state_dict`. The default captures every
attribute but the context (config, model, optimizer, transport): tensors, numbers, generators,
containers and the small policy objects, restored in place. An algorithm holding something that
cannot be saved (threads, open receives) overrides them, or says it cannot be checkpointed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from suite.transport import Transport

# Attributes every algorithm has that are the loop's, not its own state.
# the attributes every algorithm has from its context: never part of its checkpointed state
CONTEXT_ATTRIBUTES = ("config", "ctx", "transport", "model", "optimizer")
# the context a micro-batch runs in when there is nothing to do (reusable: made once, not per
# micro-batch)
NO_CONTEXT: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


@dataclass(frozen=True)
class Context:
    """What the loop hands an algorithm when it builds it."""

    transport: Transport
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    total_steps: int
    steps_per_epoch: int
    seed: int
    # one sample's shape (the dataset's): for an algorithm that runs the model once when it is
    # built (DDP settles its buckets); () when unknown
    input_shape: tuple[int, ...] = ()


class Algorithm:
    """Base class; both hooks default to doing nothing (which is exactly ``single``)."""

    def __init__(self, config: Any, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.transport = ctx.transport
        self.model = ctx.model
        self.optimizer = ctx.optimizer

    @property
    def rank(self) -> int:
        return self.transport.rank

    @property
    def world_size(self) -> int:
        return self.transport.world_size

    def train_model(self) -> nn.Module:
        """The module the loop runs each micro-batch's forward and backward on: the model
        itself (the default), or a wrapper that communicates during backward (DDP)."""
        return self.model

    def accumulate(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """The context one micro-batch's forward and backward run in; ``last``: the step's last
        micro-batch. Default: nothing (DDP: ``no_sync()`` on all but the last)."""
        return NO_CONTEXT

    def reduce_gradients(self, step: int) -> None:
        """Hook 1: gradients are in ``p.grad``; combine them before the optimizer step."""

    def mix_parameters(self, step: int) -> None:
        """Hook 2: parameters were just updated locally; mix them with other ranks'."""

    def eval_model(self) -> nn.Module:
        """The model this rank would deploy (SGP, say, evaluates a de-biased copy)."""
        return self.model

    def loss_model(self) -> nn.Module | None:
        """The model at the iterate x_t, when the gradient is taken elsewhere (SAEF's step-ahead
        point x_t - e_i): the loop then logs its loss on the step's batch as ``train_loss``
        (like for like with every other method) and the loss at the gradient point as
        ``algo.train_loss_ahead``. None (the default): the model is at x_t."""
        return None

    def elapsed(self) -> float | None:
        """Seconds on the algorithm's own clock so far (a virtual straggler clock, say), or
        None if it keeps none; the loop reads it when the run first reaches its target
        accuracy (``clock_to_target``)."""
        return None

    def step_metrics(self) -> dict[str, float]:
        """Per-step numbers of this rank to log (same keys every step); averaged over ranks."""
        return {}

    def totals(self) -> dict[str, float]:
        """This rank's run totals (events, elements, ...), summed over ranks into the summary."""
        return {}

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        """Numbers computed from the summed ``totals`` (a savings ratio, say)."""
        return {}

    def artifacts(self) -> dict[str, str]:
        """Files (name -> text) rank 0 stores with the run at the end."""
        return {}

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpointable(self) -> bool:
        """Whether a run can stop and continue exactly here (False: no checkpoints are taken;
        say so the same way on every rank)."""
        return True

    def state_dict(self) -> dict[str, Any]:
        """This rank's algorithm state, as :func:`suite.checkpoint.capture` encodes it (what
        ``torch.load(weights_only=True)`` reads back): every attribute but the context."""
        from suite.checkpoint import capture_attrs  # (it knows the algorithms' helpers)

        return capture_attrs(self, CONTEXT_ATTRIBUTES)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into this freshly built algorithm, in place."""
        from suite.checkpoint import restore_attrs

        restore_attrs(self, state, self.ctx.device)
