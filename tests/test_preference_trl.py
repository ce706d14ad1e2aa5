"""Every preference loss equals TRL's on stories260K and 8 real OASST pairs: the loss and
TRL's metrics within 1e-5 (relative for the summed log-probs, which run to hundreds),
the gradients within 1e-4.

The pairs are rendered and tokenized by our pipeline; TRL gets the same token ids as
its own collator lays them out (chosen rows, then rejected rows, right-padded, a
completion mask over the answers), and computes with its own code: DPOTrainer's
`compute_loss` for sigmoid, ipo, hinge and RPO's SFT term, CPOTrainer's
`get_batch_loss_metrics` for SimPO, ORPOTrainer's for ORPO. The policy is
stories260K with seeded noise added to every weight, the reference stories260K
itself, so the log-ratios are not all zero.
"""

import functools
import math
import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.data import chat_examples, preference_pairs, preference_rows, vocabularies
from flan_jax.models import hf_llama
from flan_jax.models.families import family_for
from flan_jax.training import losses
from flan_jax.training.preference_losses import PreferenceLoss, preference_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
OASST = os.path.join(DATA, "instruct", "oasst", "en_100_tree.jsonl")
trl = pytest.importorskip("trl")
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not os.path.isdir(STORIES) or not os.path.isfile(OASST),
                                reason="needs ../shared/data")
PAIRS = 8
PAIRS_PER_ROW = 4


@functools.cache
def _setup():
  """(our tokenized pairs, policy directory, reference directory), built once."""
  import transformers
  vocabulary = vocabularies.sentencepiece_vocabulary(os.path.join(STORIES, "tokenizer.model"))
  template = chat_examples.default_template(vocabulary)
  pairs = preference_pairs.read_pairs(OASST).pairs
  tokenized = [preference_rows.tokenize_pair(template, vocabulary, p, bos_id=1, index=i)
               for i, p in enumerate(pairs[:200])]
  # The 8 shortest whose every row fits stories260K's 512 positions.
  chosen = sorted((t for t in tokenized if 1 + len(t.prompt) + max(len(t.chosen),
                                                                   len(t.rejected)) <= 512),
                  key=lambda t: t.length)[:PAIRS]
  tmp = os.path.join(os.environ.get("PYTEST_TMP", "/tmp"), f"preference_trl_{os.getpid()}")
  policy_dir = os.path.join(tmp, "policy")
  model = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for parameter in model.parameters():
      parameter.add_(0.05 * parameter.std() * torch.randn(parameter.shape, generator=generator))
  model.save_pretrained(policy_dir)
  return chosen, policy_dir, tmp


def _trl_inputs(pairs):
  """TRL's collated batch: chosen rows then rejected rows, [BOS] prompt answer, padded."""
  rows = [[1, *p.prompt, *p.chosen] for p in pairs] + [[1, *p.prompt, *p.rejected] for p in pairs]
  prompts = [1 + len(p.prompt) for p in pairs] * 2
  width = max(map(len, rows))
  ids = torch.zeros((len(rows), width), dtype=torch.long)
  attention = torch.zeros_like(ids)
  completion = torch.zeros_like(ids)
  for i, (row, prompt) in enumerate(zip(rows, prompts)):
    ids[i, :len(row)] = torch.tensor(row)
    attention[i, :len(row)] = 1
    completion[i, prompt:len(row)] = 1
  return ids, attention, completion


def _hf(directory):
  import transformers
  return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)


@functools.cache
def _dpo_trainer(policy_dir, tmp):
  import datasets
  import transformers
  tokenizer = transformers.AutoTokenizer.from_pretrained(STORIES)
  tokenizer.pad_token = tokenizer.eos_token
  args = trl.DPOConfig(output_dir=os.path.join(tmp, "trl"), report_to=[], use_cpu=True,
                       bf16=False)
  placeholder = datasets.Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
  return trl.DPOTrainer(model=_hf(policy_dir), ref_model=_hf(STORIES), args=args,
                        train_dataset=placeholder, processing_class=tokenizer)


def _trl_dpo(pairs, policy_dir, config: PreferenceLoss, tmp):
  """DPOTrainer's `compute_loss` (one trainer, its loss settings set per case, as its
  constructor sets them from DPOConfig)."""
  trainer = _dpo_trainer(policy_dir, tmp)
  trainer.beta = config.beta
  trainer.loss_types, trainer.loss_weights = [config.loss_type], [1.0]
  if config.rpo_alpha:
    trainer.loss_types, trainer.loss_weights = [config.loss_type, "sft"], [1.0, config.rpo_alpha]
  model = trainer.model
  model.zero_grad()
  ids, attention, completion = _trl_inputs(pairs)
  trainer.model.train()
  loss = trainer.compute_loss(trainer.model, {"input_ids": ids, "attention_mask": attention,
                                              "completion_mask": completion})
  loss.backward()
  metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
  return float(loss), metrics, model


