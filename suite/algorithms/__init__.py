"""Algorithms the papers propose, registered in suite.registry.ALGORITHMS."""
