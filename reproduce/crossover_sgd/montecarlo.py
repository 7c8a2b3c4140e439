"""One gossip round, Monte Carlo against the closed forms of NOTES.md#what-gossip-guarantees.

G group models x_g (i.i.d. Gaussian, so exchangeable), one round x'_g = (x_g + x_src[g]) / 2 with
src drawn by a sampler; per trial, each figure over the spread before the round
D = (1/G) sum ||x_g - xbar||^2:

- conserved: (1/G) sum ||x'_g - xbar||^2 / D  (expected (G-2)/(2(G-1)) for every sampler here)
- moving:    (1/G) sum ||x'_g - xbar'||^2 / D (conserved less the drift)
- drift:     ||xbar' - xbar||^2 / D           (0 for a permutation; (G-2)/(4(G-1)^2) for
             independent uniform sources)

Run ``python -m reproduce.crossover_sgd.montecarlo`` for the table quoted in the notes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from suite.topologies import load_balanced_derangement, random_sources

Sampler = Callable[[int, torch.Generator], list[int]]
SAMPLERS: dict[str, Sampler] = {
    "load-balanced (authors')": load_balanced_derangement,
    "independent (no fairness)": random_sources,
}


def closed_form(groups: int) -> dict[str, float]:
    """Expected figures per unit of spread: (conserved, drift of independent sources)."""
    g = groups
    return {"conserved": (g - 2) / (2 * (g - 1)), "drift_independent": (g - 2) / (4 * (g - 1) ** 2)}


def one_round(
    sampler: Sampler, groups: int, trials: int = 4000, dim: int = 64, seed: int = 0
) -> dict[str, float]:
    """Mean of each figure over ``trials`` rounds, each on fresh Gaussian models."""
    gen = torch.Generator().manual_seed(seed)
    sums = {"conserved": 0.0, "moving": 0.0, "drift": 0.0}
    for _ in range(trials):
        x = torch.randn(groups, dim, generator=gen, dtype=torch.float64)
        mean = x.mean(0)
        spread = float((x - mean).square().sum(1).mean())
        src = sampler(groups, gen)
        mixed = (x + x[src]) / 2
        new_mean = mixed.mean(0)
        sums["conserved"] += float((mixed - mean).square().sum(1).mean()) / spread
        sums["moving"] += float((mixed - new_mean).square().sum(1).mean()) / spread
        sums["drift"] += float((new_mean - mean).square().sum()) / spread
    return {k: v / trials for k, v in sums.items()}


def main() -> None:
    for groups in (4, 8):
        expected = closed_form(groups)
        print(f"G = {groups}: closed form conserved {expected['conserved']:.3f}, drift of "
              f"independent sources {expected['drift_independent']:.4f}")  # fmt: skip
        for name, sampler in SAMPLERS.items():
            r = one_round(sampler, groups)
            print(f"  {name:<27} conserved {r['conserved']:.3f}  moving {r['moving']:.3f}  "
                  f"drift {r['drift']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
