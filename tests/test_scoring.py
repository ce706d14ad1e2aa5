"""Rank classification scores options by the log-likelihood training would give them."""

import os

import jax
import numpy as np
import pytest

from flan_jax.data import packing
from flan_jax.evaluation.scoring import make_option_scorer
from flan_jax.models.families import family_for
from flan_jax.models.t5 import T5Config
from tiny import TINY_DECODER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
LENGTHS = {"inputs": 12, "targets": 6}


def _examples(vocab: int, seed: int = 0, n: int = 5):
  """n prompts of varied length, each with 2-4 options of varied length."""
  rng = np.random.RandomState(seed)
  examples = []
  for _ in range(n):
    prompt = rng.randint(3, vocab, size=rng.randint(2, LENGTHS["inputs"] + 1))
    examples.append([(prompt, rng.randint(3, vocab, size=rng.randint(1, LENGTHS["targets"] + 1)))
                     for _ in range(rng.randint(2, 5))])
  return examples


def _full_forward(network, params, examples, bos_id=0):
  """The reference: each (prompt, option) alone as a training row, through `network.logits`."""
  scores = []
  for example in examples:
    for prompt, option in example:
      row = packing.row_features(prompt, option, LENGTHS, bos_id=bos_id,
                                 encoder_decoder=network.encoder_decoder)
      batch = {k: v[None] for k, v in row.items()}
      log_probs = jax.nn.log_softmax(np.asarray(network.logits(params, batch))[0], -1)
      targets, weights = row["decoder_target_tokens"], row["decoder_loss_weights"]
      scores.append(float(sum(log_probs[i, t] for i, t in enumerate(targets) if weights[i])))
  return scores


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
def test_option_log_likelihoods_on_stories260k_equal_transformers():
  import torch
  import transformers
  from flan_jax.models import hf_llama

  config, params = hf_llama.load_hf_checkpoint(STORIES)
  network = family_for(config, bos_id=1)  # imported: causal, Llama's <s> = 1
  examples = _examples(config.vocab_size)
  ours = make_option_scorer(network, params, LENGTHS, batch_size=8, bos_id=1)(examples)

  model = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
  for i, example in enumerate(examples):
    for j, (prompt, option) in enumerate(example):
      tokens = torch.tensor([[1, *prompt, *option]])
      with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens).logits[0].double(), -1).numpy()
      start = 1 + len(prompt)  # the option's first token, predicted from the position before
      theirs = sum(log_probs[start + k - 1, t] for k, t in enumerate(option))
      assert ours.log_likelihoods[i][j] == pytest.approx(theirs, abs=1e-4)
      assert ours.token_counts[i][j] == len(option)


def test_batching_many_examples_changes_no_score_for_the_decoder():
  network = family_for(TINY_DECODER)
  params = network.init(jax.random.key(0), LENGTHS)["params"]
  examples = _examples(TINY_DECODER.vocab_size)
  batched = make_option_scorer(network, params, LENGTHS, batch_size=7)(examples)
  np.testing.assert_allclose(sum(batched.log_likelihoods, []),
                             _full_forward(network, params, examples), atol=1e-5)


def test_t5_encodes_each_prompt_once_and_scores_as_the_full_forward_pass_does():
  config = T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                    num_encoder_layers=2, num_decoder_layers=2)
  network = family_for(config)
  params = network.init(jax.random.key(0), LENGTHS)["params"]
  examples = _examples(259, seed=1, n=6)
  # Batches of 5 rows: examples' options stay together, and one with more is split.
  batched = make_option_scorer(network, params, LENGTHS, batch_size=5)(examples)
  np.testing.assert_allclose(sum(batched.log_likelihoods, []),
                             _full_forward(network, params, examples), atol=1e-5)


def test_length_normalisation_ranks_by_the_mean_token_log_likelihood():
  from flan_jax.evaluation.scoring import ScoredOptions
  scored = ScoredOptions([[-3.0, -4.0]], [[1, 4]])
  assert scored.choices() == [0]
  assert scored.choices(length_normalize=True) == [1]
