"""Hugging Face Llama-family checkpoints load into our decoder and back, logit for logit.

transformers (with torch) is the reference: a checkpoint it writes must give our
decoder the same logits, a checkpoint we write must give transformers ours, and on
the real pretrained stories260K both greedy-decode the same story.
"""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import jax  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from flan_jax.errors import UserError  # noqa: E402
from flan_jax.evaluation.decoding import make_greedy_generate  # noqa: E402
from flan_jax.models import hf_llama  # noqa: E402
from flan_jax.models.decoder import Decoder, DecoderConfig  # noqa: E402
from tiny import dummy_inputs  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, rms_norm_eps=1e-5)
ARCHITECTURES = {
    "llama_tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                   dict(tie_word_embeddings=True)),
    "llama_untied": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     dict(tie_word_embeddings=False, rope_theta=500_000.0)),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(tie_word_embeddings=False, sliding_window=None)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(tie_word_embeddings=True)),
    # A short original context, so with head_dim 8 the four frequencies fall in all
    # three llama3 regimes: kept, blended and divided by the factor.
    "llama3_scaled": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                      dict(tie_word_embeddings=True, rope_parameters={
                          "rope_type": "llama3", "rope_theta": 10_000.0, "factor": 8.0,
                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64})),
    "linear_scaled": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                      dict(tie_word_embeddings=False, rope_parameters={
                          "rope_type": "linear", "rope_theta": 10_000.0, "factor": 4.0})),
}


def make_hf_model(kind: str, seed: int = 0):
  config_cls, model_cls, extra = ARCHITECTURES[kind]
  torch.manual_seed(seed)
  model = model_cls(config_cls(**TINY, **extra)).float().eval()
  with torch.no_grad():
    # Norm scales start at 1 and biases at 0: randomise them so a mix-up shows.
    for param in model.parameters():
      param.normal_(0.0, 0.2)
  return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def our_logits(config: DecoderConfig, params, tokens: np.ndarray) -> np.ndarray:
  """A plain causal LM: one segment, positions 0.., no prefix."""
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  ones = np.ones_like(tokens)
  logits, _ = Decoder(config).apply({"params": params}, tokens, positions, ones, 0 * ones)
  return np.asarray(logits)


def random_tokens(vocab: int, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).randint(0, vocab, size=(2, 12))


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_a_transformers_checkpoint_gives_our_decoder_the_same_logits(kind, tmp_path):
  model = make_hf_model(kind)
  model.save_pretrained(tmp_path)
  config, params = hf_llama.load_hf_checkpoint(str(tmp_path))
  assert config.tie_embeddings == ARCHITECTURES[kind][2]["tie_word_embeddings"]
  assert config.attention_bias == (kind == "qwen2")
  assert params["embedding"].shape == (128, 32)  # vocab padded to a multiple of 128
  assert config.rope_scaling == {"llama3_scaled": "llama3",
                                 "linear_scaled": "linear"}.get(kind, "none")
  tokens = random_tokens(100)
  np.testing.assert_allclose(our_logits(config, params, tokens), hf_logits(model, tokens),
                             atol=1e-4, rtol=0)


LLAMA3_ROPE = dict(rope_scaling="llama3", rope_scaling_factor=8.0, rope_original_max_position=64)


@pytest.mark.parametrize("tie,bias,shard,rope", [(True, False, None, {}), (False, False, 6_000, {}),
                                                 (True, True, 6_000, {}),
                                                 (True, False, None, LLAMA3_ROPE)])
