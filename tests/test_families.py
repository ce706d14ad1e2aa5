"""The model-family protocol: families found by config class, and prefill, step and
reorder_cache against the models' own uncached forward pass."""

import ast
import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import families
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.families import DecoderOnly, EncoderDecoder, family_for
from flan_jax.models.t5 import T5Config

DECODER = DecoderConfig(vocab_size=60, embed_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
                        mlp_dim=24, num_layers=2)
T5 = T5Config(vocab_size=60, embed_dim=16, num_heads=2, head_dim=8, mlp_dim=24,
              num_encoder_layers=1, num_decoder_layers=2)
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "flan_jax"


def _params(network, lengths):
  return nn.meta.unbox(network.init(jax.random.PRNGKey(0), lengths))["params"]


def test_families_are_found_by_config_class_and_name_their_checkpoints():
  assert type(family_for(DECODER)) is DecoderOnly
  assert type(family_for(T5)) is EncoderDecoder
  assert families.config_classes() == {"decoder": DecoderConfig, "t5": T5Config}
  assert (families.family_name(DECODER), families.family_name(T5)) == ("decoder", "t5")
  with pytest.raises(TypeError, match="no model family for str"):
    family_for("decoder")


def test_a_new_family_is_one_registration():
  @dataclasses.dataclass(frozen=True)
  class WideConfig(DecoderConfig):
    pass

  @dataclasses.dataclass(frozen=True)
  class Wide(DecoderOnly):
    name = "wide"

  assert type(family_for(WideConfig())) is DecoderOnly  # a subclass finds its base's family
  families.register_family(WideConfig, Wide)
  try:
    network = family_for(WideConfig(), bos_id=3, num_token_ids=7)
    assert (type(network), network.bos_id, network.num_token_ids) == (Wide, 3, 7)
    assert families.family_name(WideConfig()) == "wide"
  finally:
    del families._FAMILIES[WideConfig]


def test_every_family_has_the_bos_its_decoder_rows_start_from():
  assert family_for(DECODER).bos_id == 0
  assert family_for(DECODER, bos_id=1).bos_id == 1
  # T5's decoder starts from 0 whatever the tokenizer's BOS, as it was pretrained.
  assert family_for(T5, bos_id=1).bos_id == 0


def test_causal_families_read_the_prompt_as_they_read_the_answer():
  # A prefix-LM reads its prompt bidirectionally, T5's encoder does too; a causal
  # decoder (an imported Hugging Face checkpoint) does not. Evaluation asks this to know
  # whether conversations need a causal reader of their own.
  assert not family_for(DECODER).causal  # DecoderConfig's default is a prefix-LM
  causal = family_for(dataclasses.replace(DECODER, prefix_lm=False))
  assert causal.causal and families.conversation_reader(causal) is causal
  assert families.conversation_reader(family_for(DECODER)).causal
  assert not family_for(T5).causal


def _decoder_row(tokens):
  length = tokens.shape[1]
  ones = np.ones_like(tokens)
  return {"decoder_input_tokens": tokens, "decoder_segment_ids": ones,
          "decoder_positions": np.broadcast_to(np.arange(length), tokens.shape),
          "decoder_causal_attention": np.zeros_like(tokens)}


def test_decoder_prefill_and_steps_equal_the_uncached_forward_pass():
  network = family_for(dataclasses.replace(DECODER, prefix_lm=False))
  params = _params(network, {"inputs": 4, "targets": 4})
  tokens = np.array([[5, 9, 3, 7, 11, 2], [4, 4, 8, 1, 6, 13]], np.int32)
  full = network.logits(params, _decoder_row(tokens))
  logits, cache, context = network.prefill(params, tokens[:, :3], np.ones((2, 3), np.int32), 3)
  np.testing.assert_allclose(logits, full[:, 2], rtol=1e-5, atol=1e-5)
  for t in range(3):
    logits, cache = network.step(params, context, jnp.asarray(tokens[:, 3 + t]), t, cache)
    np.testing.assert_allclose(logits, full[:, 3 + t], rtol=1e-5, atol=1e-5)


def test_t5_prefill_reads_the_start_token_and_steps_equal_teacher_forcing():
  network = family_for(T5)
  params = _params(network, {"inputs": 5, "targets": 4})
  prompts = np.array([[5, 9, 3, 7, 1], [0, 0, 8, 6, 1]], np.int32)  # the second left-padded
  mask = (np.arange(5) >= np.array([[0], [2]])).astype(np.int32)
  targets = np.array([[0, 12, 4, 30], [0, 7, 7, 2]], np.int32)  # from the start token 0
  # Teacher forcing over the same encoding: the prompt's real tokens at positions 0, 1, ...
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  encoded = network.encode(params, prompts, mask, positions)
  full, _ = network.decode(params, encoded, mask, targets)
  logits, cache, context = network.prefill(params, prompts, mask, 3)
  np.testing.assert_allclose(logits, full[:, 0], rtol=1e-5, atol=1e-5)
  for t in range(3):
    logits, cache = network.step(params, context, jnp.asarray(targets[:, 1 + t]), t, cache)
    np.testing.assert_allclose(logits, full[:, 1 + t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [DECODER, T5], ids=["decoder", "t5"])
def test_reordered_caches_continue_as_the_reordered_prompts_do(config):
  network = family_for(config)
  params = _params(network, {"inputs": 4, "targets": 4})
  prompts = np.array([[5, 9, 3, 1], [4, 8, 2, 1], [7, 7, 6, 1]], np.int32)
  mask = np.ones_like(prompts)
  rows = jnp.array([2, 0, 0])
  token = jnp.array([10, 11, 12])
  _, cache, context = network.prefill(params, prompts, mask, 2)
  _, moved_cache, moved_context = network.prefill(params, prompts[np.asarray(rows)], mask, 2)
  # Beam search moves only the cache: a prompt's beams share its context. Rows from
  # other prompts, as here, take theirs along.
  ours, _ = network.step(params, jax.tree.map(lambda x: x[rows], context), token, 0,
                         network.reorder_cache(cache, rows))
  theirs, _ = network.step(params, moved_context, token, 0, moved_cache)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("module", ["evaluation/decoding.py", "evaluation/scoring.py"])
def test_decoding_and_scoring_know_the_models_only_through_families(module):
  imported = set()
  for node in ast.walk(ast.parse((PACKAGE / module).read_text())):
    if isinstance(node, ast.ImportFrom) and node.module.startswith("flan_jax.models"):
      imported.add(node.module)
    elif isinstance(node, ast.Import):
      imported.update(a.name for a in node.names if a.name.startswith("flan_jax.models"))
  assert imported <= {"flan_jax.models.families"}, imported
