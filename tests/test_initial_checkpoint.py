"""Finetuning starts from a pretrained checkpoint named by INITIAL_CHECKPOINT_PATH."""

import json
import os

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
pytestmark = pytest.mark.skipif(not os.path.isdir(STORIES), reason="needs ../shared/data")

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


def test_pretrained_weights_start_far_below_a_random_initialisation(tmp_path, story_task):
  pretrained = _first_loss(tmp_path / "pretrained", story_task, initial_checkpoint_path=STORIES)
  random = _first_loss(tmp_path / "random", story_task)
  assert pretrained < random - 2.0, (pretrained, random)


def test_a_vocabulary_that_does_not_match_the_checkpoint_is_refused(tmp_path):
  import flan_jax_tasks.default_mixture  # noqa: F401  (byte vocabulary: 259 ids, not 512)
  with pytest.raises(UserError, match="259 ids but the checkpoint .* has 512"):
    _first_loss(tmp_path, "default_add", initial_checkpoint_path=STORIES)


def test_a_directory_that_is_no_checkpoint_says_what_it_expected(tmp_path, story_task):
  with pytest.raises(UserError, match="neither a Hugging Face checkpoint"):
    _first_loss(tmp_path / "run", story_task, initial_checkpoint_path=str(tmp_path))
