r"""DPO step time: flan_jax's preference train step against TRL's DPOTrainer, same model,
same pairs, same settings.

    python -m benchmarks.train_throughput --model=stories260K --objective=dpo --compare=hf
    python -m benchmarks.train_throughput --model=stories260K --objective=dpo --compare=hf \
        --lora_rank=8 --lora_targets=all-linear   # the quickstart's LoRA policy

The model is stories260K (../shared/data/models/stories260K-hf, or --stories_dir), the
policy trained whole and the reference a frozen copy of the same weights, on both
sides. The batch is --batch synthetic pairs (seeded random token ids): a prompt of
--prompt_length tokens and two answers of --answer_length, after BOS. flan_jax lays
each pair out as its rows do (prompt + chosen and prompt + rejected as two segments
of one row, `preference_rows`), scores it with the frozen copy and runs
`make_train_step` with the sigmoid DPO loss (beta 0.1); TRL runs DPOTrainer's own
`compute_loss` (policy and reference forward passes, the same loss) on its collated
layout (chosen rows then rejected rows), then backward. Both clip gradients at 1.0
and take an AdamW step (the update rule and settings of `train_throughput`).

Timing as `train_throughput`: a first (compile) and a warm-up step each, then
--rounds alternating rounds of --steps steps; rates are medians over rounds. The
first losses must agree (the same function of the same weights). The last line is
`ratio_vs_hf=X.XX` (flan_jax's pairs per second over TRL's).

With --lora_rank (targets --lora_targets, alpha --lora_alpha, dropout 0) the policy is
LoRA adapters on the frozen stories260K and the reference that base with the adapters
switched off, as in the quickstart: flan_jax scores the reference inside the step
(`preference_loss(..., reference_family=<the model without adapters>)`), TRL's
DPOTrainer gets the same targets as `peft_config` and no reference model, so it scores
the reference with PEFT's adapters disabled. PEFT's adapters start as ours (exported
with `peft_io.save_peft`), so both start at log 2 and take the same update. Full
finetuning (a frozen copy as the reference) is timed in the same rounds, and the last
line starts with `lora_speedup_vs_full=Z.ZZ` (flan_jax's LoRA pairs per second over
its full finetuning's).
"""

import argparse
import dataclasses
import datetime
import os
import statistics
from typing import Callable

import numpy as np


def _pairs(batch: int, prompt_length: int, answer_length: int, vocab: int, seed: int):
  rng = np.random.default_rng(seed)
  ids = lambda n: rng.integers(3, vocab, size=n).astype(np.int32)
  return [(ids(prompt_length), ids(answer_length), ids(answer_length)) for _ in range(batch)]


@dataclasses.dataclass
class Side:
  """One framework's DPO step on its own copy of the batch."""
  step: Callable  # () -> loss (not waited for)
  sync: Callable  # waits for the queued work
  trainable: int  # parameters the optimizer updates


