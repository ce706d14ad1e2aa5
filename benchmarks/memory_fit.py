r"""Per-device memory of the real train step on an N-device mesh, without allocating the model.

    python -m benchmarks.memory_fit --model=llama3_8b --devices=8 --mesh=1,8,1 \
        --batch=8 --length=2048 --remat=full
    python -m benchmarks.memory_fit --model=llama3_8b --devices=1 --mesh=1,1,1 \
        --batch=8 --length=2048 --remat=full --lora_rank=16 --lora_targets=all-linear

It builds the train state as shapes only (`abstract_train_state`: ShapeDtypeStructs
carrying the training shardings) and a batch of ShapeDtypeStructs split over the
data-like axes, then lowers and compiles `make_train_step`'s step (the real loss,
gradient, optimizer update and donation) on N simulated CPU devices. XLA's buffer
assignment for one device (`compiled.memory_analysis()`) gives:

    peak estimate = arguments + temporaries + outputs - aliased (donated) bytes

Arguments are this device's shards of the parameters, the optimizer state and the
batch; temporaries are the activations kept for the backward pass, the gradients and
scratch. Nothing is run, so an 8B model is measured on a laptop in a few minutes.

With --lora_rank the model gets LoRA adapters (float32) on --lora_targets and its base
is stored in --base_dtype (bfloat16 by default with LoRA): the state's `params` and
AdamW moments are then the adapters', the base is the state's `frozen` part, passed
to the step but neither differentiated nor given optimizer state, so the temporaries
hold adapter gradients only. The state's bytes are reported by part to show it.

A bfloat16 base meets a CPU-only artefact: XLA:CPU has no bf16 matmul, so it converts
each bf16 weight to float32 first, and its loop-invariant code motion hoists that
conversion of the whole stacked [layers, ...] base out of the scanned layer loop: a
float32 copy of the base (4 bytes per parameter, 30 GiB for 8B) among the
temporaries, which a GPU, whose matmuls take bf16, never makes. Runs with a bf16 base
therefore compile with that pass off (`xla_flags` in the result; --hoist=true keeps
it, to see the difference). Full finetuning's float32 weights are not converted, so
its runs are unchanged.

Caveats: the CPU compiler is not the GPU one. Its scheduler does not order work by
memory pressure and it has no cuDNN flash attention, so the XLA attention measured here
materialises [batch, heads, length, length] scores that the GPU setting
(`attention_implementation='cudnn'`) never holds: for attention the estimate is an
upper bound. NCCL buffers, cuDNN workspaces and allocator fragmentation are not
counted, hence the budget below is JAX's default share of the GPU, not all of it.

It imports neither gin nor TensorFlow: the named configs below repeat gin/models/*.gin
(tests/test_memory_fit.py checks that they agree).
"""

import argparse
import datetime
import json
import math
import os
import sys
import time

# The named configs, as in gin/models/<name>.gin. "tiny" is for tests: every sharded
# dimension divides by 8, so nothing falls back to replication.
MODELS = {
    "llama3_8b": dict(vocab_size=128256, num_layers=32, embed_dim=4096, num_heads=32,
                      num_kv_heads=8, head_dim=128, mlp_dim=14336, rope_theta=500000.0,
                      norm_eps=1e-05, tie_embeddings=False, dtype="bfloat16",
                      param_dtype="float32"),
    "llama2_7b": dict(vocab_size=32000, num_layers=32, embed_dim=4096, num_heads=32,
                      num_kv_heads=32, head_dim=128, mlp_dim=11008, rope_theta=10000.0,
                      norm_eps=1e-05, tie_embeddings=False, dtype="bfloat16",
                      param_dtype="float32"),
    "tiny": dict(vocab_size=256, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=128, tie_embeddings=False, dtype="bfloat16",
                 param_dtype="float32"),
}

# What DecoderOnly's training batches hold: the packer (flan_jax/data/packing.py) makes
# every feature int32, loss weights included (the loss casts them to float32).
BATCH_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")

