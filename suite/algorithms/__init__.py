"""Algorithms the papers propose, registered in suite.registry.ALGORITHMS."""

from suite.algorithms import adaptive_topk, crossover, dybw, eventgrad, saef  # noqa: F401  (registration)
