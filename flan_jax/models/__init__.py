"""Flax networks with logical axis names (no data, no training loop)."""