def _flan(args, pairs, device, lora: bool):
  """(flan_jax's step, the policy's config, its initial adapters or None). With `lora`:
  adapters on the frozen stories260K, the reference the base with them switched off
  inside the step, as the quickstart's run builds it (`preference_finetune`); else the
  whole model, the reference a frozen copy scoring each batch before the step."""
  import jax

  from flan_jax.data import preference_rows
  from flan_jax.models import hf_llama
  from flan_jax.models.families import family_for
  from flan_jax.training import losses
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import optimizer as optimizer_lib
  from flan_jax.training import train_step as step_lib
  from flan_jax.training.preference_losses import PreferenceLoss, preference_loss
  from benchmarks.train_throughput import (BETAS, CLIP_NORM, LEARNING_RATE, WEIGHT_DECAY,
                                           jax_device, lora_config)

  base_config, params = hf_llama.load_hf_checkpoint(args.stories_dir)
  base_network = family_for(base_config, bos_id=1)
  config = lora_config(args, base_config) if lora else base_config
  network = family_for(config, bos_id=1)
  tokenized = [preference_rows.TokenizedPair(p, c, r, i) for i, (p, c, r) in enumerate(pairs)]
  length = tokenized[0].length
  rows = [preference_rows.pair_row([t], length, 1, bos_id=1) for t in tokenized]
  host_batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "preference_pair_index"}
  mesh = mesh_lib.make_mesh(devices=[jax_device(device)])  # one device, as torch uses one
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      learning_rate=LEARNING_RATE, warmup_steps=0, schedule="constant", b1=BETAS[0],
      b2=BETAS[1], weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP_NORM), total_steps=1000)
  lengths = {"inputs": 0, "targets": length}
  # With LoRA: the base frozen in the state, adapters from the seed (A random, B zero).
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, lengths, args.seed,
                                               params=params)
  adapters = jax.device_get(state.params) if lora else None  # the state is donated
  trainable = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state.params))
  loss = preference_loss(PreferenceLoss("sigmoid", beta=args.beta),
                         reference_family=base_network if lora else None)
  step = step_lib.make_train_step(network, optimizer, mesh, shardings, loss)
  holder = {"state": state}
  if lora:  # the reference is inside the step: nothing to add to the batch
    batch = step_lib.global_batch(host_batch, mesh)
    make_batch = lambda: batch
  else:
    reference = jax.device_put(params)
    score = jax.jit(lambda p, b: losses.token_log_probs(base_network, p, b))
    # The frozen reference scores the batch, then the policy's step: both timed.
    make_batch = lambda: step_lib.global_batch(
        dict(host_batch, reference_log_probs=score(reference, host_batch)), mesh)

  def flan_step():
    holder["state"], metrics = step(holder["state"], make_batch())
    return metrics["loss"]

  return Side(flan_step, lambda: jax.block_until_ready(holder["state"]), trainable), config, \
      adapters


def _trl(args, pairs, device, tmp, lora_config=None, adapters=None) -> Side:
  """TRL's DPOTrainer step. With `lora_config` (our policy's config) PEFT adapters of the
  same targets, rank and alpha, set to ours (`adapters`), given to the trainer as
  `peft_config` with no reference model: TRL then scores the reference with the adapters
  disabled. Without, the whole model and a frozen copy as the reference."""
  import datasets
  import torch
  import transformers
  import trl
  from benchmarks import train_throughput as base

  load = lambda: transformers.AutoModelForCausalLM.from_pretrained(
      args.stories_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
  model = load()
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.stories_dir)
  tokenizer.pad_token = tokenizer.eos_token
  # No activation checkpointing, as on our side. (DPOConfig's default True is applied
  # only by Trainer.train, which this does not call, except that with PEFT the
  # trainer's constructor already makes the embeddings' output require gradients for it.)
  config = trl.DPOConfig(output_dir=tmp, report_to=[], use_cpu=device == "cpu", bf16=False,
                         beta=args.beta, loss_type=["sigmoid"], gradient_checkpointing=False)
  placeholder = datasets.Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
  if lora_config is not None:
    # `peft_config`, not a model already wrapped: given a PeftModel and no reference,
    # TRL copies its adapters into a second, frozen "ref" adapter and scores with that.
    trainer = trl.DPOTrainer(model=model, ref_model=None, args=config,
                             train_dataset=placeholder, processing_class=tokenizer,
                             peft_config=base.peft_lora_config(lora_config))
    model = trainer.model
    base.load_our_adapters(model, adapters, lora_config)
  else:
    trainer = trl.DPOTrainer(model=model, ref_model=load(), args=config,
                             train_dataset=placeholder, processing_class=tokenizer)
  rows = [[1, *p, *c] for p, c, _ in pairs] + [[1, *p, *r] for p, _, r in pairs]
  ids = torch.tensor(rows, dtype=torch.long, device=device)
  completion = torch.zeros_like(ids)
  completion[:, 1 + len(pairs[0][0]):] = 1
  inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
  # The optimizer holds the trainable parameters only (with LoRA the adapters, which
  # are decayed on both sides); no decay on norm scales and the embedding, as ours.
  named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
  no_decay = lambda name: name.endswith("norm.weight") or "embed_tokens" in name
  groups = [{"params": [p for n, p in named if not no_decay(n)], "weight_decay": base.WEIGHT_DECAY},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=base.LEARNING_RATE, betas=base.BETAS, eps=1e-8)
  parameters = [p for _, p in named]
  model.train()

  def step():
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, base.CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  return Side(step, sync, sum(p.numel() for p in parameters))


