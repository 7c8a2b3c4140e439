"""Algorithms the papers propose, registered in suite.registry.ALGORITHMS."""

from suite.algorithms import eventgrad, saef  # noqa: F401  (registration)
