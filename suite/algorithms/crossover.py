"""Crossover-SGD (Yeo, Bae, Jeong, Kwon, Oh, "Crossover-SGD: A gossip-based communication in
distributed deep learning for alleviating large mini-batch problem and enhancing scalability",
arXiv 2012.15198): segment-wise gossip on load-balanced random topologies, with hierarchical
groups. Spec: ../shared/papers/crossover_sgd.md; the authors' code is
github.com/Yeosangho/crossover-sgd.

N ranks form G groups of S = N / G consecutive ranks (S = 1: not hierarchical); the first rank
of a group is its root. Per round (one optimizer step; large batches come from the loop's
``micro_batches``, the authors' ``local_itr``):

1. S > 1: the gradients are reduced (mean) onto each group root;
2. every rank steps its optimizer; only the roots' result matters, because
3. for each segment of the model, in order, a fresh load-balanced random derangement over groups
   is drawn from an RNG every rank seeds identically (no communication), and each root averages
   that segment with the root of the group it receives from: seg <- (own + received) / 2;
4. S > 1: each root broadcasts its model inside its group (one broadcast of the whole model; the
   authors broadcast per segment, which moves the same bytes in more calls).

Per segment the mixing matrix over groups is (I + P) / 2 with P a permutation: doubly
stochastic, so each round preserves the average of the group models exactly. Different segments
of one model mix with different peers, which is the "crossover".

What that guarantees, and what it does not (reproduce/crossover_sgd/NOTES.md): the drift of the
average is zero on every load-balanced round; the distance to that conserved average shrinks by
(G - 2) / (2 (G - 1)) in expectation per round for any sampler whose off-diagonal marginals are
uniform (load-balanced or not), so load balancing does not mix faster; what it buys is the
busiest rank's load (one model sent per round). Measured rounds log ``algo.consensus`` and
``algo.drift``; the summary adds ``drift_rel_mean``/``drift_rel_max``, ``contraction_mean``
(distance to the conserved average after a round over the spread before it) and
``contraction_moving_mean`` (the same to the new mean).

Ablations (the authors' logs): ``fairness=false`` draws each group's source independently (a
group may feed several others or none, so the average drifts); ``fresh_per_segment=false`` draws
one topology per round for all segments ("no segment"). Presets ``crossover_no_fairness``,
``crossover_no_segment`` and ``crossover_no_both``.

The segmentation works for any model (:func:`model_segments`): "fine" cuts it into the stem,
each residual block and the head; "coarse" into the stem, each stage and the head; "layer"
puts each parameterised module in its own segment and "param" each parameter tensor. A model
without stages (MLP, small CNN) has no blocks: "fine" and "coarse" fall back to "layer".
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from suite.algorithms.base import Algorithm, Context
from suite.algorithms.flat import FlatGrads, assign_params, flatten_params, trainable
from suite.algorithms.gossip import MixingFigures, mixing_figures
from suite.registry import ALGORITHMS
from suite.topologies import hierarchical_groups, load_balanced_derangement, random_sources

Segmentation = Literal["fine", "coarse", "layer", "param", "whole"]
SEGMENTATIONS: tuple[str, ...] = ("fine", "coarse", "layer", "param", "whole")
_CONTAINERS = (nn.Sequential, nn.ModuleList)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _stages(model: nn.Module) -> list[str]:
    """Names of the model's stages: containers whose children are all blocks (composite,
    parameterised modules that are not containers themselves), as ResNet's ``layer1``..."""
    names = []
    for name, module in model.named_modules():
        children = list(module.children())
        if (
            name
            and isinstance(module, _CONTAINERS)
            and children
            and all(
                not isinstance(c, _CONTAINERS)
                and any(True for _ in c.children())
                and _has_params(c)
                for c in children
            )
        ):
            names.append(name)
    return names


def model_segments(model: nn.Module, granularity: str) -> list[list[str]]:
    """The trainable parameters' names cut into segments, in model order."""
    if granularity not in SEGMENTATIONS:
        raise ValueError(
            f"unknown segmentation {granularity!r}; valid choices: {', '.join(SEGMENTATIONS)}"
        )
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if granularity == "whole":
        return [names]
    if granularity == "param":
        return [[n] for n in names]
    stages = _stages(model) if granularity in ("fine", "coarse") else []
    segments: OrderedDict[str, list[str]] = OrderedDict()
    past_stages = False  # params after the first stage that are in none belong to the head
    for name in names:
        stage = next((s for s in stages if name.startswith(s + ".")), None)
        if stage is None and stages:
            k = "head" if past_stages else "stem"
        elif stage is None:
            k = name.rpartition(".")[0]  # no stages: one segment per parameterised module
        elif granularity == "coarse":
            k, past_stages = stage, True
        else:  # fine: the block, the stage's direct child
            k, past_stages = f"{stage}.{name[len(stage) + 1 :].split('.')[0]}", True
        segments.setdefault(k, []).append(name)
    return list(segments.values())


