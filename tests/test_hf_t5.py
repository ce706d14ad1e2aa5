"""Hugging Face T5 checkpoints load into our T5 and back, logit for logit and token for token.

transformers (with torch) is the reference: a checkpoint it writes must give our
T5 the same logits, one we write must give transformers ours, and greedy decoding
with our cache must continue prompts exactly as `generate` does.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from flan_jax.errors import UserError  # noqa: E402
from flan_jax.evaluation.decoding import make_greedy_generate  # noqa: E402
from flan_jax.evaluation.evaluator import left_pad_prompts  # noqa: E402
from flan_jax.models import convert, hf_t5, layer_stack  # noqa: E402
from flan_jax.models.decoder import DecoderConfig  # noqa: E402
from flan_jax.models.pretrained import load_pretrained  # noqa: E402
from flan_jax.models.t5 import T5, T5Config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Few buckets and a short max distance, so 12-token inputs reach the logarithmic buckets;
# more decoder than encoder layers, so mixing the two up shows.
TINY = dict(vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
            dropout_rate=0.0, decoder_start_token_id=0)
KINDS = {
    "v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),  # and Flan-T5
    "original": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "gated_silu": dict(feed_forward_proj="gated-silu", tie_word_embeddings=False),
}


def make_hf_model(kind: str, seed: int = 0):
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY, **KINDS[kind]))
  if not KINDS[kind]["tie_word_embeddings"]:
    # transformers 5 shares lm_head with the embedding even for v1.1; real v1.1
    # checkpoints have their own.
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
  with torch.no_grad():
    # Norm scales start at 1: randomise everything so a mix-up shows. Strong position
    # biases, so a wrong bucket or table shows too.
    for name, param in model.named_parameters():
      param.normal_(0.0, 1.0 if "relative_attention_bias" in name else 0.2)
  return model.float().eval()


def batch():
  """Two prompts, the second padded; decoder inputs start with the start token 0."""
  rng = np.random.RandomState(1)
  encoder_tokens = rng.randint(1, 100, size=(2, 12))
  encoder_tokens[1, 7:] = 0
  decoder_tokens = rng.randint(0, 100, size=(2, 6))
  decoder_tokens[:, 0] = 0
  return encoder_tokens, decoder_tokens


def hf_logits(model, encoder_tokens, decoder_tokens) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(encoder_tokens),
                 attention_mask=torch.tensor(encoder_tokens != 0, dtype=torch.long),
                 decoder_input_ids=torch.tensor(decoder_tokens)).logits.numpy()


def our_logits(config: T5Config, params, encoder_tokens, decoder_tokens) -> np.ndarray:
  apply = jax.jit(lambda p, e, d: T5(config).apply({"params": p}, e, d))
  return np.asarray(apply(params, encoder_tokens, decoder_tokens))


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_transformers_checkpoint_gives_our_t5_the_same_logits(kind, tmp_path):
  model = make_hf_model(kind)
  model.save_pretrained(tmp_path)
  config, params = hf_t5.load_hf_checkpoint(str(tmp_path))
  assert config.tie_embeddings == KINDS[kind]["tie_word_embeddings"]
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 3)
  assert params["embedding"].shape == (128, 32)  # vocab padded to a multiple of 128
  assert params["encoder"]["relpos_bias"].shape == (8, 4)
  np.testing.assert_allclose(our_logits(config, params, *batch()), hf_logits(model, *batch()),
                             atol=1e-4, rtol=0)


def random_params(config: T5Config, seed: int = 1):
  """Our parameter tree filled like `make_hf_model` fills HF's, padded vocab rows included
  (export must cut those off)."""
  tokens = jnp.ones((1, 4), jnp.int32)
  shapes = nn.meta.unbox(jax.eval_shape(lambda: T5(config).init(jax.random.key(0), tokens, tokens)))
  rng = np.random.RandomState(seed)
  scale = lambda path: 1.0 if "relpos_bias" in jax.tree_util.keystr(path) else 0.2
  fill = lambda path, x: rng.normal(0.0, scale(path), size=x.shape).astype(np.float32)
  return jax.tree_util.tree_map_with_path(fill, shapes["params"])


def unpadded(params, config: T5Config):
  """Padded vocab rows are not exported, so they come back as zeros: compare without them."""
  params = dict(params)
  params["embedding"] = params["embedding"][:config.vocab_size]
  if "lm_head" in params:
    params["lm_head"] = {"kernel": params["lm_head"]["kernel"][:, :config.vocab_size]}
  return params


@pytest.mark.parametrize("kind,shard,scan", [("v1_1", None, False), ("original", 8_000, False),
                                             ("gated_silu", 8_000, True)])
def test_our_export_gives_transformers_the_same_logits(kind, shard, scan, tmp_path):
  config = hf_t5.config_from_hf({"architectures": ["T5ForConditionalGeneration"],
                                 **TINY, **KINDS[kind]}, scan_layers=scan)
  params = random_params(config)
  expected = our_logits(config, params, *batch())
  if scan:  # a scanned run's params export the same
    params = jax.tree.map(np.asarray, layer_stack.stack_layers(params))

  hf_t5.save_hf_checkpoint(params, config, str(tmp_path), max_shard_bytes=shard,
                           hf_config={"eos_token_id": 1, "n_positions": 512, "d_model": 999})
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert (len(shards) > 1) == (shard is not None)
  config_json = json.loads((tmp_path / "config.json").read_text())
  assert config_json["n_positions"] == 512 and config_json["d_model"] == 32  # ours wins

  model = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
  np.testing.assert_allclose(hf_logits(model.eval(), *batch()), expected, atol=1e-4, rtol=0)
  # And our own loader reads the (possibly sharded) export back to the same tree.
  config_back, params_back = hf_t5.load_hf_checkpoint(str(tmp_path), scan_layers=scan)
  assert config_back == config
  if scan:
    params = layer_stack.unstack_layers(params)
  jax.tree.map(np.testing.assert_array_equal, unpadded(params_back, config),
               unpadded(params, config))


def greedy(config: T5Config, params, encoder_tokens: np.ndarray, steps: int) -> np.ndarray:
  """Our evaluator's greedy decoding: prompts left-padded, then encode and a cached decoder."""
  prompts, mask, _ = left_pad_prompts([row[row != 0] for row in encoder_tokens],
                                      encoder_tokens.shape[1], prefix=())
  generate = make_greedy_generate(T5(config), params, steps, eos_id=-1)
  return generate(prompts, mask)


