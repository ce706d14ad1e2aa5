"""flan_jax: multitask instruction finetuning in JAX/Flax on seqio tasks."""

__version__ = "0.1.0"
