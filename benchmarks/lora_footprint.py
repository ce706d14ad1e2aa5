r"""Trainable parameters and train-state bytes, full finetuning against LoRA, side by side with PEFT.

    python -m benchmarks.lora_footprint --model=stories260K --lora_rank=8
    python -m benchmarks.lora_footprint --model=decoder_10m --lora_rank=8 --lora_targets=all-linear

flan_jax's numbers are read from the real `TrainState` that `init_train_state` builds
(stories260K: from the pretrained checkpoint in Hugging Face layout; decoder_10m: the
random model of `benchmarks.train_throughput`), with the trainer's AdamW: the leaves'
bytes by part, `params` (what is trained: the whole model, or the adapters),
`opt_state`, `frozen` (LoRA's base, outside the optimizer) and the rest (step counter,
spike window). Full finetuning's optimizer state is 2x the model (AdamW's two
moments); LoRA's is 2x the adapters, and its base appears once, in `frozen`.

The peer is the same model in transformers, trained in full or wrapped by
`peft.get_peft_model` with the same targets, rank and alpha: its trainable parameters
(requires_grad), parameter bytes, gradient bytes and torch AdamW's state after one
step over the trainable parameters (exp_avg, exp_avg_sq and the step counters).

Gradients are not part of flan_jax's train state (they live inside the compiled step;
`benchmarks/memory_fit` measures them with the step's temporaries). The last line is
`trainable_fraction=X state_bytes_full=N state_bytes_lora=M`.
"""

import argparse
import dataclasses
import datetime
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")


def parse_args(argv=None) -> argparse.Namespace:
  from benchmarks import train_throughput
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="stories260K",
                      choices=sorted({"stories260K", *train_throughput.MODELS}))
  parser.add_argument("--stories_dir", default=STORIES, help="stories260K in Hugging Face layout")
  parser.add_argument("--lora_rank", type=int, default=8)
  parser.add_argument("--lora_alpha", type=float, default=16.0)
  parser.add_argument("--lora_targets", default="q,v",
                      help="comma-separated LoraConfig.target_modules (q,v: PEFT's default)")
  parser.add_argument("--length", type=int, default=256, help="row length the state is made for")
  parser.add_argument("--output", default=None,
                      help="JSON file (default benchmarks/results/lora_footprint_<model>.json); "
                           "'none' writes nothing")
  args = parser.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  if args.lora_rank < 1:
    parser.error(f"--lora_rank must be at least 1, got {args.lora_rank}")
  return args


def base_model(args: argparse.Namespace):
  """(our config without LoRA, base parameters or None for a random initialisation)."""
  from benchmarks import train_throughput
  from flan_jax.models import hf_llama
  if args.model == "stories260K":
    if not os.path.isdir(args.stories_dir):
      raise SystemExit(f"--stories_dir={args.stories_dir} is not a directory; point it at "
                       "stories260K-hf (shared/data/models)")
    return hf_llama.load_hf_checkpoint(args.stories_dir)
  throughput_args = argparse.Namespace(model=args.model, attention="default")
  return train_throughput.decoder_config(throughput_args, "float32"), None


def with_lora(args: argparse.Namespace, config):
  from flan_jax.models.lora import LoraConfig
  targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
  return dataclasses.replace(config, lora=LoraConfig(
      rank=args.lora_rank, alpha=args.lora_alpha, dropout=0.0, target_modules=targets))


def _bytes(tree) -> int:
  import jax
  return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


def _count(tree) -> int:
  import jax
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def flan_state_footprint(config, params, length: int, seed: int = 0) -> dict:
  """Parameter counts and bytes of the train state `init_train_state` builds for `config`."""
  import jax

  from flan_jax.models.families import DecoderOnly
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import optimizer as optimizer_lib
  from flan_jax.training import train_step as step_lib

  model = DecoderOnly(config)
  mesh = mesh_lib.make_mesh(devices=[jax.devices("cpu")[0]])
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(), total_steps=1000)
  state, _ = step_lib.init_train_state(model, optimizer, mesh, {"inputs": 0, "targets": length},
                                       seed, params=params)
  jax.block_until_ready(state)
  parts = {"params": state.params, "opt_state": state.opt_state, "frozen": state.frozen,
           "step_and_spike_window": (state.step, state.spikes)}
  part_bytes = {name: _bytes(tree) for name, tree in parts.items()}
  return {"parameters": _count(state.params) + _count(state.frozen),
          "trainable_parameters": _count(state.params),
          "frozen_parameters": _count(state.frozen),
          "state_bytes": sum(part_bytes.values()), "state_bytes_by_part": part_bytes,
          "checkpointed_bytes": _bytes(state.checkpointed())}