@pytest.mark.parametrize("kind", ["v1_1", "original"])
def test_greedy_decoding_with_our_cache_matches_transformers_generate(kind, tmp_path):
  model = make_hf_model(kind, seed=2)
  model.save_pretrained(tmp_path)
  config, params = hf_t5.load_hf_checkpoint(str(tmp_path))
  encoder_tokens, _ = batch()
  model.generation_config.eos_token_id = None  # decode all 20 tokens, EOS or not
  with torch.no_grad():
    theirs = model.generate(
        input_ids=torch.tensor(encoder_tokens),
        attention_mask=torch.tensor(encoder_tokens != 0, dtype=torch.long),
        do_sample=False, max_new_tokens=20, decoder_start_token_id=0,
        # transformers' own cache sizes itself by the encoder's depth (num_layers) and
        # fails with a deeper decoder; without it, every step runs the whole prefix.
        use_cache=False).numpy()
  assert theirs.shape == (2, 21) and (theirs[:, 0] == 0).all()
  assert len(set(theirs[0, 1:])) > 2  # a real continuation, not one token repeated
  np.testing.assert_array_equal(greedy(config, params, encoder_tokens, 20), theirs[:, 1:])


def run_convert(*flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "flan_jax.models.convert", *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


def test_convert_cli_round_trip_hf_orbax_hf_keeps_every_tensor(tmp_path):
  source = tmp_path / "hf"
  make_hf_model("v1_1").save_pretrained(source)
  (source / "spiece.model").write_bytes(b"not really a tokenizer")
  result = run_convert(f"--from_hf={source}", f"--to_orbax={tmp_path / 'orbax'}")
  assert result.returncode == 0, result.stderr
  stored = json.loads((tmp_path / "orbax" / convert.CONFIG_FILE).read_text())
  assert stored["family"] == "t5" and stored["scan_layers"] is False
  config, params = load_pretrained(str(tmp_path / "orbax"))
  assert isinstance(config, T5Config) and "layers_1" in params["encoder"]

  result = run_convert(f"--from_orbax={tmp_path / 'orbax'}", f"--to_hf={tmp_path / 'back'}",
                       "--max_shard_bytes=30000")
  assert result.returncode == 0, result.stderr
  original = load_file(source / "model.safetensors")
  back = {}
  for name in os.listdir(tmp_path / "back"):
    if name.endswith(".safetensors"):
      back.update(load_file(tmp_path / "back" / name))
  assert sorted(back) == sorted(original)
  for name, tensor in original.items():
    np.testing.assert_array_equal(back[name], tensor, err_msg=name)
  # Keys we do not model survive via the stored original config.json, files beside it too.
  source_config = json.loads((source / "config.json").read_text())
  back_config = json.loads((tmp_path / "back" / "config.json").read_text())
  assert back_config["eos_token_id"] == source_config["eos_token_id"]
  assert (tmp_path / "back" / "spiece.model").read_bytes() == b"not really a tokenizer"
  config_back, _ = load_pretrained(str(tmp_path / "back"))
  assert config_back == config


def test_an_orbax_checkpoint_without_a_family_is_a_decoder(tmp_path):
  config = DecoderConfig(vocab_size=10, num_layers=1, embed_dim=8, num_heads=1, num_kv_heads=1,
                         head_dim=8, mlp_dim=8)
  convert.save_orbax({"embedding": np.zeros((128, 8), np.float32)}, config, str(tmp_path))
  config_path = tmp_path / convert.CONFIG_FILE
  fields = json.loads(config_path.read_text())
  assert fields.pop("family") == "decoder"
  config_path.write_text(json.dumps(fields))  # as written before T5 existed
  assert convert.load_orbax(str(tmp_path))[0] == config


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path):
  make_hf_model("v1_1").save_pretrained(tmp_path)
  config_json = json.loads((tmp_path / "config.json").read_text())
  config_json["d_kv"] = 16  # the file's projections are for 8
  (tmp_path / "config.json").write_text(json.dumps(config_json))
  with pytest.raises(UserError) as error:
    hf_t5.load_hf_checkpoint(str(tmp_path))
  message = str(error.value)
  assert "encoder.block.0.layer.0.SelfAttention.q.weight" in message
  assert "expected shape (64, 32)" in message and "found (32, 32)" in message


