"""An int8 frozen base under LoRA: each linear map int8 with a scale per output channel,
within half a quantization step of the float weights, a quarter of their bytes, frozen
bit for bit while the adapters train, and exported merged as the int8 model computes."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest

import flan_jax_tasks.default_mixture  # noqa: F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches
from flan_jax.errors import UserError
from flan_jax.models import convert, int8_base, lora
from flan_jax.models.families import DecoderOnly, family_for
from flan_jax.models.lora import LoraConfig
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib
from flan_jax.training.optimizer import OptimizerConfig, make_optimizer
from flan_jax.training.trainer import TrainerConfig, train
from tiny import TINY_DECODER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
needs_stories = pytest.mark.skipif(not os.path.isdir(STORIES),
                                   reason="stories260K-hf is not in shared/data")
LENGTHS = {"inputs": 32, "targets": 16}
INT8_LORA = LoraConfig(rank=4, alpha=8.0, target_modules=("all-linear",), base_dtype="int8")
OPTIMIZER = OptimizerConfig(learning_rate=1e-2, warmup_steps=0)
UNTIED = dataclasses.replace(TINY_DECODER, tie_embeddings=False, lora=INT8_LORA)


def _leaves(tree) -> dict[str, np.ndarray]:
  return {"/".join(str(k.key) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def _batch(rows=4, skip=0):
  return next(train_batches("default_add", LENGTHS, rows, seed=0, skip_batches=skip))


@pytest.mark.parametrize("shape, in_axes", [((48, 4, 8), (0,)), ((4, 8, 48), (0, 1))],
                         ids=["embed->heads", "heads->embed"])
def test_each_output_channel_is_within_half_its_own_step_of_the_float_weight(shape, in_axes):
  rng = np.random.default_rng(0)
  # Output channels a thousand times apart: one scale for the whole weight would round
  # the small channels to nothing.
  magnitudes = 10.0 ** rng.uniform(-3, 0, size=shape[len(in_axes):])
  w = (rng.normal(size=shape) * magnitudes).astype(np.float32)
  values, scale = jax.device_get(int8_base.quantize_weight(
      w, int8_base.scale_shape(shape, in_axes)))
  assert values.dtype == np.int8 and scale.dtype == np.float32
  assert scale.shape == tuple(1 if i in in_axes else n for i, n in enumerate(shape))
  # By hand: per output channel, the largest |w| over the input axes, over 127.
  absmax = np.abs(w).max(axis=in_axes, keepdims=True)
  np.testing.assert_allclose(scale, absmax / 127, rtol=1e-6)
  assert np.abs(values).max() == 127 and values.min() >= -127
  error = np.abs(values.astype(np.float32) * scale - w)
  assert np.all(error <= absmax / 127 / 2 * (1 + 1e-5))
  # Each channel's largest entry comes back to within float rounding.
  np.testing.assert_allclose(np.abs(values * scale).max(axis=in_axes, keepdims=True), absmax,
                             rtol=1e-6)


def test_base_dtype_is_checked_and_a_float_base_records_what_it_always_did(tmp_path):
  with pytest.raises(UserError, match="base_dtype must be None .* or 'int8', got 'int4'"):
    LoraConfig(base_dtype="int4")
  from flan_jax.finetune import check_same_model
  (tmp_path / "checkpoints").mkdir()
  float_lora = dataclasses.replace(UNTIED, lora=dataclasses.replace(INT8_LORA, base_dtype=None))
  convert.save_run_config(str(tmp_path), float_lora)
  saved = json.loads((tmp_path / "flan_jax_config.json").read_text())["lora"]
  assert "base_dtype" not in saved  # as written before int8 bases existed
  check_same_model(str(tmp_path), float_lora)
  with pytest.raises(UserError, match="holds checkpoints of another model: lora="):
    check_same_model(str(tmp_path), UNTIED)  # adapters trained on a float base


def _lora_state(config=UNTIED, params=None):
  network = DecoderOnly(config)
  optimizer = make_optimizer(OPTIMIZER, 10)
  mesh = mesh_lib.make_mesh()
  state, shardings = step_lib.init_train_state(network, optimizer, mesh, LENGTHS, seed=0,
                                               params=params)
  return network, state, step_lib.make_train_step(network, optimizer, mesh, shardings), mesh


def test_a_step_trains_the_adapters_and_leaves_the_int8_base_bit_identical():
  network, state, step, mesh = _lora_state()
  base = _leaves(state.frozen)
  # Every linear map int8 with its scales, the output layer's too; the embedding and
  # norms as they were.
  assert base["lm_head/kernel"].dtype == np.int8
  assert base["layers_0/attention/out_int8_scale"].shape == (1, 1, 32)
  assert base["layers_0/mlp/down/kernel"].dtype == np.int8
  assert base["embedding"].dtype == base["final_norm/scale"].dtype == np.float32
  # The blank initialisation was replaced: the float model's, from the same seed, quantized.
  float_network = DecoderOnly(int8_base.float_config(UNTIED))
  float_params = jax.jit(lambda r: step_lib.init_params(float_network, r, LENGTHS))(
      jax.random.key(0))
  values, scale = int8_base.quantize_weight(float_params["lm_head"]["kernel"], (1, 384))
  np.testing.assert_array_equal(base["lm_head/kernel"], values)
  np.testing.assert_array_equal(base["lm_head/kernel_int8_scale"], scale)

  adapters = _leaves(state.params)
  for i in range(2):
    state, metrics = step(state, step_lib.global_batch(_batch(skip=i), mesh))
  assert np.isfinite(float(metrics["loss"]))
  for name, value in _leaves(state.frozen).items():
    np.testing.assert_array_equal(value, base[name], err_msg=name)
  after = _leaves(state.params)
  assert all(np.any(after[name] != value) for name, value in adapters.items())
  # The chunked loss's projection (outside the model) applies the int8 output layer too.
  params = state.model_params
  batch = _batch()
  projected = jax.jit(lambda p, b: network.project(p, network.hidden_states(p, b)))
  np.testing.assert_allclose(projected(params, batch), jax.jit(network.logits)(params, batch),
                             rtol=1e-6, atol=1e-6)


def _train(model_dir, steps, base):
  config = TrainerConfig(train_steps=steps, checkpoint_every=2, log_every=1, progress_bar=False)
  batches = lambda start, state=None: train_batches("default_add", LENGTHS, 4, seed=0,
                                                     skip_batches=start, state=state)
  return train(DecoderOnly(UNTIED), OPTIMIZER, config, batches, str(model_dir), LENGTHS,
               initial_params=base, base_source="/models/base")


def _losses(model_dir):
  with open(os.path.join(model_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_an_int8_run_resumes_exactly_on_the_base_it_quantized(tmp_path):
  float_network = DecoderOnly(int8_base.float_config(UNTIED))
  base = lora.partition(jax.device_get(step_lib.init_params(float_network, jax.random.key(7),
                                                            LENGTHS)), float_network.config)[1]
  straight = _train(tmp_path / "straight", 4, base)
  interrupted = tmp_path / "interrupted"
  shutil.copytree(tmp_path / "straight", interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "4")
  resumed = _train(interrupted, 4, base)  # quantizes the float base again, identically
  assert _losses(interrupted) == _losses(tmp_path / "straight")
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Another float base is refused: the record is of the quantized base.
  shutil.rmtree(interrupted / "checkpoints" / "4")
  other = jax.tree.map(lambda x: x.copy(), base)
  other["layers_0"]["mlp"]["up"]["kernel"][0, 0] *= 2.0
  with pytest.raises(UserError, match="adapters only fit the base they were trained on"):
    _train(interrupted, 4, other)


# stories260K (E 64, 8 heads and 4 KV heads of 8, MLP 172, 5 layers, 512 tokens, tied).
E, H, K, D, F, LAYERS, VOCAB = 64, 8, 4, 8, 172, 5, 512
# Per layer: the linear maps' values and their scales (one per output channel).
LINEAR = E * H * D + 2 * E * K * D + H * D * E + 3 * E * F
SCALES = H * D + 2 * K * D + E + 2 * F + E
FLOAT = 2 * E * LAYERS + E + VOCAB * E  # two norms per layer, the final norm, the embedding


@needs_stories
def test_stories260K_on_an_int8_base_is_a_third_of_the_bytes_with_logits_within_1e_2():
  config, base = convert.load_hf(STORIES)
  int8 = dataclasses.replace(config, lora=INT8_LORA)
  _, int8_state, _, _ = _lora_state(int8, base)
  _, float_state, _, _ = _lora_state(int8_base.float_config(int8), base)
  frozen_bytes = lambda state: sum(leaf.nbytes for leaf in jax.tree.leaves(state.frozen))
  assert frozen_bytes(float_state) == 4 * (LAYERS * LINEAR + FLOAT) == 1_040_128
  assert frozen_bytes(int8_state) == LAYERS * (LINEAR + 4 * SCALES) + 4 * FLOAT == 372_448
  # The linear maps alone: 26% of their float32 bytes (a quarter, plus the scales).
  assert LAYERS * (LINEAR + 4 * SCALES) / (4 * LAYERS * LINEAR) == pytest.approx(0.263, abs=1e-3)

  tokens = np.random.RandomState(1).randint(3, VOCAB, size=(2, 32))
  ones = np.ones_like(tokens)
  batch = {"decoder_input_tokens": tokens, "decoder_positions": np.cumsum(ones, 1) - 1,
           "decoder_segment_ids": ones, "decoder_causal_attention": 0 * ones}
  logits = lambda cfg, state: np.asarray(jax.jit(family_for(cfg).logits)(state.model_params,
                                                                          batch))
  int8_logits, float_logits = logits(int8, int8_state), logits(config, float_state)
  relative = np.linalg.norm(int8_logits - float_logits) / np.linalg.norm(float_logits)
  assert 0 < relative < 1e-2
  # The same predictions at nearly every position.
  agree = np.mean(int8_logits.argmax(-1) == float_logits.argmax(-1))
  assert agree > 0.9


@needs_stories
def test_an_int8_runs_merged_export_is_the_int8_model_and_its_adapters_go_to_peft(tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("peft")
  model_dir = tmp_path / "run"
  config, base = convert.load_hf(STORIES)
  config = dataclasses.replace(config, lora=INT8_LORA)
  lengths = {"inputs": 24, "targets": 8}
  batches = lambda start, state=None: train_batches("default_add", lengths, 4, seed=0,
                                                     skip_batches=start, state=state)
  convert.save_run_config(str(model_dir), config, STORIES)
  train(family_for(config), OptimizerConfig(learning_rate=3e-2, warmup_steps=0),
        TrainerConfig(train_steps=2, log_every=1, progress_bar=False), batches, str(model_dir),
        lengths, initial_params=base, base_source=STORIES)

  # Loaded back, the run's base is quantized again and passes the fingerprint check.
  loaded_config, params, _ = convert.load_orbax(str(model_dir))
  assert int8_base.enabled(loaded_config) and int8_base.is_quantized(params)
  # Given beside its float base (`--adapter`), the run quantizes that base as it trained,
  # passes the fingerprint check and is the same model as the run directory.
  from flan_jax import model_dir as model_dir_lib
  from flan_jax.models.pretrained import load_pretrained
  beside_config, beside = load_pretrained(model_dir_lib.resolve(STORIES, adapter=str(model_dir)))
  assert beside_config == loaded_config
  assert {k: v.tobytes() for k, v in _leaves(beside).items()} == {
      k: v.tobytes() for k, v in _leaves(params).items()}
  convert.orbax_to_hf(str(model_dir), str(tmp_path / "merged"), merge_lora=True)
  merged = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"),
                                                             dtype=torch.float32).eval()
  tokens = np.random.RandomState(2).randint(3, VOCAB, size=(2, 16))
  ones = np.ones_like(tokens)
  batch = {"decoder_input_tokens": tokens, "decoder_positions": np.cumsum(ones, 1) - 1,
           "decoder_segment_ids": ones, "decoder_causal_attention": 0 * ones}
  ours = np.asarray(jax.jit(family_for(loaded_config).logits)(params, batch))
  with torch.no_grad():
    theirs = merged(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
  # The float base would not give these logits: the merge used the int8 weights.
  float_params = lora.combine(lora.partition(params, loaded_config)[0], base)
  float_logits = np.asarray(jax.jit(family_for(int8_base.float_config(loaded_config)).logits)(
      float_params, batch))
  assert np.abs(float_logits - theirs).max() > 1e-3

  # The adapters alone export as for a float base.
  convert.orbax_to_peft(str(model_dir), str(tmp_path / "adapter"))
  saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
  assert saved["r"] == 4 and saved["lora_alpha"] == 8


def test_t5_holds_its_encoders_and_decoders_linear_maps_in_int8_near_the_float_model():
  from flan_jax.models.families import EncoderDecoder
  from flan_jax.models.t5 import T5Config
  t5 = T5Config(vocab_size=259, embed_dim=32, num_heads=4, head_dim=8, mlp_dim=64, lora=INT8_LORA)
  network, float_network = EncoderDecoder(t5), EncoderDecoder(int8_base.float_config(t5))
  init = lambda net: jax.jit(lambda r: step_lib.init_params(net, r, LENGTHS))(jax.random.key(0))
  params, float_params = init(network), init(float_network)
  leaves = _leaves(params)
  int8 = sorted(name for name, value in leaves.items() if value.dtype == np.int8)
  assert [name + int8_base.SCALE_SUFFIX in leaves for name in int8] == [True] * len(int8)
  # Self- and cross-attention and the feed-forward, in both stacks; the embedding not.
  for part in ("encoder/layers_0/attention/query", "decoder/layers_0/cross_attention/out",
               "decoder/layers_0/mlp/down/kernel"):
    assert any(name.endswith(part) for name in int8), (part, int8)
  assert leaves["embedding"].dtype == np.float32
  batch = next(train_batches("default_add", LENGTHS, 4, seed=0, encoder_decoder=True))
  ours = np.asarray(jax.jit(network.logits)(params, batch))
  reference = np.asarray(jax.jit(float_network.logits)(float_params, batch))
  relative = np.linalg.norm(ours - reference) / np.linalg.norm(reference)
  assert 0 < relative < 2e-2