@dataclass(frozen=True)
class CrossoverConfig:
    """Knobs of Crossover-SGD.

    segments: how the model is cut ("fine": stem, each block, head; "coarse": stem, each stage,
        head; "layer"; "param"; "whole": one segment, plain one-peer gossip).
    group_size [S]: ranks per group; 1 = not hierarchical. With S > 1 gradients are averaged
        inside each group, only group roots gossip, and the root broadcasts the result.
    fairness: load-balanced derangement (every group receives from exactly one other and sends
        to exactly one); false = the "no fairness" ablation (independent random sources).
    fresh_per_segment: a fresh topology for every segment; false = the "no segment" ablation
        (one draw per round shared by all segments).
    measure_every: steps between measurements of the round's figures (consensus distance
        (1/N) sum ||x_i - xbar||^2, drift of the average, distance to the conserved average:
        :func:`~suite.algorithms.gossip.mixing_figures`, one all-reduce of the model before and
        after the round on the harness channel, not charged); 0 = never.
    """

    segments: Segmentation = "fine"
    group_size: int = 1
    fairness: bool = True
    fresh_per_segment: bool = True
    measure_every: int = 1

    def __post_init__(self) -> None:
        if self.segments not in SEGMENTATIONS:
            raise ValueError(
                f"unknown segmentation {self.segments!r}; valid choices: {', '.join(SEGMENTATIONS)}"
            )
        if self.group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {self.group_size}")
        if self.measure_every < 0:
            raise ValueError(f"measure_every must be >= 0, got {self.measure_every}")

    def check_world(self, nproc: int) -> None:
        """The groups must tile the ranks."""
        hierarchical_groups(nproc, self.group_size)


