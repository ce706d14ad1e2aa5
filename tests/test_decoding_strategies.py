"""Sampling and beam search: against greedy, against a hand computation, and against
transformers' `generate` on the real pretrained stories260K."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.errors import UserError
from flan_jax.evaluation.decoding import DecodeConfig, filter_logits, make_generate
from flan_jax.evaluation.evaluator import left_pad_prompts
from flan_jax.models.decoder import Decoder
from flan_jax.models.families import family_for
from flan_jax.models.t5 import T5, T5Config, init_cache
from tiny import TINY_DECODER, dummy_inputs, simulated_devices_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
TINY_T5 = T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                   num_encoder_layers=2, num_decoder_layers=2)
EOS = 1
STEPS = 12


@pytest.fixture(scope="module", params=["decoder", "t5"])
def network_and_params(request):
  if request.param == "decoder":
    params = Decoder(TINY_DECODER).init(jax.random.key(1), *dummy_inputs(8))["params"]
    return family_for(TINY_DECODER), params
  zeros = np.zeros((1, 8), np.int32)
  return family_for(TINY_T5), T5(TINY_T5).init(jax.random.key(1), zeros, zeros)["params"]


def _prompts():
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(3, 259, size=n)) for n in (3, 11, 7)]
  padded, mask, _ = left_pad_prompts(prompts, 12)
  return padded, mask


def _generate(network, params, **config):
  return make_generate(network, params, STEPS, EOS, DecodeConfig(**config))(*_prompts())


def test_beam_search_with_one_beam_is_greedy(network_and_params):
  network, params = network_and_params
  greedy = _generate(network, params)
  np.testing.assert_array_equal(_generate(network, params, strategy="beam", num_beams=1), greedy)


def test_sampling_is_reproducible_from_its_seed_and_differs_across_seeds(network_and_params):
  network, params = network_and_params
  first = _generate(network, params, strategy="sample", seed=3)
  np.testing.assert_array_equal(_generate(network, params, strategy="sample", seed=3), first)
  assert not np.array_equal(_generate(network, params, strategy="sample", seed=4), first)
  # A random tiny model's next token is nearly uniform: samples are not the argmax.
  assert not np.array_equal(first, _generate(network, params))


def test_sampling_limited_to_the_top_token_is_greedy(network_and_params):
  network, params = network_and_params
  greedy = _generate(network, params)
  np.testing.assert_array_equal(_generate(network, params, strategy="sample", top_k=1), greedy)
  np.testing.assert_array_equal(_generate(network, params, strategy="sample", top_p=1e-6), greedy)


def test_filters_keep_what_a_hand_computation_keeps():
  # probabilities 0.5, 0.25, 0.15, 0.1 for ids 2, 0, 3, 1
  logits = jnp.log(jnp.array([[0.25, 0.1, 0.5, 0.15]]))
  kept = lambda **kw: np.isfinite(np.asarray(filter_logits(logits, **kw)))[0].tolist()
  assert kept(temperature=1.0, top_k=2, top_p=1.0) == [True, False, True, False]
  # Nucleus 0.7: 0.5 alone is short of 0.7, 0.5 + 0.25 reaches it; 0.15 is not needed.
  assert kept(temperature=1.0, top_k=0, top_p=0.7) == [True, False, True, False]
  assert kept(temperature=1.0, top_k=0, top_p=0.8) == [True, False, True, True]
  assert kept(temperature=1.0, top_k=0, top_p=0.4) == [False, False, True, False]
  halved = np.asarray(filter_logits(logits, temperature=2.0, top_k=0, top_p=1.0))
  np.testing.assert_allclose(halved, np.asarray(logits) / 2, rtol=1e-6)


def test_bad_decoding_settings_are_one_clear_error():
  for bad in (dict(strategy="nucleus"), dict(temperature=0.0), dict(top_p=0.0),
              dict(top_p=1.5), dict(top_k=-1), dict(num_beams=0)):
    with pytest.raises(UserError):
      DecodeConfig(**bad)


def test_t5_keeps_its_cross_attention_keys_and_values_after_the_first_step():
  # After the first step the cache holds each layer's projected encoding: later steps
  # give the same logits even when handed a meaningless encoding.
  model = T5(TINY_T5)
  zeros = np.zeros((1, 8), np.int32)
  params = model.init(jax.random.key(2), zeros, zeros)["params"]
  tokens = np.array([[5, 9, 12, 7, 1]], np.int32)
  segments = np.ones_like(tokens)
  encoded = model.apply({"params": params}, tokens, method=T5.encode)
  decode = lambda enc, token, cache: model.apply(
      {"params": params}, enc, segments, np.array([[token]], np.int32), cache=cache,
      method=T5.decode)
  _, cache = decode(encoded, 0, init_cache(TINY_T5, 1, 4))
  assert cache["layers"][0]["cross"]["k"].shape == (1, 5, 4, 8)
  with_encoding, _ = decode(encoded, 17, cache)
  with_garbage, _ = decode(jnp.full_like(encoded, 123.0), 17, cache)
  np.testing.assert_array_equal(with_encoding, with_garbage)


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
@pytest.mark.parametrize("num_beams,length_penalty", [(4, 1.0), (4, 0.0), (4, 2.0), (3, -1.0), (2, 0.6)])
def test_beam_search_equals_transformers_generate_on_stories260k(num_beams, length_penalty):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  spm = pytest.importorskip("sentencepiece")
  from flan_jax.models import hf_llama
  # "." ends a sentence every ten or so tokens, so as the stop token it makes beams
  # finish at different lengths, and the length penalty decides between them.
  period = 426
  sp = spm.SentencePieceProcessor(model_file=os.path.join(STORIES, "tokenizer.model"))
  prompts = [[1, *sp.encode(text)] for text in
             ("Once upon a time", "The little dog", "Lily and her mom went to the park. They saw",
              "Tom had a red ball", "One day, a bird", "The sun was hot and")]
  width = max(map(len, prompts))
  padded, mask, _ = left_pad_prompts(prompts, width, prefix=())
  model = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model.generate(torch.tensor(padded, dtype=torch.long),
                            attention_mask=torch.tensor(mask, dtype=torch.long),
                            num_beams=num_beams, length_penalty=length_penalty, max_new_tokens=40,
                            do_sample=False, pad_token_id=0, eos_token_id=period)[:, width:].numpy()

  config, params = hf_llama.load_hf_checkpoint(STORIES)
  network = family_for(config, bos_id=1)
  ours = make_generate(network, params, 40, period,
                       DecodeConfig(strategy="beam", num_beams=num_beams,
                                    length_penalty=length_penalty))(padded, mask)
  until_stop = lambda row: row[:row.index(period) + 1] if period in row else row
  lengths = set()
  for their_row, our_row in zip(theirs.tolist(), ours.tolist()):
    assert until_stop(our_row) == until_stop(their_row)
    lengths.add(len(until_stop(their_row)))
  assert min(lengths) < 40  # hypotheses that ended, not just the length limit


SHARDED = """
import sys
sys.path.insert(0, "tests")
import jax, numpy as np
from flan_jax.evaluation.decoding import DecodeConfig, make_generate
from flan_jax.evaluation.evaluator import left_pad_prompts
from flan_jax.evaluation.placement import sharded_rows
from flan_jax.models.families import family_for
from flan_jax.training import mesh as mesh_lib, train_step
from tiny import TINY_DECODER

