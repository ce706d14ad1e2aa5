"""Decoding with a KV cache, metrics, evaluation of held-out task clusters, and LLM-as-judge
benchmarks (AlpacaEval, MT-Bench)."""
