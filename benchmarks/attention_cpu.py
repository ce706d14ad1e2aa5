r"""One layer's causal attention, forward + backward: flan_jax's paths against torch's SDPA.

    python -m benchmarks.attention_cpu                      # 8 x 512, 4 heads of 64
    python -m benchmarks.attention_cpu --length=1024 --heads=8

Times `jax.nn.dot_product_attention`'s XLA path ("xla", every score computed and
softmaxed), `causal_block_attention` ("causal_blocks", what `auto` takes for causal
rows on a CPU: query blocks over the keys up to their end) and `blocked_attention`
("blocked", key blocks with an online softmax) against
`torch.nn.functional.scaled_dot_product_attention(is_causal=True)` on the same
tensors, alternating, medians of --repeats. The gradient is of the sum of squared
outputs, so no backward pass can be simplified away. The jax paths' outputs are
checked against each other first. The last line is `ratio_vs_hf=X.XX mfu=n/a`:
torch's time over `causal_blocks`'s (above 1: flan_jax faster), the path `auto` takes
on a CPU for causal rows of 256 to 1,023 tokens (from 1,024 it takes "blocked").

Imports only jax, numpy, torch and flan_jax.models.
"""

import argparse
import datetime
import json
import os
import statistics
import time

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--output", default=None, help="JSON file (default benchmarks/results/"
                      "attention_cpu_<length>.json); 'none' writes nothing")
  return parser.parse_args(argv)


def _median_ms(run, repeats: int) -> float:
  run()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def jax_paths(q, k, v):
  """name -> jitted (q, k, v) -> (loss, grads) for each flan_jax attention path."""
  import jax
  import jax.numpy as jnp

  from flan_jax.models.attention_mask import make_attention_mask
  from flan_jax.models.blocked_attention import (block_size_for, blocked_attention,
                                                 causal_block_attention, causal_block_size_for)
  B, L, _, D = q.shape
  ones, positions = jnp.ones((B, L), jnp.int32), jnp.broadcast_to(jnp.arange(L), (B, L))
  no_prefix = jnp.zeros((B, L), jnp.int32)
  ids = (ones, positions, no_prefix)
  mask = make_attention_mask(*ids, *ids)
  scale = D ** -0.5
  keys = lambda start, size: tuple(jax.lax.dynamic_slice_in_dim(x, start, size, axis=1)
                                   for x in ids)
  paths = {
      "xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale),
      "causal_blocks": lambda q, k, v: causal_block_attention(
          q, k, v, mask, scale=scale, block_size=causal_block_size_for(L)),
      "blocked": lambda q, k, v: blocked_attention(
          q, k, v, mask_fn=lambda start, size: make_attention_mask(*ids, *keys(start, size)),
          scale=scale, block_size=block_size_for(L)),
  }
  grad = lambda f: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))
  return {name: grad(f) for name, f in paths.items()}, {n: jax.jit(f) for n, f in paths.items()}


def run(args: argparse.Namespace) -> dict:
  import jax
  import torch

  rng = np.random.default_rng(0)
  shape = (args.batch, args.length, args.heads, args.head_dim)
  arrays = [rng.standard_normal(shape, np.float32) for _ in range(3)]
  grads, forwards = jax_paths(*arrays)
  reference = np.asarray(forwards["xla"](*arrays))
  for name, forward in forwards.items():
    np.testing.assert_allclose(np.asarray(forward(*arrays)), reference, rtol=1e-4, atol=1e-4,
                               err_msg=name)
  # torch's layout is [B, H, L, D].
  tensors = [torch.tensor(a.transpose(0, 2, 1, 3).copy(), requires_grad=True) for a in arrays]

  def torch_step():
    out = torch.nn.functional.scaled_dot_product_attention(*tensors, is_causal=True)
    (out ** 2).sum().backward()

  timings = {name: _median_ms(lambda g=g: jax.block_until_ready(g(*arrays)), args.repeats)
             for name, g in grads.items()}
  timings["torch_sdpa"] = _median_ms(torch_step, args.repeats)
  ratio = timings["torch_sdpa"] / timings["causal_blocks"]
  return {
      "shape": {"batch": args.batch, "length": args.length, "heads": args.heads,
                "head_dim": args.head_dim},
      "fwd_bwd_ms": {k: round(v, 1) for k, v in timings.items()},
      "ratio_vs_hf": round(ratio, 3), "torch_threads": torch.get_num_threads(),
      "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
      "date": datetime.date.today().isoformat(),
      "command": "python -m benchmarks.attention_cpu " + " ".join(
          f"--{k}={v}" for k, v in vars(args).items() if k != "output"),
  }


def main(argv=None) -> None:
  args = parse_args(argv)
  result = run(args)
  print(json.dumps(result))
  output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"attention_cpu_{args.length}.json")
  if output != "none":
    with open(output, "w") as f:
      json.dump(result, f, indent=1)
  print(f"ratio_vs_hf={result['ratio_vs_hf']:.2f} mfu=n/a")


if __name__ == "__main__":
  main()
