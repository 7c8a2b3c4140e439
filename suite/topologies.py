"""Topologies: pure graph math, buildable without a process group or a GPU.

A topology gives, for a world size N and a step, the mixing matrix W, the in- and out-peers of
each rank, and the spectral gap 1 - |lambda_2(W)| that governs how fast gossip reaches consensus.
W[i, j] is the weight of j's model in i's new one (x_i <- sum_j W[i, j] x_j); read by columns it
is the share of j's mass that i receives, the push-sum view (Kempe et al. 2003). Averaging
gossip (D-PSGD) needs rows summing to 1, push-sum (SGP) columns summing to 1; every graph here
is doubly stochastic, so either algorithm can run on any of them. Time-varying graphs
(``static = False``) repeat after ``period`` steps.

The directed exponential graphs are those of Stochastic Gradient Push (Assran, Loizou, Ballas,
Rabbat, "Stochastic Gradient Push for Distributed Deep Learning", ICML 2019) and of the SGP
baseline the Crossover-SGD authors ran. The random derangements and hierarchical groups at the
end are the pure, seed-driven parts of Crossover-SGD: every rank seeds one generator identically
and so draws the same topology without communicating.
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
    period = 1  # the graph at step t equals the graph at step t + period

    def __init__(self, config: Any, world_size: int) -> None:
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.config = config
        self.world_size = world_size

    @abstractmethod
    def mixing_matrix(self, step: int = 0) -> Tensor:
        """N x N float64 weights at ``step``: rows sum to 1 for averaging gossip, columns for
        push-sum (W[i, j] is the weight of j's model in i's, the share of j's mass i gets)."""

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


def check_topology(name: str, *, static: bool = False) -> None:
    """ValueError listing the valid choices unless ``name`` is a registered topology (for the
    __post_init__ of algorithm configs, so a bad name is bad input before any rank starts);
    ``static``: one whose graph is the same at every step."""
    valid = [n for n in TOPOLOGIES if not static or TOPOLOGIES.get(n).obj.static]
    if name in TOPOLOGIES and name not in valid:
        raise ValueError(
            f"topology {name!r} changes from step to step, this algorithm needs a static one; "
            f"valid choices: {', '.join(valid)}"
        )
    if name not in valid:
        raise ValueError(f"unknown topology {name!r}; valid choices: {', '.join(valid)}")


def build_topology(name: str, world_size: int) -> Topology:
    """The registered topology ``name`` with its default knobs, for ``world_size`` ranks."""
    entry = TOPOLOGIES.get(name)
    return entry.obj(entry.make_config(), world_size)


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


def _exponent_range(world_size: int, base: int) -> int:
    """floor(log_base(N - 1)) + 1: how many powers base^k fit in 1..N-1 (exact integer maths,
    no float log). 0 when N <= 1."""
    count, power = 0, 1
    while power <= world_size - 1:
        count, power = count + 1, power * base
    return count


def _circulant(world_size: int, shares: dict[int, float]) -> Tensor:
    """W with W[(i + d) % N, i] += share for each offset d: rank i sends that share of its mass
    d hops ahead (offset 0 is what it keeps). Circulant, so doubly stochastic when the shares
    sum to 1."""
    n = world_size
    w = torch.zeros((n, n), dtype=torch.float64)
    for i in range(n):
        for offset, share in shares.items():
            w[(i + offset) % n, i] += share
    return w


@dataclass(frozen=True)
class ExponentialConfig:
    """No knobs: rank i sends to i + 2^k (mod N) for k = 0..floor(log2(N-1)), as SGP's static
    directed exponential graph (Assran et al. 2019)."""


@TOPOLOGIES.register("exponential", config=ExponentialConfig)
class Exponential(Topology):
    """Static directed exponential graph: i sends to i + 2^k (mod N), uniform weights.

    Rank i keeps 1/(d+1) and sends 1/(d+1) to each of its d = floor(log2(N-1)) + 1 out-peers
    (the offsets 2^k < N are distinct and nonzero). The offsets are the same for every rank, so
    the graph is circulant: in-degree equals out-degree and W is doubly stochastic for every N,
    not only for powers of 2 (push-sum weights stay 1 up to rounding)."""

    def offsets(self) -> list[int]:
        return [2**k for k in range(_exponent_range(self.world_size, 2))]

    def mixing_matrix(self, step: int = 0) -> Tensor:
        offsets = self.offsets()
        share = 1.0 / (len(offsets) + 1)
        return _circulant(self.world_size, {0: share, **dict.fromkeys(offsets, share)})


@dataclass(frozen=True)
class ExponentialOnePeerConfig:
    """No knobs: at step t rank i sends half its mass to i + 2^(t mod K) (mod N), K =
    floor(log2(N-1)) + 1: SGP's published time-varying graph (Assran et al. 2019)."""


@TOPOLOGIES.register("exponential_one_peer", config=ExponentialOnePeerConfig)
class ExponentialOnePeer(Topology):
    """Time-varying one-peer exponential graph: W_t = (I + P_t)/2, P_t a shift by 2^(t mod K).

    One message per rank per step; doubly stochastic (a shift is a permutation). Each single
    W_t mixes slowly, the product over a period of K steps mixes like the static exponential
    graph (exactly averages when N is a power of 2)."""

    static = False

    def __init__(self, config: Any, world_size: int) -> None:
        super().__init__(config, world_size)
        self.period = max(1, _exponent_range(world_size, 2))

    def distance(self, step: int) -> int:
        """Hops to this step's out-peer (0 for N = 1: nobody to talk to)."""
        return 2 ** (step % self.period) if self.world_size > 1 else 0

    def mixing_matrix(self, step: int = 0) -> Tensor:
        # += so N = 1 (distance 0: the rank itself) keeps all its mass
        return _circulant(self.world_size, {0: 0.5}) + _circulant(
            self.world_size, {self.distance(step): 0.5}
        )


@dataclass(frozen=True)
class ExponentialOnePeerPMConfig:
    """No knobs: at step t rank i sends half its mass to i + o_t (mod N), the offsets cycling
    +1, -1, +2, -2, +4, -4, ... (2K steps, K = floor(log2(N-1)) + 1): the graph SGP's published
    job scripts use (``--graph_type 0``, DynamicDirectedExponentialGraph with one peer per
    iteration, facebookresearch/stochastic_gradient_push, gossip/graph_manager.py)."""


@TOPOLOGIES.register("exponential_one_peer_pm", config=ExponentialOnePeerPMConfig)
class ExponentialOnePeerPM(Topology):
    """SGP's graph_type 0: W_t = (I + P_t)/2, P_t a shift by o_t = +2^k, -2^k, k = floor(t/2)
    mod K (forward at even steps, backward at odd ones).

    SGP's phone book for rank r lists r + 2^k and r - 2^k for k = 0..K-1 in that order
    (duplicates kept: its ``peer not in phone_book`` test compares an int with Edge objects, so
    it never dedups, and at N = 4 the offsets +2 and -2 both reach r + 2) and the gossiper
    starts at index 0 and rotates by one after every mix. K is computed with exact integer
    maths here (SGP's float ``log(N - 1, 2)`` agrees for every N it was run at). Circulant, so
    doubly stochastic."""

    static = False

    def __init__(self, config: Any, world_size: int) -> None:
        super().__init__(config, world_size)
        self.period = max(1, 2 * _exponent_range(world_size, 2))

    def offset(self, step: int) -> int:
        """This step's signed hop count (0 for N = 1: nobody to talk to)."""
        if self.world_size == 1:
            return 0
        index = step % self.period
        hop = 2 ** (index // 2)
        return hop if index % 2 == 0 else -hop

    def mixing_matrix(self, step: int = 0) -> Tensor:
        # += so N = 1 (offset 0: the rank itself) keeps all its mass
        return _circulant(self.world_size, {0: 0.5}) + _circulant(
            self.world_size, {self.offset(step) % self.world_size: 0.5}
        )


@dataclass(frozen=True)
class Exponential3TwoPeerConfig:
    """No knobs: at step t, e = t mod (floor(log3(N-1)) + 1), rank i sends a third of its mass
    to i + 3^e and i + 2 * 3^e (mod N): the synchronous SGP the Crossover-SGD authors ran."""


@TOPOLOGIES.register("exponential3_two_peer", config=Exponential3TwoPeerConfig)
class Exponential3TwoPeer(Topology):
    """Time-varying base-3 exponential graph, two peers per step, weights 1/3 each.

    Rank i receives from i - 3^e and i - 2 * 3^e (mod N) and sets x <- (x + x_1 + x_2)/3.
    Since 3^e <= N - 1 the two distances never coincide mod N, but 2 * 3^e is N itself when
    N = 2 * 3^e (N = 2, 6, 18, ...): that "peer" is the rank itself, and, as the formula says,
    its own model counts twice (self 2/3, the one real peer 1/3; the ring does the same at
    N = 2). N = 3 uses distances 1 and 2: the complete graph. Circulant: doubly stochastic."""

    static = False

    def __init__(self, config: Any, world_size: int) -> None:
        super().__init__(config, world_size)
        self.period = max(1, _exponent_range(world_size, 3))

    def distances(self, step: int) -> tuple[int, int]:
        """The two hop counts at ``step`` (mod N, so one may be 0: the rank itself)."""
        if self.world_size == 1:
            return 0, 0
        hop = 3 ** (step % self.period)
        return hop % self.world_size, 2 * hop % self.world_size

    def mixing_matrix(self, step: int = 0) -> Tensor:
        n = self.world_size
        w = torch.zeros((n, n), dtype=torch.float64)
        for offset in (0, *self.distances(step)):
            w += _circulant(n, {offset: 1.0 / 3.0})  # += so a repeated offset counts twice
        return w


# -- Crossover-SGD: seed-driven random topologies (pure functions, no registry entries) --------


def load_balanced_derangement(groups: int, generator: torch.Generator) -> list[int]:
    """The Crossover-SGD authors' load-balanced random topology: ``src[g]`` is the group g
    receives from. For each group in turn, pick a source uniformly among the groups that are
    neither itself nor already picked; the second-to-last group is forced to pick the last one
    if nobody has yet, so the last is never left with only itself. The result is always a
    derangement (a permutation without fixed points): every group receives from exactly one
    other group and sends to exactly one. Not uniform over derangements, as in the authors'
    code. Draws use only ``generator``, so identically seeded ranks agree without talking."""
    if groups < 2:
        raise ValueError(f"a derangement needs groups >= 2, got {groups}")
    free = list(range(groups))  # groups not yet chosen as a source
    src: list[int] = []
    for g in range(groups):
        last = groups - 1
        if g == groups - 2 and last in free:
            choice = last  # forced: otherwise the last group could only pick itself
        else:
            candidates = [h for h in free if h != g]
            pick = int(torch.randint(len(candidates), (1,), generator=generator))
            choice = candidates[pick]
        free.remove(choice)
        src.append(choice)
    return src


def random_sources(groups: int, generator: torch.Generator) -> list[int]:
    """The "no fairness" ablation: each group independently picks a source uniformly among the
    other groups, so a group may feed several others, or none. Uses only ``generator``."""
    if groups < 2:
        raise ValueError(f"random sources need groups >= 2, got {groups}")
    draws = torch.randint(groups - 1, (groups,), generator=generator).tolist()
    return [r if r < g else r + 1 for g, r in enumerate(draws)]  # skip g itself


def derangement_mixing_matrix(src: list[int]) -> Tensor:
    """(I + P)/2 for ``src`` (group g averages with src[g]): each group keeps half its mass and
    sends half to the group(s) that picked it. Doubly stochastic when src is a permutation."""
    n = len(src)
    w = 0.5 * torch.eye(n, dtype=torch.float64)
    for g, s in enumerate(src):
        w[g, s] += 0.5
    return w


def hierarchical_groups(world_size: int, group_size: int) -> list[list[int]]:
    """Consecutive ranks in groups of ``group_size`` (Crossover-SGD's hierarchy, S = N/G); the
    first rank of each group is its root."""
    if group_size < 1 or world_size % group_size:
        valid = [s for s in range(1, world_size + 1) if world_size % s == 0]
        raise ValueError(
            f"group_size {group_size} does not divide world_size {world_size}; "
            f"valid sizes: {', '.join(map(str, valid))}"
        )
    return [list(range(r, r + group_size)) for r in range(0, world_size, group_size)]