# An "80 GB" A100 / H100 reports 81,559 MiB. JAX preallocates 75% of it by default
# (XLA_PYTHON_CLIENT_MEM_FRACTION), which is what a run gets without tuning; the rest
# stays for cuDNN, NCCL and the CUDA context.
DEVICE_GIB = 81559 / 1024
DEFAULT_MEM_FRACTION = 0.75
GIB = 2**30


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="llama3_8b", choices=sorted(MODELS))
  parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices")
  parser.add_argument("--mesh", default="1,8,1", help="(data, fsdp, tensor), e.g. 1,8,1")
  parser.add_argument("--batch", type=int, default=8, help="global batch (rows per step)")
  parser.add_argument("--length", type=int, default=2048,
                      help="decoder row length (task inputs + targets)")
  parser.add_argument("--remat", default="full",
                      choices=["none", "dots", "dots_with_no_batch_dims", "full"])
  parser.add_argument("--scan", default=True, type=lambda s: s.lower() in ("1", "true", "yes"),
                      help="scan over layers (true/false)")
  parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adafactor"])
  parser.add_argument("--microbatches", type=int, default=1)
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="> 0: LoRA adapters of this rank on a frozen base; 0: full finetuning")
  parser.add_argument("--lora_targets", default="all-linear",
                      help="LoRA's target modules, comma-separated (LoraConfig.target_modules)")
  parser.add_argument("--lora_alpha", type=float, default=32.0, help="LoRA's alpha")
  parser.add_argument("--base_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                      help="dtype the (base) weights are stored in; auto: bfloat16 with LoRA "
                           "(a frozen base needs no float32 master copy), else the model's "
                           "param_dtype (float32)")
  parser.add_argument("--hoist", default=False,
                      type=lambda s: s.lower() in ("1", "true", "yes"),
                      help="with a bf16 base, keep XLA's while-loop invariant code motion "
                           "(true: the CPU's float32 copy of the base is counted)")
  parser.add_argument("--mem_fraction", type=float, default=DEFAULT_MEM_FRACTION,
                      help="share of the 80 GB device the run may use")
  parser.add_argument("--output", default=None,
                      help="JSON file (default benchmarks/results/memory_fit_<model>.json)")
  args = parser.parse_args(argv)
  if args.lora_rank < 0:
    parser.error(f"--lora_rank must be 0 (full finetuning) or more, got {args.lora_rank}")
  return args


def model_config(args: argparse.Namespace):
  """The named config with the run's scan, remat, LoRA and base dtype settings."""
  from flan_jax.models.decoder import DecoderConfig
  from flan_jax.models.lora import LoraConfig

  fields = dict(MODELS[args.model])
  lora = None
  if args.lora_rank:
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    lora = LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha, target_modules=targets)
  fields["param_dtype"] = base_dtype(args)
  # The CPU backend has no cuDNN: attention compiles on the XLA path, the larger one.
  return DecoderConfig(**fields, scan_layers=args.scan, remat_policy=args.remat,
                       attention_implementation="xla", lora=lora)


# XLA:CPU's float32 copy of a bf16 base, hoisted out of the layer loop (module docstring).
NO_HOISTING = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"


def base_dtype(args: argparse.Namespace) -> str:
  if args.base_dtype != "auto":
    return args.base_dtype
  return "bfloat16" if args.lora_rank else MODELS[args.model]["param_dtype"]


def xla_flags(args: argparse.Namespace) -> list[str]:
  """The compiler flags a run needs besides the device count."""
  return [NO_HOISTING] if base_dtype(args) == "bfloat16" and not args.hoist else []


def use_simulated_devices(count: int, extra_flags: tuple[str, ...] = ()) -> None:
  """XLA reads its flags when jax first initialises a backend, so set them before that."""
  if "jax" in sys.modules:
    raise RuntimeError("memory_fit must set XLA_FLAGS before jax is imported; run it as "
                       "`python -m benchmarks.memory_fit`.")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags += [f for f in extra_flags if f not in flags]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])
  os.environ["JAX_PLATFORMS"] = "cpu"  # simulated devices are CPU devices, even on a GPU host