def run(args: argparse.Namespace) -> tuple[dict, str]:
  import tempfile

  import jax
  import torch
  import transformers
  import trl

  from benchmarks import train_throughput as base

  torch.set_num_threads(os.cpu_count())
  device, _ = base.resolve_device(args)
  load_before = os.getloadavg()
  vocab = 512
  pairs = _pairs(args.batch, args.prompt_length, args.answer_length, vocab, args.seed)
  lora = args.lora_rank > 0
  with tempfile.TemporaryDirectory() as tmp:
    flan, config, adapters = _flan(args, pairs, device, lora)
    sides = {"flan_jax": flan,
             "trl": _trl(args, pairs, device, os.path.join(tmp, "trl"),
                         config if lora else None, adapters)}
    if lora:  # full finetuning of the same model, timed in the same rounds
      sides["flan_jax_full"] = _flan(args, pairs, device, lora=False)[0]
      sides["trl_full"] = _trl(args, pairs, device, os.path.join(tmp, "trl_full"))
    first = {name: base._first_step(s.step, s.sync) for name, s in sides.items()}
    # The warm-up step: the loss after one identical AdamW update.
    second = {name: base._first_step(s.step, s.sync)[1] for name, s in sides.items()}
    seconds = {name: [] for name in sides}
    for _ in range(args.rounds):  # alternate: a noisy neighbour hits all alike
      for name, s in sides.items():
        seconds[name].append(base._timed_round(s.step, s.sync, args.steps))
  step_s = {name: statistics.median(times) / args.steps for name, times in seconds.items()}
  ratio = step_s["trl"] / step_s["flan_jax"]
  tokens_per_step = 2 * args.batch * (args.prompt_length + args.answer_length)
  reference = ("the base, adapters switched off (both)" if lora else "frozen copy (both)")
  result = {
      "model": "stories260K", "objective": "dpo", "compare": "trl DPOTrainer",
      "policy": f"LoRA rank {args.lora_rank}" if lora else "whole model",
      "pairs_per_step": args.batch, "prompt_length": args.prompt_length,
      "answer_length": args.answer_length, "tokens_per_step": tokens_per_step,
      "beta": args.beta, "reference": reference, "device": device,
      "step_s": {k: round(v, 4) for k, v in step_s.items()},
      "pairs_per_s": {k: round(args.batch / v, 2) for k, v in step_s.items()},
      "step_s_by_round": {k: [round(s / args.steps, 4) for s in v] for k, v in seconds.items()},
      "ratio_vs_hf": round(ratio, 3),
      "flan_jax_time_to_first_step_s": round(first["flan_jax"][0], 2),
      "trl_first_step_s": round(first["trl"][0], 2),
      "first_loss": {k: v[1] for k, v in first.items()}, "second_loss": second,
      "trainable_parameters": {k: s.trainable for k, s in sides.items()},
      "steps_per_round": args.steps, "rounds": args.rounds,
      "torch_threads": torch.get_num_threads(),
      "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
      "machine": base.machine(), "jax": jax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__, "trl": trl.__version__,
      "date": datetime.date.today().isoformat(),
      "command": " ".join(["python -m benchmarks.train_throughput"] + args.argv),
  }
  # The line prints the figures the JSON keeps (to 3 places), so the two always agree.
  line = f"ratio_vs_hf={round(ratio, 3):.2f}"
  if lora:
    import peft

    # Pairs per second, LoRA's over full finetuning's, each framework against itself.
    speedup = {name: step_s[f"{name}_full"] / step_s[name] for name in ("flan_jax", "trl")}
    result.update(
        lora={"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": 0.0,
              "targets": list(config.lora.target_modules),
              "peft_targets": base._peft_targets(config)},
        full_finetuning_ratio_vs_hf=round(step_s["trl_full"] / step_s["flan_jax_full"], 3),
        lora_speedup_vs_full={name: round(v, 3) for name, v in speedup.items()},
        peft=peft.__version__)
    line = f"lora_speedup_vs_full={round(speedup['flan_jax'], 3):.2f} {line}"
  return result, line