def test_missing_and_leftover_tensors_are_named(tmp_path):
  make_hf_model("v1_1").save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  del tensors["decoder.block.2.layer.2.DenseReluDense.wo.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"lacks .*decoder\.block\.2\.layer\.2\.DenseReluDense\.wo"):
    hf_t5.load_hf_checkpoint(str(tmp_path))

  tensors["decoder.block.2.layer.2.DenseReluDense.wo.weight"] = np.zeros((32, 64), np.float32)
  tensors["encoder.block.2.layer.0.layer_norm.weight"] = np.ones(32, np.float32)
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"does not use: \['encoder\.block\.2\.layer\.0\.layer_norm"):
    hf_t5.load_hf_checkpoint(str(tmp_path))


def test_a_tied_checkpoint_with_a_different_lm_head_is_refused(tmp_path):
  make_hf_model("original").save_pretrained(tmp_path)
  tensors = load_file(tmp_path / "model.safetensors")
  assert "lm_head.weight" not in tensors
  tensors["lm_head.weight"] = tensors["shared.weight"]
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  hf_t5.load_hf_checkpoint(str(tmp_path))  # an identical copy is fine
  tensors["lm_head.weight"] = tensors["shared.weight"] + 1
  save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
  with pytest.raises(UserError, match="lm_head.weight differs from the embedding"):
    hf_t5.load_hf_checkpoint(str(tmp_path))


def test_unsupported_architectures_list_the_supported_ones(tmp_path):
  with pytest.raises(UserError) as error:
    hf_t5.config_from_hf({"architectures": ["T5EncoderModel"], **TINY})
  assert "T5EncoderModel" in str(error.value) and "T5ForConditionalGeneration" in str(error.value)
  with pytest.raises(UserError, match="gated-gelu, gated-silu, relu"):
    hf_t5.config_from_hf({"architectures": ["T5ForConditionalGeneration"], **TINY,
                          "feed_forward_proj": "gated-relu"})
  # Without architectures, the model type is enough for T5.
  assert hf_t5.config_from_hf({"model_type": "t5", **TINY}).feed_forward == "relu"

  # Loading picks the family from config.json, and names every supported architecture.
  (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  with pytest.raises(UserError) as error:
    load_pretrained(str(tmp_path))
  for supported in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                    "T5ForConditionalGeneration"):
    assert supported in str(error.value)