def measure(args: argparse.Namespace) -> dict:
  """Compiles the train step for `args` and returns XLA's per-device memory accounting."""
  import jax
  import jax.numpy as jnp

  from flan_jax.models.families import DecoderOnly
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import optimizer as optimizer_lib
  from flan_jax.training import train_step as step_lib

  if len(jax.devices()) != args.devices:
    raise RuntimeError(f"expected {args.devices} devices, jax has {len(jax.devices())}")
  config = model_config(args)
  model = DecoderOnly(config)
  # Only the decoder row length matters to the model (inputs + targets in one row).
  lengths = {"inputs": args.length // 2, "targets": args.length - args.length // 2}
  mesh = mesh_lib.make_mesh(tuple(int(x) for x in args.mesh.split(",")))
  mesh_lib.check_batch_fits(mesh, args.batch)
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(name=args.optimizer),
                                           total_steps=1000)

  shardings = step_lib.state_shardings(model, optimizer, mesh, lengths)
  state = step_lib.abstract_train_state(model, optimizer, shardings, lengths)
  row = jax.ShapeDtypeStruct((args.batch, args.length), jnp.int32,
                             sharding=mesh_lib.batch_sharding(mesh))
  batch = {key: row for key in BATCH_KEYS}
  step = step_lib.make_train_step(model, optimizer, mesh, shardings,
                                  microbatches=args.microbatches)

  # `step` enters the mesh and the logical axis rules, then calls its jitted function,
  # whose shardings and donation of the state are the ones training uses; lower that.
  jitted = step.jitted
  start = time.perf_counter()
  with mesh_lib.on_mesh(mesh):
    lowered = jitted.lower(state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()

  count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
  parameters = count(state.params) + count(state.frozen)
  # This device's share of the state, from the shardings alone (what the arguments
  # should hold besides the batch).
  shard_bytes = lambda tree: sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                                 for x in jax.tree.leaves(tree))
  state_bytes = shard_bytes(state)
  by_part = {"params": shard_bytes(state.params), "opt_state": shard_bytes(state.opt_state),
             "frozen": shard_bytes(state.frozen),
             "step_and_spike_window": shard_bytes((state.step, state.spikes))}
  batch_bytes = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                    for x in batch.values())
  peak = (memory.argument_size_in_bytes + memory.temp_size_in_bytes
          + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  budget_gib = DEVICE_GIB * args.mem_fraction
  return {
      "model": args.model, "parameters": parameters, "trainable_parameters": count(state.params),
      "lora_rank": args.lora_rank,
      "lora_targets": list(config.lora.target_modules) if config.lora else None,
      "param_dtype": config.param_dtype, "hoisting": NO_HOISTING not in xla_flags(args),
      "devices": args.devices,
      "mesh": dict(mesh.shape), "batch": args.batch, "length": args.length,
      "remat": args.remat, "scan": args.scan, "optimizer": args.optimizer,
      "microbatches": args.microbatches, "attention": config.attention_implementation,
      "argument_bytes": memory.argument_size_in_bytes,
      "output_bytes": memory.output_size_in_bytes,
      "temp_bytes": memory.temp_size_in_bytes,
      "alias_bytes": memory.alias_size_in_bytes,
      "generated_code_bytes": memory.generated_code_size_in_bytes,
      "state_bytes_per_device": state_bytes, "state_bytes_by_part_per_device": by_part,
      "batch_bytes_per_device": batch_bytes,
      "per_device_peak_bytes": peak, "per_device_peak_gib": round(peak / GIB, 2),
      "budget_gib": round(budget_gib, 2), "fits_80gb": peak / GIB <= budget_gib,
      "compile_s": round(compile_s, 1), "backend": jax.default_backend(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__, "date": datetime.date.today().isoformat(),
  }


def _settings(run: dict) -> tuple:
  # Runs recorded before LoRA was measured are full finetuning in float32.
  defaults = {"lora_rank": 0, "lora_targets": None, "param_dtype": "float32",
              "hoisting": True}
  return tuple(str(run.get(k, defaults.get(k))) for k in (
      "devices", "mesh", "batch", "length", "remat", "scan", "optimizer", "microbatches",
      "attention", "lora_rank", "lora_targets", "param_dtype", "hoisting"))


def save(result: dict, path: str) -> None:
  """Adds `result` to the file's runs, replacing a run of the same settings."""
  runs = []
  if os.path.exists(path):
    with open(path) as f:
      runs = json.load(f)["runs"]
  runs = [r for r in runs if _settings(r) != _settings(result)] + [result]
  from flan_jax import paths
  paths.write_atomically(path, json.dumps({"runs": runs}, indent=1) + "\n")


def main(argv=None) -> None:
  args = parse_args(argv)
  use_simulated_devices(args.devices, tuple(xla_flags(args)))
  result = measure(args)
  output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       f"memory_fit_{args.model}.json")
  save(result, output)
  print(json.dumps(result))
  print(f"per_device_peak_gib={result['per_device_peak_gib']:.2f} "
        f"fits_80gb={str(result['fits_80gb']).lower()}")


if __name__ == "__main__":
  main()
