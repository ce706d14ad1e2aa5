"""Decoding with a KV cache, metrics, and evaluation of held-out task clusters."""