network = family_for(TINY_DECODER)
mesh = mesh_lib.make_mesh((2, 2, 1))
lengths = {"inputs": 12, "targets": 8}
params = train_step.place_params(network, mesh, lengths, seed=1)  # fsdp-sharded, never whole
rng = np.random.default_rng(0)
prompts, mask, _ = left_pad_prompts([list(rng.integers(3, 259, n)) for n in (3, 11, 7, 5)], 12)
host_params = jax.tree.map(np.asarray, params)
for config in (DecodeConfig(), DecodeConfig(strategy="beam", num_beams=3)):
  alone = make_generate(network, jax.device_put(host_params, jax.devices()[0]), 8, 1, config)
  spread = make_generate(network, params, 8, 1, config,
                         placement=sharded_rows(mesh_lib.batch_sharding(mesh)))
  expected = alone(prompts, mask)
  with mesh_lib.on_mesh(mesh):  # as evaluation runs: the model's sharding constraints on
    np.testing.assert_array_equal(spread(prompts, mask), expected)
print("same")
"""


def test_decoding_with_rows_and_parameters_sharded_over_devices_equals_one_device():
  import subprocess
  import sys
  env = simulated_devices_env(4)
  result = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("same")


@pytest.mark.parametrize("family", ["decoder", "t5"])
def test_beam_search_moves_scanned_caches_with_their_beams_as_unscanned_ones(family):
  # Three beams reorder the cache every step: the scanned layout keeps its layer axis
  # first, and T5's cross-attention memory travels too.
  import dataclasses
  from flan_jax.models.layer_stack import stack_layers
  if family == "decoder":
    params = Decoder(TINY_DECODER).init(jax.random.key(1), *dummy_inputs(8))["params"]
    config = TINY_DECODER
  else:
    zeros = np.zeros((1, 8), np.int32)
    params, config = T5(TINY_T5).init(jax.random.key(1), zeros, zeros)["params"], TINY_T5
  params = flax.linen.meta.unbox(params)
  beam = dict(strategy="beam", num_beams=3, length_penalty=0.7)
  unscanned = _generate(family_for(config), params, **beam)
  scanned = _generate(family_for(dataclasses.replace(config, scan_layers=True)),
                      stack_layers(params), **beam)
  np.testing.assert_array_equal(scanned, unscanned)
  assert not np.array_equal(unscanned, _generate(family_for(config), params))  # not greedy
