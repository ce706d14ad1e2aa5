"""LoRA adapters travel to and from Hugging Face PEFT, and merge into a plain checkpoint,
with PEFT and transformers computing the logits we check against."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import flan_jax_tasks.default_mixture  # noqa: E402,F401  (registers the default tasks)
from flan_jax.data.pipeline import train_batches  # noqa: E402
from flan_jax.errors import UserError  # noqa: E402
from flan_jax.models import convert, lora, peft_io  # noqa: E402
from flan_jax.models.families import family_for  # noqa: E402
from flan_jax.models.lora import LoraConfig  # noqa: E402
from flan_jax.training import train_step as step_lib  # noqa: E402
from flan_jax.training.optimizer import OptimizerConfig  # noqa: E402
from flan_jax.training.trainer import TrainerConfig, train  # noqa: E402
import test_hf_t5  # noqa: E402  (its tiny transformers T5 and batch)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
needs_stories = pytest.mark.skipif(not os.path.isdir(STORIES),
                                   reason="stories260K-hf is not in shared/data")
LENGTHS = {"inputs": 24, "targets": 8}


def _tokens(vocab=512, seed=1):
  return np.random.RandomState(seed).randint(3, vocab, size=(2, 16))


def _our_decoder_logits(config, params, tokens):
  ones = np.ones_like(tokens)
  batch = {"decoder_input_tokens": tokens, "decoder_positions": np.cumsum(ones, 1) - 1,
           "decoder_segment_ids": ones, "decoder_causal_attention": 0 * ones}
  return np.asarray(jax.jit(family_for(config).logits)(params, batch))


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module")
def stories_lora_run(tmp_path_factory):
  """A LoRA run of 3 steps on stories260K (all linear layers), so B is trained and nonzero."""
  model_dir = tmp_path_factory.mktemp("run")
  config, base = convert.load_hf(STORIES)
  config = dataclasses.replace(config, lora=LoraConfig(rank=4, alpha=8, target_modules=(
      "all-linear",)))
  batches = lambda start, state=None: train_batches("default_add", LENGTHS, 4, seed=0,
                                                     skip_batches=start, state=state)
  convert.save_run_config(str(model_dir), config, STORIES)
  train(family_for(config), OptimizerConfig(learning_rate=3e-2, warmup_steps=0),
        TrainerConfig(train_steps=3, log_every=1, progress_bar=False), batches, str(model_dir),
        LENGTHS, initial_params=base, base_source=STORIES)
  return model_dir


@needs_stories
def test_a_runs_adapters_load_into_peft_with_our_logits(stories_lora_run, tmp_path):
  config, params, _ = convert.load_orbax(str(stories_lora_run))  # with the recorded base
  assert float(np.abs(params["layers_0"]["mlp"]["down"]["kernel_lora"]["b"]).max()) > 1e-3
  convert.orbax_to_peft(str(stories_lora_run), str(tmp_path / "adapter"))
  saved = json.loads((tmp_path / "adapter" / peft_io.ADAPTER_CONFIG).read_text())
  assert saved["r"] == 4 and saved["lora_alpha"] == 8 and saved["base_model_name_or_path"] == STORIES
  assert set(saved["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                          "up_proj", "down_proj"}
  base_model = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
  model = peft.PeftModel.from_pretrained(base_model, str(tmp_path / "adapter")).eval()
  tokens = _tokens()
  ours = _our_decoder_logits(config, params, tokens)
  np.testing.assert_allclose(_hf_logits(model, tokens), ours, rtol=0, atol=1e-4)
  # The adapters matter: without them (PEFT wrapped the first copy) the base's are far off.
  plain = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
  assert np.abs(_hf_logits(plain, tokens) - ours).max() > 1e-2


@needs_stories
def test_a_merged_export_gives_transformers_the_unmerged_logits(stories_lora_run, tmp_path):
  with pytest.raises(UserError, match="--merge_lora"):
    convert.orbax_to_hf(str(stories_lora_run), str(tmp_path / "plain"))
  convert.orbax_to_hf(str(stories_lora_run), str(tmp_path / "merged"), merge_lora=True)
  config, params, _ = convert.load_orbax(str(stories_lora_run))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"),
                                                            dtype=torch.float32).eval()
  tokens = _tokens(seed=2)
  np.testing.assert_allclose(_hf_logits(model, tokens), _our_decoder_logits(config, params, tokens),
                             rtol=0, atol=1e-4)


@needs_stories
def test_a_run_whose_base_changed_on_disk_does_not_export(stories_lora_run, tmp_path):
  record = stories_lora_run / "lora_base.json"
  saved = record.read_text()
  record.write_text(json.dumps({**json.loads(saved), "fingerprint": "0" * 64}))
  try:
    with pytest.raises(UserError, match="adapters only fit the base they were trained on"):
      convert.load_orbax(str(stories_lora_run))
  finally:
    record.write_text(saved)


@needs_stories
def test_a_random_peft_adapter_imports_with_peft_logits(tmp_path):
  # PEFT's own adapter: random A and B, three kinds of layer, only layers 0 and 2.
  torch.manual_seed(0)
  base_model = transformers.AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
  settings = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                             init_lora_weights=False, layers_to_transform=[0, 2])
  model = peft.get_peft_model(base_model, settings).eval()
  model.save_pretrained(str(tmp_path / "adapter"))
  convert.peft_to_orbax(STORIES, str(tmp_path / "adapter"), str(tmp_path / "orbax"))
  config, params, _ = convert.load_orbax(str(tmp_path / "orbax"))
  assert config.lora.rank == 8 and config.lora.scaling == 2.0
  assert set(config.lora.target_modules) == {"q_proj", "v_proj", "down_proj"}
  assert not np.any(params["layers_1"]["attention"]["query_lora"]["a"])  # not transformed
  tokens = _tokens(seed=3)
  np.testing.assert_allclose(_our_decoder_logits(config, params, tokens), _hf_logits(model, tokens),
                             rtol=0, atol=1e-4)


def _t5_with_random_adapters(tmp_path):
  """A tiny transformers T5 (v1.1) imported, with random adapters on every projection."""
  hf = test_hf_t5.make_hf_model("v1_1")
  hf.save_pretrained(str(tmp_path / "base"))
  config, base = convert.load_hf(str(tmp_path / "base"))
  config = dataclasses.replace(config, lora=LoraConfig(rank=4, alpha=4, use_rslora=True,
                                                       target_modules=("all-linear", "lm_head")))
  params = jax.device_get(step_lib.init_params(family_for(config), jax.random.key(0),
                                               {"inputs": 4, "targets": 4}))
  adapters = lora.partition(params, config)[0]
  rng = np.random.RandomState(0)
  adapters = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), adapters)
  return hf, config, lora.combine(adapters, base)


def _our_t5_logits(config, params):
  encoder_tokens, decoder_tokens = test_hf_t5.batch()
  return np.asarray(family_for(config).logits(params, {
      "encoder_input_tokens": encoder_tokens, "decoder_input_tokens": decoder_tokens}))


def test_t5_adapters_go_to_peft_and_merge_with_equal_logits(tmp_path):
  hf, config, params = _t5_with_random_adapters(tmp_path)
  convert.save_orbax(params, config, str(tmp_path / "orbax"))
  convert.orbax_to_peft(str(tmp_path / "orbax"), str(tmp_path / "adapter"))
  assert set(json.loads((tmp_path / "adapter" / peft_io.ADAPTER_CONFIG).read_text())[
      "target_modules"]) == {"q", "k", "v", "o", "wi_0", "wi_1", "wo", "lm_head"}
  ours = _our_t5_logits(config, params)
  model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
  np.testing.assert_allclose(test_hf_t5.hf_logits(model, *test_hf_t5.batch()), ours, rtol=0,
                             atol=1e-4)
  convert.orbax_to_hf(str(tmp_path / "orbax"), str(tmp_path / "merged"), merge_lora=True)
  merged = transformers.T5ForConditionalGeneration.from_pretrained(
      str(tmp_path / "merged"), dtype=torch.float32).eval()
  np.testing.assert_allclose(test_hf_t5.hf_logits(merged, *test_hf_t5.batch()), ours, rtol=0,
                             atol=1e-4)
  # And back: PEFT's directory imports onto the base with the same logits.
  convert.peft_to_orbax(str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "back"))
  config_back, params_back, _ = convert.load_orbax(str(tmp_path / "back"))
  np.testing.assert_allclose(_our_t5_logits(config_back, params_back), ours, rtol=0, atol=1e-5)


def test_adapters_peft_cannot_express_in_ours_are_one_clear_error(tmp_path):
  (tmp_path / peft_io.ADAPTER_CONFIG).write_text(json.dumps(
      {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "use_dora": True}))
  with pytest.raises(UserError, match="use_dora=True is not supported"):
    peft_io.read_lora_config(str(tmp_path))
