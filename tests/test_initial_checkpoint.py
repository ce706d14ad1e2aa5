"""Finetuning starts from a pretrained checkpoint named by INITIAL_CHECKPOINT_PATH."""

import json
import os
import re

import pytest
import seqio
import tensorflow as tf

from flan_jax import finetune
from flan_jax.data.vocabularies import output_features, sentencepiece_vocabulary
from flan_jax.errors import UserError
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.models.decoder import DecoderConfig
from flan_jax.training.optimizer import OptimizerConfig
from flan_jax.training.trainer import TrainerConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
needs_stories = pytest.mark.skipif(not os.path.isdir(STORIES), reason="needs ../shared/data")

SENTENCES = ["Once upon a time, there was a little girl named Lily.",
             "She liked to play outside in the park with her friends.",
             "One day, she saw a big red ball under a tree."]


@pytest.fixture(scope="module")
def story_task():
  def dataset_fn(split, shuffle_files, seed=None):
    return tf.data.Dataset.from_tensor_slices(
        {"inputs": [s.split(",")[0] for s in SENTENCES], "targets": SENTENCES})
  vocabulary = sentencepiece_vocabulary(os.path.join(STORIES, "tokenizer.model"))
  seqio.TaskRegistry.add(
      "stories_continuation", source=seqio.FunctionDataSource(dataset_fn, ["train"], {"train": 3}),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=output_features(vocabulary))
  yield "stories_continuation"
  seqio.TaskRegistry.remove("stories_continuation")


def _first_loss(tmp_path, task, **kwargs):
  finetune.finetune(
      model_dir=str(tmp_path), mixture_or_task_name=task,
      task_feature_lengths={"inputs": 32, "targets": 32}, batch_size=2,
      trainer=TrainerConfig(train_steps=1, log_every=1, progress_bar=False),
      model=DecoderConfig(num_layers=1, embed_dim=64, num_heads=8, num_kv_heads=4, head_dim=8,
                          mlp_dim=128),
      optimizer=OptimizerConfig(warmup_steps=10), evaluation=EvalConfig(evaluate_seen=False),
      evaluate_before=False, **kwargs)
  return json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@needs_stories
def test_pretrained_weights_start_far_below_a_random_initialisation(tmp_path, story_task):
  pretrained = _first_loss(tmp_path / "pretrained", story_task, initial_checkpoint_path=STORIES)
  random = _first_loss(tmp_path / "random", story_task)
  assert pretrained < random - 2.0, (pretrained, random)


def _tiny_hf_checkpoint(directory, vocab_size: int) -> str:
  """A tiny random Qwen2 checkpoint, written by transformers, with `vocab_size` embedding rows."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  config = transformers.Qwen2Config(
      vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True)
  transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
  return str(directory)


def test_a_checkpoint_with_more_embedding_rows_than_tokenizer_ids_is_accepted(tmp_path,
                                                                              monkeypatch):
  # Qwen2 pads its 151,665 tokenizer ids to 151,936 rows, far beyond the next multiple
  # of 128; here the byte vocabulary's 259 ids meet 400 rows (> 384).
  import flan_jax_tasks.default_mixture  # noqa: F401  (byte vocabulary: 259 ids)
  from flan_jax.models import families
  num_token_ids, family_for = [], families.family_for

  def recording_family_for(config, **kwargs):
    num_token_ids.append(kwargs.get("num_token_ids"))
    return family_for(config, **kwargs)

  monkeypatch.setattr(families, "family_for", recording_family_for)
  checkpoint = _tiny_hf_checkpoint(tmp_path / "qwen2", vocab_size=400)
  loss = _first_loss(tmp_path / "run", "default_add", initial_checkpoint_path=checkpoint)
  assert loss > 0
  assert num_token_ids == [259]  # the 141 extra rows are masked out of generation


def test_a_checkpoint_with_fewer_embedding_rows_than_tokenizer_ids_is_refused(tmp_path):
  import flan_jax_tasks.default_mixture  # noqa: F401  (byte vocabulary: 259 ids)
  checkpoint = _tiny_hf_checkpoint(tmp_path / "small", vocab_size=200)
  with pytest.raises(UserError, match=re.escape(f"259 ids but the checkpoint at {checkpoint} has only 200")):
    _first_loss(tmp_path / "run", "default_add", initial_checkpoint_path=checkpoint)


@needs_stories
def test_a_directory_that_is_no_checkpoint_says_what_it_expected(tmp_path, story_task):
  with pytest.raises(UserError, match="neither a Hugging Face checkpoint"):
    _first_loss(tmp_path / "run", story_task, initial_checkpoint_path=str(tmp_path))


@needs_stories
def test_rows_start_from_the_tokenizers_bos_as_the_pretrained_model_expects(story_task):
  import numpy as np
  from flan_jax.data import pipeline, vocabularies
  from flan_jax.models.families import DecoderOnly
  from flan_jax.models.hf_llama import load_hf_checkpoint
  from flan_jax.training.losses import per_token_loss

  vocabulary = seqio.get_mixture_or_task(story_task).output_features["targets"].vocabulary
  assert vocabularies.bos_id(vocabulary) == 1  # Llama's <s>; id 0 is <unk>
  config, params = load_hf_checkpoint(STORIES)
  model = DecoderOnly(config)

  def target_loss(bos_id):
    batch = next(pipeline.train_batches(story_task, {"inputs": 32, "targets": 32}, 2, seed=0,
                                        bos_id=bos_id))
    assert np.all(batch["decoder_input_tokens"][:, 0] == bos_id)
    weights = batch["decoder_loss_weights"]
    return float((np.asarray(per_token_loss(model, params, batch)) * weights).sum() / weights.sum())

  # The model never saw <unk> where a text starts, so a row opened by 0 reads worse.
  with_bos, with_unk = target_loss(1), target_loss(0)
  print(f"target loss from <s>: {with_bos:.3f}, from <unk>: {with_unk:.3f}")
  assert with_bos < with_unk - 0.1, (with_bos, with_unk)


@pytest.mark.parametrize("config_json, message", [
    ('{"architectures": ["LlamaForCausalLM"], ', "is not valid JSON"),
    ('["LlamaForCausalLM"]', "must hold one JSON object, not a list"),
    ('{"architectures": ["LlamaForCausalLM"], "vocab_size": 32}',
     r"lacks \['hidden_size', 'intermediate_size', 'num_attention_heads', 'num_hidden_layers'\]"),
])
def test_a_hf_config_json_that_is_not_a_model_config_says_what_is_wrong(tmp_path, config_json,
                                                                        message):
  from flan_jax.models.pretrained import load_pretrained
  (tmp_path / "config.json").write_text(config_json)
  with pytest.raises(UserError, match=f"{re.escape(str(tmp_path / 'config.json'))}.*{message}"):
    load_pretrained(str(tmp_path))