def torch_footprint(config, params, args: argparse.Namespace, lora_config=None) -> dict:
  """The same model in transformers (with PEFT's adapters when `lora_config` is given):
  trainable parameters and the bytes of parameters, gradients and AdamW's state after a step."""
  import tempfile

  import torch
  import transformers

  from benchmarks import train_throughput
  from flan_jax.models import hf_llama

  with tempfile.TemporaryDirectory() as tmp:
    if params is None:  # decoder_10m: the random model flan_jax would make
      import jax

      from flan_jax.models.families import DecoderOnly
      from flan_jax.training import train_step as step_lib
      params = jax.device_get(step_lib.init_params(
          DecoderOnly(config), jax.random.key(0), {"inputs": 0, "targets": args.length}))
    hf_llama.save_hf_checkpoint(params, config, tmp)
    model = transformers.LlamaForCausalLM.from_pretrained(tmp, dtype=torch.float32)
  if lora_config is not None:
    import jax

    from flan_jax.models import lora
    from flan_jax.models.families import DecoderOnly
    from flan_jax.training import train_step as step_lib
    adapters = lora.partition(jax.device_get(step_lib.init_params(
        DecoderOnly(lora_config), jax.random.key(0), {"inputs": 0, "targets": args.length})),
        lora_config)[0]
    model = train_throughput.with_peft_adapters(model, adapters, lora_config)
  model.train()
  trainable = [p for p in model.parameters() if p.requires_grad]
  optimizer = torch.optim.AdamW(trainable, lr=1e-4)
  ids = torch.tensor(np.random.default_rng(0).integers(0, config.vocab_size, (2, 32)))
  model(input_ids=ids, labels=ids).loss.backward()
  grad_bytes = sum(p.grad.nbytes for p in model.parameters() if p.grad is not None)
  optimizer.step()
  state_bytes = sum(t.nbytes for s in optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))
  return {"parameters": sum(p.numel() for p in model.parameters()),
          "trainable_parameters": sum(p.numel() for p in trainable),
          "parameter_bytes": sum(p.nbytes for p in model.parameters()),
          "gradient_bytes": grad_bytes, "optimizer_state_bytes": state_bytes}


def run(args: argparse.Namespace) -> tuple[dict, str]:
  import jax
  import peft
  import torch
  import transformers

  config, params = base_model(args)
  lora_config = with_lora(args, config)
  flan = {"full": flan_state_footprint(config, params, args.length),
          "lora": flan_state_footprint(lora_config, params, args.length)}
  peer = {"full": torch_footprint(config, params, args),
          "lora": torch_footprint(config, params, args, lora_config)}
  fraction = flan["lora"]["trainable_parameters"] / flan["full"]["trainable_parameters"]
  result = {
      "model": args.model, "lora": {"rank": args.lora_rank, "alpha": args.lora_alpha,
                                    "targets": list(lora_config.lora.target_modules)},
      "flan_jax": flan, "transformers_peft": peer,
      "trainable_fraction": round(fraction, 6),
      "date": datetime.date.today().isoformat(),
      "jax": jax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__, "peft": peft.__version__,
      "command": " ".join(["python -m benchmarks.lora_footprint"] + args.argv),
  }
  line = (f"trainable_fraction={fraction:.4f} state_bytes_full={flan['full']['state_bytes']} "
          f"state_bytes_lora={flan['lora']['state_bytes']}")
  return result, line


def main(argv=None) -> None:
  args = parse_args(argv)
  result, line = run(args)
  print(json.dumps(result))
  lora = f"_{args.lora_targets.replace(',', '_')}_r{args.lora_rank}"
  output = args.output or os.path.join(REPO, "benchmarks", "results",
                                       f"lora_footprint_{args.model}{lora}.json")
  if output != "none":
    from flan_jax import paths
    paths.write_atomically(output, json.dumps(result, indent=1) + "\n")
  print(line)


if __name__ == "__main__":
  main()
