"""Compile time and activation memory of a train step: unrolled vs scanned layers, remat policies.

    python benchmarks/layer_stack.py [--family=decoder|t5] [--layers=16] [--embed_dim=512]

For each (scan_layers, remat_policy) it compiles one forward+backward step of a
model of the given depth on a batch of 8 x 1024 tokens and reports the compile
time and XLA's own accounting of the step's temporary buffers (activations kept for
the backward pass plus scratch), from `compiled.memory_analysis()`. Nothing is run,
so it works on a CPU for sizes that would not fit in its memory.
"""

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.families import DecoderOnly, EncoderDecoder
from flan_jax.models.t5 import T5Config
from flan_jax.training.losses import token_losses


def model_for(family: str, layers: int, embed_dim: int):
  heads = embed_dim // 64
  if family == "t5":
    return EncoderDecoder(T5Config(vocab_size=32128, embed_dim=embed_dim, num_heads=heads,
                                   head_dim=64, mlp_dim=embed_dim * 2, num_encoder_layers=layers,
                                   num_decoder_layers=layers))
  return DecoderOnly(DecoderConfig(vocab_size=32000, num_layers=layers, embed_dim=embed_dim,
                                   num_heads=heads, num_kv_heads=heads, head_dim=64,
                                   mlp_dim=embed_dim * 8 // 3))


def measure(model, lengths, batch_size: int):
  rows = {k: np.zeros((batch_size, v.shape[1]), np.int32)
          for k, v in model.example_batch(lengths).items()}
  rows["decoder_target_tokens"] = np.zeros_like(rows["decoder_input_tokens"])
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), lengths)["params"])
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))

  def loss(p, batch):
    ce, _ = token_losses(model.logits(p, batch), batch["decoder_target_tokens"], 0.0)
    return jnp.mean(ce)

  start = time.perf_counter()
  compiled = jax.jit(jax.grad(loss)).lower(params, rows).compile()
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return seconds, memory.temp_size_in_bytes / 2**30


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--family", default="decoder", choices=["decoder", "t5"])
  parser.add_argument("--layers", type=int, default=16)
  parser.add_argument("--embed_dim", type=int, default=512)
  parser.add_argument("--batch_size", type=int, default=8)
  args = parser.parse_args()
  lengths = {"inputs": 768, "targets": 256}
  base = model_for(args.family, args.layers, args.embed_dim)
  print(f"{args.family}, {args.layers} layers, embed {args.embed_dim}, batch {args.batch_size} x "
        f"{lengths}, {jax.devices()[0].device_kind}")
  print("| scan_layers | remat_policy | compile (s) | temporary memory (GiB) |")
  print("|---|---|---|---|")
  for scan in (False, True):
    for policy in ("none", "dots", "full"):
      config = dataclasses.replace(base.config, scan_layers=scan, remat_policy=policy)
      seconds, gib = measure(dataclasses.replace(base, config=config), lengths, args.batch_size)
      print(f"| {scan} | {policy} | {seconds:.1f} | {gib:.2f} |", flush=True)


if __name__ == "__main__":
  main()
