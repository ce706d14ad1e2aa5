"""The LoRA quickstart: the chat quickstart's run with rank-8 adapters on a frozen
stories260K, which the gin file alone sets up."""

import json
import os

import jax
import numpy as np
import pytest

from flan_jax.model_dir import LORA_BASE_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(SHARED, "models", "stories260K-hf")
OASST = os.path.join(SHARED, "instruct", "oasst", "en_100_tree.jsonl")


def _adapter_count_by_hand(config) -> int:
  """Rank 8 on q, k, v, o, gate, up and down of every layer: A [in, 8] and B [8, out]."""
  E, H, K, D, F = (config["embed_dim"], config["num_heads"], config["num_kv_heads"],
                   config["head_dim"], config["mlp_dim"])
  shapes = [(E, H * D), (E, K * D), (E, K * D), (H * D, E), (E, F), (E, F), (F, E)]
  return config["num_layers"] * sum(8 * (fan_in + fan_out) for fan_in, fan_out in shapes)


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="needs ../shared/data")
def test_the_lora_quickstart_trains_adapters_alone_and_evaluates_before_and_after(
    tmp_path, monkeypatch):
  import gin
  from flan_jax import gin_utils, train
  from flan_jax.models import convert, lora
  model_dir = tmp_path / "lora"
  gin.clear_config()
  monkeypatch.chdir(os.path.dirname(STORIES))  # the base given relative, as the gin file does
  try:
    # The quickstart as written, made tiny: 2 steps of 2 rows, 4 held-out conversations
    # with 32 answer tokens.
    gin_utils.parse(["lora_quickstart.gin"], [
        f"MODEL_DIR = '{model_dir}'", f"CHAT_DATA = '{OASST}'",
        f"INITIAL_CHECKPOINT_PATH = '{os.path.basename(STORIES)}'", "TRAIN_STEPS = 2", "BATCH_SIZE = 2",
        "TASK_FEATURE_LENGTHS = {'inputs': 480, 'targets': 32}", "train.truncation_sample = 0",
        "EvalConfig.max_examples_per_task = 4", "EvalConfig.batch_size = 4"])
    train.train()
  finally:
    gin.clear_config()

  evaluated = json.loads((model_dir / "eval" / "heldout.json").read_text())
  before, after = evaluated["before"], evaluated["after"]
  assert before["oasst_chat/target_perplexity"] > 1
  # Two small steps already move the held-out loss: the adapters are in the model.
  assert after["oasst_chat/target_nll"] != before["oasst_chat/target_nll"]
  # The run records the base it froze, and its checkpoints hold the adapters alone: as
  # many values as rank 8 on every linear layer of stories260K gives by hand.
  recorded = json.loads((model_dir / LORA_BASE_FILE).read_text())
  # Recorded absolute, so the run's base is found from any working directory.
  assert recorded["path"] == os.path.realpath(STORIES) or recorded["path"] == STORIES
  monkeypatch.chdir(tmp_path)
  assert lora.has_adapters(convert.load_orbax(str(model_dir))[1])
  config = json.loads((model_dir / "flan_jax_config.json").read_text())
  assert config["lora"]["rank"] == 8 and config["lora"]["target_modules"] == ["all-linear"]
  _, adapters, _ = convert.load_orbax(str(model_dir), with_base=False)
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(adapters)]
  assert lora.has_adapters(adapters)
  assert sum(leaf.size for leaf in leaves) == lora.adapter_count(adapters)
  assert lora.adapter_count(adapters) == _adapter_count_by_hand(config) == 46_240
