"""Reproduction recipes, one folder per paper."""