@ALGORITHMS.register("crossover_sgd", config=CrossoverConfig, paper="crossover_sgd")
class CrossoverSGD(Algorithm):
    """Segment-wise gossip between group roots on fresh load-balanced derangements."""

    def __init__(self, config: CrossoverConfig, ctx: Context) -> None:
        super().__init__(config, ctx)
        n, size = self.world_size, config.group_size
        groups = hierarchical_groups(n, size)
        self.num_groups = len(groups)
        self.my_group = self.rank // size
        self.root = self.my_group * size
        self.is_root = self.rank == self.root
        # every rank takes part in creating every subgroup, as torch.distributed requires
        self.group = self.transport.subgroups(groups) if size > 1 else None
        self.grads = FlatGrads(self.model.parameters()) if size > 1 else None
        by_name = dict(self.model.named_parameters())
        self.params = trainable(self.model.parameters())
        self.segments = [
            [by_name[name] for name in names]
            for names in model_segments(self.model, config.segments)
        ]
        # the shared topology RNG: seeded from the run seed alone, so every rank draws the same
        self.generator = torch.Generator().manual_seed(ctx.seed * 1_000_003 + 7)
        self._recv: list[Tensor | None] = [None] * len(self.segments)
        self.consensus = math.nan
        self.drift = math.nan
        self.consensus_sum = 0.0
        self.consensus_count = 0
        # sums over measured rounds of drift, conserved distance and consensus, each divided by
        # the spread before the round (see NOTES.md#what-gossip-guarantees)
        self.ratio_sums = [0.0, 0.0, 0.0]
        self.ratio_count = 0
        self.drift_rel_max = 0.0
        self.rounds = 0

    def draw(self) -> list[int]:
        """One topology over groups: ``src[g]`` is the group g receives from."""
        sample = load_balanced_derangement if self.config.fairness else random_sources
        return sample(self.num_groups, self.generator)

    def topologies(self) -> list[list[int]]:
        """This round's topology for each segment (drawn identically on every rank)."""
        if self.config.fresh_per_segment:
            return [self.draw() for _ in self.segments]
        shared = self.draw()
        return [shared] * len(self.segments)

    def reduce_gradients(self, step: int) -> None:
        if self.group is not None and self.grads is not None:
            self.group.reduce(self.grads.buffer(), dst=self.root, op="mean")

    def mix_parameters(self, step: int) -> None:
        self.rounds += 1
        every = self.config.measure_every
        measuring = bool(every) and step % every == 0
        # the model after the optimizer step: the average a round must conserve
        before = flatten_params(self.params) if measuring else None
        if self.num_groups > 1:
            tops = self.topologies()  # every rank draws, so the generators stay in step
            if self.is_root:
                self._gossip(tops)
        flat = None
        if self.group is not None:
            flat = flatten_params(self.params)
            self.group.broadcast(flat, src=self.root)
            assign_params(self.params, flat)
        if before is not None:
            if flat is None:  # with groups, the broadcast model is already flat
                flat = flatten_params(self.params)
            self._measure(mixing_figures(self.transport, before, flat, self.is_root))

    def _measure(self, fig: MixingFigures) -> None:
        """Record one round's figures (measured over the group roots, one model per group)."""
        self.consensus, self.drift = fig.consensus, fig.drift
        self.consensus_sum += fig.consensus
        self.consensus_count += 1
        if fig.spread_before > 0:  # relative figures: per unit of spread before the round
            rel = fig.drift / fig.spread_before
            self.ratio_sums[0] += rel
            self.ratio_sums[1] += fig.conserved / fig.spread_before
            self.ratio_sums[2] += fig.consensus / fig.spread_before
            self.ratio_count += 1
            self.drift_rel_max = max(self.drift_rel_max, rel)

    def _gossip(self, tops: list[list[int]]) -> None:
        """Roots only: post every segment's send and receive (tagged by segment, so one round
        costs one latency), then average each segment with what came in."""
        size, me = self.config.group_size, self.my_group
        works, mine, bufs = [], [], []
        for s, (params, src) in enumerate(zip(self.segments, tops, strict=True)):
            seg = flatten_params(params)
            buf = self._recv[s]
            if buf is None or buf.shape != seg.shape:
                buf = self._recv[s] = torch.empty_like(seg)
            for g, source in enumerate(src):
                if source == me:  # group g receives this segment from us
                    works.append(self.transport.isend(seg, g * size, tag=s))
            works.append(self.transport.irecv(buf, src[me] * size, tag=s))
            mine.append(seg)
            bufs.append(buf)
        for work in works:
            work.wait()
        for params, seg, buf in zip(self.segments, mine, bufs, strict=True):
            assign_params(params, seg.add_(buf).mul_(0.5))

    def step_metrics(self) -> dict[str, float]:
        if not self.config.measure_every:
            return {}
        return {"consensus": self.consensus, "drift": self.drift}

    def totals(self) -> dict[str, float]:
        # every rank measures the same figures: count them once (rank 0)
        first = self.rank == 0
        drift, conserved, moving = self.ratio_sums if first else (0.0, 0.0, 0.0)
        return {
            "consensus_sum": self.consensus_sum if first else 0.0,
            "consensus_count": float(self.consensus_count) if first else 0.0,
            "drift_rel_sum": drift,
            "conserved_rel_sum": conserved,
            "moving_rel_sum": moving,
            "ratio_count": float(self.ratio_count) if first else 0.0,
            "drift_rel_max": self.drift_rel_max if first else 0.0,
            "rounds": float(self.rounds) if first else 0.0,
            "bytes_all_rounds": float(self.transport.stats.bytes_sent),
        }

    @staticmethod
    def derived(totals: dict[str, float]) -> dict[str, float]:
        """Means over the measured rounds: consensus distance; drift of the average, distance to
        the conserved average and to the new mean, each per unit of spread before the round
        (``drift_rel_mean``, ``contraction_mean``, ``contraction_moving_mean``); bytes per
        round (all ranks)."""
        out = {"bytes_per_round": totals["bytes_all_rounds"] / max(totals["rounds"], 1.0)}
        if totals["consensus_count"]:
            out["consensus_mean"] = totals["consensus_sum"] / totals["consensus_count"]
        if totals.get("ratio_count"):
            n = totals["ratio_count"]
            out["drift_rel_mean"] = totals["drift_rel_sum"] / n
            out["contraction_mean"] = totals["conserved_rel_sum"] / n
            out["contraction_moving_mean"] = totals["moving_rel_sum"] / n
        return out


ALGORITHMS.preset(
    "crossover_no_fairness",
    "crossover_sgd",
    description="Crossover-SGD ablation: independent random sources instead of a "
    "load-balanced derangement",
    fairness=False,
)
ALGORITHMS.preset(
    "crossover_no_segment",
    "crossover_sgd",
    description="Crossover-SGD ablation: one topology per round shared by all segments",
    fresh_per_segment=False,
)
ALGORITHMS.preset(
    "crossover_no_both",
    "crossover_sgd",
    description="Crossover-SGD ablation: neither load balancing nor segment-wise topologies",
    fairness=False,
    fresh_per_segment=False,
)