def _trl_cpo_or_orpo(pairs, policy_dir, config: PreferenceLoss):
  """CPOTrainer's (simpo) or ORPOTrainer's loss code on the batch, its methods bound to
  a namespace holding just the settings they read."""
  from trl.experimental.cpo import CPOTrainer
  from trl.experimental.orpo import ORPOTrainer
  model = _hf(policy_dir)
  ids, attention, completion = _trl_inputs(pairs)
  labels = ids.masked_fill(completion == 0, -100)
  half = len(pairs)
  batch = {"chosen_input_ids": ids[:half], "chosen_attention_mask": attention[:half],
           "chosen_labels": labels[:half], "rejected_input_ids": ids[half:],
           "rejected_attention_mask": attention[half:], "rejected_labels": labels[half:]}
  cls = CPOTrainer if config.loss_type == "simpo" else ORPOTrainer
  ns = types.SimpleNamespace(
      is_encoder_decoder=False, pad_token_id=0, padding_value=0, aux_loss_enabled=False, beta=config.beta,
      label_smoothing=config.label_smoothing, loss_type=config.loss_type, alpha=0.0,
      cpo_alpha=0.0, simpo_gamma=config.simpo_gamma,
      accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
      concatenated_inputs=cls.concatenated_inputs, get_batch_logps=cls.get_batch_logps)
  for name in ("concatenated_forward", "cpo_loss", "odds_ratio_loss"):
    if hasattr(cls, name):
      setattr(ns, name, types.MethodType(getattr(cls, name), ns))
  loss, metrics = cls.get_batch_loss_metrics(ns, model, batch)
  loss.backward()
  return float(loss), {k: float(v) for k, v in metrics.items()}, model


def _torch_grads_as_ours(model, tmp):
  """The torch gradients in our parameter layout: written as a checkpoint and read by
  the same loader the weights go through."""
  from safetensors.torch import save_file
  directory = os.path.join(tmp, "grads")
  os.makedirs(directory, exist_ok=True)
  save_file({name: p.grad.contiguous() for name, p in model.named_parameters()},
            os.path.join(directory, "model.safetensors"))
  shutil.copy(os.path.join(STORIES, "config.json"), directory)
  return hf_llama.load_hf_checkpoint(directory)[1]


@functools.cache
def _our_forward(policy_dir):
  """(batch with the reference's log-probs, the policy's logits, the jitted pullback from
  logits to parameters): the model's forward and backward compiled once for every loss."""
  pairs = _setup()[0]
  model_config, params = hf_llama.load_hf_checkpoint(policy_dir)
  _, reference_params = hf_llama.load_hf_checkpoint(STORIES)
  network = family_for(model_config, bos_id=1)
  length = max(sum(p.length for p in pairs[i:i + PAIRS_PER_ROW])
               for i in range(0, len(pairs), PAIRS_PER_ROW))
  rows = list(preference_rows.rows(pairs, length, PAIRS_PER_ROW, bos_id=1))
  batch = {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}
  batch["reference_log_probs"] = losses.token_log_probs(network, reference_params, batch)
  logits, pullback = jax.vjp(lambda p: network.logits(p, batch), params)
  return batch, logits, jax.jit(pullback)


class _GivenLogits:
  """A model family whose "parameters" are its logits: the loss differentiated by them."""

  @staticmethod
  def logits(logits, batch, dropout_rng=None):
    return logits


def _ours(policy_dir, config: PreferenceLoss):
  """Our `LossFn` on the policy's logits; its gradient pulled back to the parameters."""
  batch, logits, pullback = _our_forward(policy_dir)
  loss_fn = preference_loss(config)

  def mean_loss(logits):
    loss_sum, weight, sums = loss_fn(_GivenLogits, logits, batch, None)
    return loss_sum / weight, {k: v / weight for k, v in sums.items()}

  (loss, metrics), logit_grads = jax.jit(jax.value_and_grad(mean_loss, has_aux=True))(logits)
  return float(loss), {k: float(v) for k, v in metrics.items()}, pullback(logit_grads)[0]


CONFIGS = [PreferenceLoss("sigmoid", beta=0.1), PreferenceLoss("ipo", beta=0.5),
           PreferenceLoss("hinge", beta=0.1), PreferenceLoss("sigmoid", beta=0.2, rpo_alpha=0.5),
           PreferenceLoss("simpo", beta=2.0, simpo_gamma=0.5),
           PreferenceLoss("orpo", beta=0.1)]
