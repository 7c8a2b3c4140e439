"""Topologies: pure graph math, buildable without a process group or a GPU.

A topology gives, for a world size N and a step, the mixing matrix W (row i holds the weights
rank i gives to the models it receives: x_i <- sum_j W[i, j] x_j), the in- and out-peers of each
rank, and the spectral gap 1 - |lambda_2(W)| that governs how fast gossip reaches consensus.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from suite.registry import TOPOLOGIES


class Topology(ABC):
    """Base class of every registered topology."""

    static = True  # the same graph at every step; time-varying topologies set False

    def __init__(self, config: Any, world_size: int) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.config = config
        self.world_size = world_size

    @abstractmethod
    def mixing_matrix(self, step: int = 0) -> Tensor:
        """N x N float64 weights at ``step``; rows sum to 1."""

    def in_peers(self, rank: int, step: int = 0) -> list[int]:
        """Ranks whose models ``rank`` mixes in at ``step`` (itself excluded)."""
        row = self.mixing_matrix(step)[rank]
        return [j for j in range(self.world_size) if j != rank and row[j] != 0]

    def out_peers(self, rank: int, step: int = 0) -> list[int]:
        """Ranks that mix in ``rank``'s model at ``step`` (itself excluded)."""
        col = self.mixing_matrix(step)[:, rank]
        return [i for i in range(self.world_size) if i != rank and col[i] != 0]

    def spectral_gap(self, step: int = 0) -> float:
        """1 - (second largest |eigenvalue| of W); 1 for a complete graph, 0 if disconnected."""
        eig = torch.linalg.eigvals(self.mixing_matrix(step)).abs().sort(descending=True).values
        return 1.0 - float(eig[1]) if len(eig) > 1 else 1.0


@dataclass(frozen=True)
class CompleteConfig:
    """No knobs: everyone mixes with everyone, uniformly."""


@TOPOLOGIES.register("complete", config=CompleteConfig)
class Complete(Topology):
    """Complete graph with uniform weights 1/N (gossip on it equals all-reduce averaging)."""

    def mixing_matrix(self, step: int = 0) -> Tensor:
        n = self.world_size
        return torch.full((n, n), 1.0 / n, dtype=torch.float64)


@dataclass(frozen=True)
class RingConfig:
    """No knobs: rank i mixes with i-1 and i+1 (mod N), weight 1/3 each, as EventGraD does."""


@TOPOLOGIES.register("ring", config=RingConfig)
class Ring(Topology):
    """Ring with uniform weights 1/3 on self, left and right (N = 2: the one neighbour is both
    sides and gets 2/3). Spectral gap 1 - max(|1/3 + 2/3 cos(2 pi k / N)|, k = 1..N-1)."""

    def left(self, rank: int) -> int:
        return (rank - 1) % self.world_size

    def right(self, rank: int) -> int:
        return (rank + 1) % self.world_size

    def mixing_matrix(self, step: int = 0) -> Tensor:
        n = self.world_size
        w = torch.zeros((n, n), dtype=torch.float64)
        if n == 1:
            return w + 1.0
        for i in range(n):
            for j in (i, self.left(i), self.right(i)):
                w[i, j] += 1.0 / 3.0
        return w
