"""Mesh, train state and step, optimizers, checkpoints, metric writers (no task knowledge)."""