def test_our_export_gives_transformers_the_same_logits(tie, bias, shard, rope, tmp_path):
  config = DecoderConfig(vocab_size=100, num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2,
                         head_dim=8, mlp_dim=64, norm_eps=1e-5, tie_embeddings=tie,
                         attention_bias=bias, prefix_lm=False, **rope)
  params = Decoder(config).init(jax.random.PRNGKey(0), *dummy_inputs(4))["params"]
  params = jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x, params,
                        is_leaf=lambda x: hasattr(x, "unbox"))
  # Perturb every leaf, padded vocab rows included: export must cut those off.
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree.unflatten(treedef, [
      np.asarray(x + 0.2 * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)])

  hf_llama.save_hf_checkpoint(params, config, str(tmp_path), max_shard_bytes=shard)
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert (len(shards) > 1) == (shard is not None)
  assert os.path.exists(tmp_path / hf_llama.INDEX_FILE) == (shard is not None)

  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
  tokens = random_tokens(100)
  np.testing.assert_allclose(hf_logits(model, tokens), our_logits(config, params, tokens),
                             atol=1e-4, rtol=0)
  # And our own loader reads the (possibly sharded) export back to the same tree.
  config_back, params_back = hf_llama.load_hf_checkpoint(str(tmp_path))
  assert config_back == config
  jax.tree.map(np.testing.assert_array_equal,
               hf_llama_unpadded(params_back, config), hf_llama_unpadded(params, config))


def hf_llama_unpadded(params, config: DecoderConfig):
  """Padded vocab rows are not exported, so they come back as zeros: compare without them."""
  params = dict(params)
  params["embedding"] = params["embedding"][:config.vocab_size]
  if "lm_head" in params:
    params["lm_head"] = {"kernel": params["lm_head"]["kernel"][:, :config.vocab_size]}
  return params


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
def test_pretrained_stories260k_greedy_story_matches_transformers_token_for_token():
  model = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = model.generate(torch.tensor([[1]]), do_sample=False, max_new_tokens=100,
                            pad_token_id=0)[0, 1:].numpy()
  assert len(theirs) >= 20  # a real story, not an immediate EOS

  config, params = hf_llama.load_hf_checkpoint(STORIES)
  # eos_id -1 never matches: decode all 100 tokens and compare up to HF's stop.
  generate = make_greedy_generate(Decoder(config), params, max_new_tokens=100, eos_id=-1)
  ours = generate(np.array([[1]], np.int32), np.ones((1, 1), np.int32))[0]
  np.testing.assert_array_equal(ours[:len(theirs)], theirs)


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path):
  make_hf_model("llama_untied").save_pretrained(tmp_path)
  config_json = json.loads((tmp_path / "config.json").read_text())
  config_json["num_key_value_heads"] = 4  # the file's k_proj is for 2 kv heads
  (tmp_path / "config.json").write_text(json.dumps(config_json))
  with pytest.raises(UserError) as error:
    hf_llama.load_hf_checkpoint(str(tmp_path))
  message = str(error.value)
  assert "model.layers.0.self_attn.k_proj.weight" in message
  assert "expected shape (32, 32)" in message and "found (16, 32)" in message


