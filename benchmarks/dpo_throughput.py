r"""DPO step time: flan_jax's preference train step against TRL's DPOTrainer, same model,
same pairs, same settings.

    python -m benchmarks.train_throughput --model=stories260K --objective=dpo --compare=hf

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
"""

import argparse
import datetime
import os
import statistics

import numpy as np


def _pairs(batch: int, prompt_length: int, answer_length: int, vocab: int, seed: int):
  rng = np.random.default_rng(seed)
  ids = lambda n: rng.integers(3, vocab, size=n).astype(np.int32)
  return [(ids(prompt_length), ids(answer_length), ids(answer_length)) for _ in range(batch)]


def _flan(args, pairs, device):
  import jax

  from flan_jax.data import preference_rows
  from flan_jax.models import hf_llama
  from flan_jax.models.families import family_for
  from flan_jax.training import losses
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import optimizer as optimizer_lib
  from flan_jax.training import train_step as step_lib
  from flan_jax.training.preference_losses import PreferenceLoss, preference_loss
  from benchmarks.train_throughput import BETAS, CLIP_NORM, LEARNING_RATE, WEIGHT_DECAY

  config, params = hf_llama.load_hf_checkpoint(args.stories_dir)
  network = family_for(config, bos_id=1)
  tokenized = [preference_rows.TokenizedPair(p, c, r, i) for i, (p, c, r) in enumerate(pairs)]
  length = tokenized[0].length
  rows = [preference_rows.pair_row([t], length, 1, bos_id=1) for t in tokenized]
  host_batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "preference_pair_index"}
  from benchmarks.train_throughput import jax_device
  mesh = mesh_lib.make_mesh(devices=[jax_device(device)])  # one device, as torch uses one
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      learning_rate=LEARNING_RATE, warmup_steps=0, schedule="constant", b1=BETAS[0],
      b2=BETAS[1], weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP_NORM), total_steps=1000)
  lengths = {"inputs": 0, "targets": length}
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, lengths, 0,
                                               params=params)
  reference = jax.device_put(params)
  score = jax.jit(lambda p, b: losses.token_log_probs(network, p, b))
  step = step_lib.make_train_step(network, optimizer, mesh, shardings,
                                  preference_loss(PreferenceLoss("sigmoid", beta=args.beta)))
  holder = {"state": state}

  def flan_step():
    # The frozen reference scores the batch, then the policy's step: both timed.
    batch = dict(host_batch, reference_log_probs=score(reference, host_batch))
    holder["state"], metrics = step(holder["state"], step_lib.global_batch(batch, mesh))
    return metrics["loss"]

  return flan_step, lambda: jax.block_until_ready(holder["state"])


def _trl(args, pairs, device, tmp):
  import datasets
  import torch
  import transformers
  import trl
  from benchmarks.train_throughput import BETAS, CLIP_NORM, LEARNING_RATE, WEIGHT_DECAY

  load = lambda: transformers.AutoModelForCausalLM.from_pretrained(
      args.stories_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
  model, reference = load(), load()
  tokenizer = transformers.AutoTokenizer.from_pretrained(args.stories_dir)
  tokenizer.pad_token = tokenizer.eos_token
  config = trl.DPOConfig(output_dir=tmp, report_to=[], use_cpu=device == "cpu", bf16=False,
                         beta=args.beta, loss_type=["sigmoid"])
  placeholder = datasets.Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
  trainer = trl.DPOTrainer(model=model, ref_model=reference, args=config,
                           train_dataset=placeholder, processing_class=tokenizer)
  rows = [[1, *p, *c] for p, c, _ in pairs] + [[1, *p, *r] for p, _, r in pairs]
  ids = torch.tensor(rows, dtype=torch.long, device=device)
  completion = torch.zeros_like(ids)
  completion[:, 1 + len(pairs[0][0]):] = 1
  inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion}
  no_decay = lambda name: name.endswith("norm.weight") or "embed_tokens" in name
  groups = [{"params": [p for n, p in model.named_parameters() if not no_decay(n)],
             "weight_decay": WEIGHT_DECAY},
            {"params": [p for n, p in model.named_parameters() if no_decay(n)],
             "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS, eps=1e-8)
  parameters = list(model.parameters())
  model.train()

  def step():
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, CLIP_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  return step, sync


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
  with tempfile.TemporaryDirectory() as tmp:
    contestants = {"flan_jax": _flan(args, pairs, device), "trl": _trl(args, pairs, device, tmp)}
    first = {name: base._first_step(step, sync) for name, (step, sync) in contestants.items()}
    second = {name: base._first_step(step, sync)[1] for name, (step, sync) in contestants.items()}
    seconds = {name: [] for name in contestants}
    for _ in range(args.rounds):
      for name, (step, sync) in contestants.items():
        seconds[name].append(base._timed_round(step, sync, args.steps))
  step_s = {name: statistics.median(times) / args.steps for name, times in seconds.items()}
  ratio = step_s["trl"] / step_s["flan_jax"]
  tokens_per_step = 2 * args.batch * (args.prompt_length + args.answer_length)
  result = {
      "model": "stories260K", "objective": "dpo", "compare": "trl DPOTrainer",
      "pairs_per_step": args.batch, "prompt_length": args.prompt_length,
      "answer_length": args.answer_length, "tokens_per_step": tokens_per_step,
      "beta": args.beta, "reference": "frozen copy (both)", "device": device,
      "step_s": {k: round(v, 4) for k, v in step_s.items()},
      "pairs_per_s": {k: round(args.batch / v, 2) for k, v in step_s.items()},
      "step_s_by_round": {k: [round(s / args.steps, 4) for s in v] for k, v in seconds.items()},
      "ratio_vs_hf": round(ratio, 3),
      "flan_jax_time_to_first_step_s": round(first["flan_jax"][0], 2),
      "trl_first_step_s": round(first["trl"][0], 2),
      "first_loss": {k: v[1] for k, v in first.items()}, "second_loss": second,
      "steps_per_round": args.steps, "rounds": args.rounds,
      "torch_threads": torch.get_num_threads(),
      "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
      "machine": base.machine(), "jax": jax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__, "trl": trl.__version__,
      "date": datetime.date.today().isoformat(),
      "command": " ".join(["python -m benchmarks.train_throughput"] + args.argv),
  }
  return result, f"ratio_vs_hf={ratio:.2f}"
