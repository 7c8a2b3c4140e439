"""Algorithms the papers propose, registered in suite.registry.ALGORITHMS."""

from suite.algorithms import adaptive_topk, crossover, eventgrad, saef  # noqa: F401  (registration)