def test_a_missing_tensor_is_named(tmp_path):
  make_hf_model("llama_untied").save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  del tensors["model.layers.1.mlp.up_proj.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
    hf_llama.load_hf_checkpoint(str(tmp_path))


@pytest.mark.parametrize("distinct", [True, False])
def test_a_tied_checkpoint_that_also_stores_lm_head_gives_transformers_logits(distinct, tmp_path):
  # transformers (5.x, `PreTrainedModel.tie_weights`) ties only if the file's lm_head
  # equals the embedding; a different one is kept, untied, with a warning.
  model = make_hf_model("llama_tied")
  model.save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  assert "lm_head.weight" not in tensors  # transformers itself omits the tied copy
  embedding = tensors["model.embed_tokens.weight"]
  tensors["lm_head.weight"] = (np.random.RandomState(2).normal(0, 0.2, embedding.shape)
                               .astype(np.float32) if distinct else embedding.copy())
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
  config, params = hf_llama.load_hf_checkpoint(str(tmp_path))
  assert config.tie_embeddings == (not distinct) and ("lm_head" in params) == distinct
  tokens = random_tokens(100)
  np.testing.assert_allclose(our_logits(config, params, tokens), hf_logits(reloaded.eval(), tokens),
                             atol=1e-4, rtol=0)


def test_an_unsupported_architecture_lists_the_supported_ones():
  with pytest.raises(UserError) as error:
    hf_llama.config_from_hf({"architectures": ["GPT2LMHeadModel"], **TINY})
  assert "GPT2LMHeadModel" in str(error.value)
  for supported in hf_llama.SUPPORTED_ARCHITECTURES:
    assert supported in str(error.value)
  with pytest.raises(UserError, match="'yarn' is not supported"):
    hf_llama.config_from_hf({"architectures": ["LlamaForCausalLM"], **TINY,
                             "rope_scaling": {"rope_type": "yarn", "factor": 8.0}})


def convert(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "flan_jax.models.convert", *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


def test_convert_cli_round_trip_hf_orbax_hf_keeps_every_tensor(tmp_path):
  source = tmp_path / "hf"
  make_hf_model("llama_untied").save_pretrained(source)
  result = convert(f"--from_hf={source}", f"--to_orbax={tmp_path / 'orbax'}")
  assert result.returncode == 0, result.stderr
  result = convert(f"--from_orbax={tmp_path / 'orbax'}", f"--to_hf={tmp_path / 'back'}",
                   "--max_shard_bytes=20000")
  assert result.returncode == 0, result.stderr

  original = load_file(source / "model.safetensors")
  back = {}
  for name in os.listdir(tmp_path / "back"):
    if name.endswith(".safetensors"):
      back.update(load_file(tmp_path / "back" / name))
  assert sorted(back) == sorted(original)
  for name, tensor in original.items():
    np.testing.assert_array_equal(back[name], tensor, err_msg=name)
  # Keys we do not model (token ids) survive via the stored original config.json.
  source_config = json.loads((source / "config.json").read_text())
  back_config = json.loads((tmp_path / "back" / "config.json").read_text())
  assert back_config["bos_token_id"] == source_config["bos_token_id"]


def test_convert_cli_reports_bad_flags_as_one_error_line():
  result = convert("--from_hf=/nonexistent")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: give either")


def test_a_finetuning_run_exports_to_transformers_from_its_model_dir(tmp_path):
  import flan_jax_tasks.default_mixture  # noqa: F401  (the byte-vocabulary default tasks)
  from flan_jax import finetune
  from flan_jax.evaluation.evaluator import EvalConfig
  from flan_jax.models import convert as convert_lib
  from flan_jax.training.trainer import TrainerConfig

  run = tmp_path / "run"
  finetune.finetune(
      model_dir=str(run), mixture_or_task_name="default_add",
      task_feature_lengths={"inputs": 32, "targets": 8}, batch_size=2,
      trainer=TrainerConfig(train_steps=2, progress_bar=False),
      model=DecoderConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                          mlp_dim=64, tie_embeddings=False, scan_layers=True, prefix_lm=False),
      evaluation=EvalConfig(evaluate_seen=False), evaluate_before=False)
  result = convert(f"--from_orbax={run}", f"--to_hf={tmp_path / 'hf'}")
  assert result.returncode == 0, result.stderr
  assert "prefix_lm" not in result.stderr  # causal throughout: nothing to warn about
  result = convert(f"--from_orbax={run}", f"--to_hf={tmp_path / 'nowhere'}", "--step=7")
  assert result.returncode == 2 and "no finished checkpoint for step 7 (found: [2])" in result.stderr
  config, params, _ = convert_lib.load_orbax(str(run))  # the trained step-2 weights, unstacked
  assert config.vocab_size == 259 and "layers_1" in params
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
  tokens = random_tokens(259)
  np.testing.assert_allclose(hf_logits(model.eval(), tokens), our_logits(config, params, tokens),
                             atol=1e-4, rtol=0)
  # And a prompt continues the same way in both, as our evaluator would decode it.
  prompt = np.array([[0] + [b + 3 for b in b"What is 12 + 30?"] + [1]], np.int32)
  ours = make_greedy_generate(Decoder(config), params, 8, eos_id=-1)(prompt, np.ones_like(prompt))
  # Two training steps leave near-uniform logits where float noise can flip an exact tie,
  # so each of our tokens must be transformers' greedy choice up to 1e-4 in the logit.
  with torch.no_grad():
    theirs = model(torch.tensor(np.concatenate([prompt, ours], axis=1))).logits[0].numpy()
  steps = theirs[prompt.shape[1] - 1:-1]
  chosen = steps[np.arange(len(ours[0])), ours[0]]
  np.testing.assert_array_less(steps.max(axis=-1) - chosen, 1e-4)


def test_exporting_a_prefix_lm_says_that_transformers_will_run_it_causally(tmp_path):
  from flan_jax.models import convert as convert_lib
  config = DecoderConfig(vocab_size=100, num_layers=1, embed_dim=32, num_heads=4, num_kv_heads=2,
                         head_dim=8, mlp_dim=64)
  assert config.prefix_lm  # our default, for models trained from scratch
  params = Decoder(config).init(jax.random.PRNGKey(0), *dummy_inputs(4))["params"]
  params = jax.tree.map(np.asarray, jax.tree.map(lambda x: x.unbox() if hasattr(x, "unbox") else x,
                                                 params, is_leaf=lambda x: hasattr(x, "unbox")))
  convert_lib.save_orbax(params, config, str(tmp_path / "orbax"))
  result = convert(f"--from_orbax={tmp_path / 'orbax'}", f"--to_hf={tmp_path / 'hf'}")
  assert result.returncode == 0, result.stderr
  assert "prefix_lm=True" in result.stderr and "--gin.DecoderConfig.prefix_lm=False" in result.stderr


def test_imported_checkpoints_stay_causal_and_prefix_lm_reads_prompts_both_ways(tmp_path):
  make_hf_model("llama_untied").save_pretrained(tmp_path)
  config, params = hf_llama.load_hf_checkpoint(str(tmp_path))
  assert not config.prefix_lm
  tokens = random_tokens(100)
  positions = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
  ones, prompt = np.ones_like(tokens), (positions < 6).astype(np.int32)

  def logits(prefix_lm, prefix):
    model = Decoder(dataclasses.replace(config, prefix_lm=prefix_lm))
    return np.asarray(model.apply({"params": params}, tokens, positions, ones, prefix)[0])

  causal = logits(False, 0 * ones)
  np.testing.assert_array_equal(logits(False, prompt), causal)  # prompt flags ignored
  assert np.abs(logits(True, prompt) - causal)[:, :6].max() > 1e-3  # the prompt looks ahead


def test_a_damaged_safetensors_file_is_one_error_naming_it(tmp_path):
  make_hf_model("llama_tied").save_pretrained(tmp_path)
  weights = tmp_path / "model.safetensors"
  weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\x00" * 64)
  with pytest.raises(UserError, match="model.safetensors is not a readable safetensors file"):
    hf_llama.load_hf_checkpoint(str(tmp_path))


def test_rope_tables_equal_transformers_rotary_at_packed_positions_and_nan_outside():
  """The lookup tables against transformers' own rotary embedding (llama3 scaling, so
  every frequency regime is covered) at positions that restart per packed example;
  positions outside the tables are NaN, never a silently clamped angle."""
  from flan_jax.models import decoder as decoder_lib
  kind = "llama3_scaled"
  hf_model = make_hf_model(kind)
  config = hf_llama.config_from_hf({**hf_model.config.to_dict(),
                                    "architectures": ["LlamaForCausalLM"]})
  positions = np.array([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7],
                        [0, 1, 2, 0, 1, 0, 1, 2, 3, 4, 5, 11]])
  cos, sin = decoder_lib.rope_tables(jax.numpy.asarray(positions),
                                     decoder_lib.rope_frequencies(config), 12)
  rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_model.config)
  hf_cos, hf_sin = rotary(torch.zeros(1, dtype=torch.float32), torch.tensor(positions))
  half = config.head_dim // 2
  np.testing.assert_allclose(np.asarray(cos)[:, :, 0], hf_cos.numpy()[..., :half], atol=2e-6)
  np.testing.assert_allclose(np.asarray(sin)[:, :, 0], hf_sin.numpy()[..., :half], atol=2e-6)

  outside = jax.numpy.asarray([[0, 11, 12, -1]])
  cos, sin = decoder_lib.rope_tables(outside, decoder_lib.rope_frequencies(config), 12)
  finite = np.isfinite(np.asarray(cos)[0, :, 0]).all(axis=-1)
  assert finite.tolist() == [True, True, False, False]
  assert np.isnan(np.asarray(sin)[0, 2:]).all()