TRL_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.loss_type + ("+rpo" if c.rpo_alpha else ""))
def test_loss_metrics_and_gradients_equal_trl(config):
  pairs, policy_dir, tmp = _setup()
  ours_loss, ours_metrics, ours_grads = _ours(policy_dir, config)
  if config.needs_reference:
    theirs_loss, theirs_metrics, model = _trl_dpo(pairs, policy_dir, config, tmp)
  else:
    theirs_loss, theirs_metrics, model = _trl_cpo_or_orpo(pairs, policy_dir, config)
  assert ours_loss == pytest.approx(theirs_loss, abs=1e-5)
  names = TRL_METRICS + (("nll_loss", "log_odds_ratio", "log_odds_chosen")
                         if config.loss_type == "orpo" else ())
  for name in names:
    # Summed log-probs run to hundreds, where float32 resolves 3e-5: relative there.
    assert ours_metrics[name] == pytest.approx(theirs_metrics[name], abs=1e-5, rel=1e-5), name
  # Not a degenerate batch: the pairs disagree, and the loss moves the weights.
  assert 0 < ours_metrics["rewards/accuracies"] < 1
  theirs_grads = _torch_grads_as_ours(model, tmp)
  flat_ours = jax.tree_util.tree_leaves_with_path(ours_grads)
  flat_theirs = dict(jax.tree_util.tree_leaves_with_path(theirs_grads))
  assert len(flat_ours) == len(flat_theirs)
  for path, value in flat_ours:
    np.testing.assert_allclose(np.asarray(value), np.asarray(flat_theirs[path]), atol=1e-4,
                               err_msg=jax.tree_util.keystr(path))
  assert max(float(jnp.abs(v).max()) for _, v in flat_ours) > 1e-3


def test_the_dpo_benchmark_trains_the_same_step_as_trl(tmp_path):
  """`train_throughput --objective=dpo`: both sides start from the same loss (log 2: the
  policy is the reference) and agree after one identical AdamW step."""
  from benchmarks import dpo_throughput, train_throughput
  args = train_throughput.parse_args([
      "--model=stories260K", "--objective=dpo", "--batch=2", "--prompt_length=8",
      "--answer_length=8", "--steps=1", "--rounds=1", "--device=cpu",
      f"--stories_dir={STORIES}", f"--output={tmp_path / 'r.json'}"])
  result, line = dpo_throughput.run(args)
  assert result["first_loss"]["flan_jax"] == pytest.approx(math.log(2), abs=1e-5)
  assert result["first_loss"]["trl"] == pytest.approx(math.log(2), abs=1e-5)
  assert result["second_loss"]["flan_jax"] == pytest.approx(result["second_loss"]["trl"],
                                                            abs=1e-4)
  assert line == f"ratio_vs_hf={result['ratio_vs_hf']:.2f}"


def test_the_lora_dpo_benchmark_trains_the_same_step_as_trl_with_peft(tmp_path):
  """`--objective=dpo --lora_rank`: our LoRA policy (reference: its base, adapters off)
  and TRL's DPOTrainer given the same PEFT adapters (reference: adapters disabled)
  train the same parameters, start at log 2 and agree after one AdamW step, and full
  finetuning is timed beside them."""
  pytest.importorskip("peft")
  from benchmarks import dpo_throughput, train_throughput
  args = train_throughput.parse_args([
      "--model=stories260K", "--objective=dpo", "--batch=2", "--prompt_length=8",
      "--answer_length=8", "--steps=1", "--rounds=1", "--device=cpu", "--lora_rank=4",
      "--lora_targets=q,v,down", "--lora_alpha=8", f"--stories_dir={STORIES}",
      f"--output={tmp_path / 'r.json'}"])
  result, line = dpo_throughput.run(args)
  # stories260K: 5 layers; q 64 -> 64, v 64 -> 32 (4 kv heads of 8), down 172 -> 64;
  # rank 4 adapters hold 4 * (in + out) values each.
  assert result["trainable_parameters"]["flan_jax"] == 5 * 4 * (128 + 96 + 236)
  assert result["trainable_parameters"]["trl"] == result["trainable_parameters"]["flan_jax"]
  assert result["trainable_parameters"]["flan_jax_full"] == 260032
  for name in ("flan_jax", "trl", "flan_jax_full", "trl_full"):
    assert result["first_loss"][name] == pytest.approx(math.log(2), abs=1e-6)
  assert result["second_loss"]["flan_jax"] == pytest.approx(result["second_loss"]["trl"],
                                                            abs=1e-5)
  # An update moved LoRA's loss: B left zero, so the agreement is not two untouched log 2s.
  assert abs(result["second_loss"]["flan_jax"] - math.log(2)) > 1e-3
  assert result["lora"]["peft_targets"] == ["down_proj", "q_proj", "v_proj"]
  # The line prints the unrounded figures to 2 places; the JSON keeps them to 3.
  printed = dict(field.split("=") for field in line.split())
  assert list(printed) == ["lora_speedup_vs_full", "ratio_vs_hf"]
  assert float(printed["lora_speedup_vs_full"]) == pytest.approx(
      result["lora_speedup_vs_full"]["flan_jax"], abs=0.0051)
  assert float(printed["ratio_vs_hf"]) == pytest.approx(result["ratio_vs_hf"], abs=0.0051)
