"""Preference pairs from four formats, their rows, each loss by hand, and bad settings."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.data import chat_examples, chat_templates, preference_pairs, preference_rows
from flan_jax.data import vocabularies
from flan_jax.errors import UserError
from flan_jax.preference_finetune import PreferenceConfig, PreferenceData
from flan_jax.training import preference_losses
from flan_jax.training.preference_losses import PairSums, PreferenceLoss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
OASST = os.path.join(DATA, "instruct", "oasst", "en_100_tree.jsonl")
BYTES = vocabularies.byte_vocabulary()
EOS = BYTES.eos_id
PROMPT = [{"role": "user", "content": "Capital of France?"}]


def _write(tmp_path, records, name="pairs.jsonl"):
  path = tmp_path / name
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_the_four_formats_read_to_the_same_pair(tmp_path):
  records = [
      {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
      {"prompt": [{"role": "user", "content": "Capital of France?"}],
       "chosen": [{"role": "assistant", "content": "Paris."}],
       "rejected": [{"role": "assistant", "content": "Rome."}]},
      {"chosen": [*PROMPT, {"role": "assistant", "content": "Paris."}],
       "rejected": [*PROMPT, {"role": "assistant", "content": "Rome."}]},
      {"chosen": "\n\nHuman: Capital of France?\n\nAssistant: Paris.",
       "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Rome."},
      {"prompt": {"role": "prompter", "text": "Capital of France?", "replies": [
          {"role": "assistant", "text": "Rome.", "rank": 1},
          {"role": "assistant", "text": "Paris.", "rank": 0}]}},
  ]
  read = preference_pairs.read_pairs(_write(tmp_path, records))
  assert [(p.prompt, p.chosen, p.rejected) for p in read.pairs] == [
      (tuple(PROMPT), "Paris.", "Rome.")] * 5
  assert [p.record for p in read.pairs] == [0, 1, 2, 3, 4]


def test_an_oasst_tree_pairs_every_better_ranked_reply_with_each_worse_one():
  if not os.path.isfile(OASST):
    pytest.skip("needs ../shared/data")
  read = preference_pairs.read_pairs(OASST)
  # 100 English trees: 212 prompts whose replies carry different ranks.
  assert read.counts["ranked_groups"] == 212
  lines = [json.loads(line) for line in open(OASST)]
  first = lines[0]["prompt"]
  ranked = sorted((r for r in first["replies"] if r.get("rank") is not None),
                  key=lambda r: r["rank"])
  expected = [(ranked[i]["text"], ranked[j]["text"]) for i in range(len(ranked))
              for j in range(i + 1, len(ranked)) if ranked[i]["rank"] < ranked[j]["rank"]]
  assert [(p.chosen, p.rejected) for p in read.pairs if p.record == 0 and len(p.prompt) == 1] \
      == expected
  split = preference_pairs.split_pairs(read.pairs, 10)
  assert {p.record for p in split["validation"]} <= set(range(90, 100))
  assert len(split["train"]) + len(split["validation"]) == len(read.pairs)


@pytest.mark.parametrize("record, fragments", [
    ({"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}, ["line 2", "the same answer"]),
    ({"prompt": "Q?", "chosen": "A."}, ["line 2", "rejected is missing"]),
    ({"chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
      "rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "B."}]},
     ["line 2", "chosen[0] and rejected[0] differ"]),
    ({"chosen": "\n\nHuman: Q?\n\nAssistant: A.", "rejected": "\n\nHuman: Q?"},
     ["line 2", "rejected ends with a Human turn"]),
])
def test_a_bad_pair_is_one_error_naming_file_line_and_field_or_skipped_and_counted(
    tmp_path, record, fragments):
  good = {"prompt": "Q?", "chosen": "A.", "rejected": "B."}
  path = _write(tmp_path, [good, record])
  with pytest.raises(UserError) as error:
    preference_pairs.read_pairs(path)
  for fragment in [path, *fragments]:
    assert fragment in str(error.value)
  skipped = preference_pairs.read_pairs(path, on_error="skip")
  assert len(skipped.pairs) == 1 and skipped.counts["bad_record"] == 1
  assert fragments[-1] in skipped.problems[0]


def _pair(prompt, chosen, rejected, record=0):
  return preference_pairs.PreferencePair(tuple(prompt), chosen, rejected, record)


@pytest.mark.parametrize("name", chat_templates.BUILTIN_NAMES)
def test_a_pair_shares_the_inference_prompt_and_trains_each_answer_with_its_end_of_turn(name):
  template = chat_templates.builtin(name)
  pair = _pair(PROMPT, "Paris.", "Rome, surely.")
  tokenized = preference_rows.tokenize_pair(template, BYTES, pair, bos_id=1)
  # The prompt is what `infer --chat` feeds the model.
  np.testing.assert_array_equal(tokenized.prompt,
                                chat_examples.prompt_ids(template, BYTES, PROMPT, bos_id=1))
  answer = {"chatml": "{}", "llama2": " {} ", "llama3": "{}", "zephyr": "{}"}[name]
  for ids, text in ((tokenized.chosen, "Paris."), (tokenized.rejected, "Rome, surely.")):
    assert ids.tolist() == [b + 3 for b in answer.format(text).encode()] + [EOS]
  # In a row: each answer (and nothing else) under its pair's slot; prompt twice, whole.
  row = preference_rows.pair_row([tokenized], 256, 2, bos_id=1)
  weights = row["decoder_loss_weights"].astype(bool)
  targets = row["decoder_target_tokens"]
  chosen = weights & (row["preference_chosen"] > 0)
  assert targets[chosen].tolist() == tokenized.chosen.tolist()
  assert targets[weights & ~chosen].tolist() == tokenized.rejected.tolist()
  assert set(row["preference_pair_ids"][weights]) == {1}
  assert not row["preference_pair_ids"][~weights].any()
  assert row["preference_pair_slots"].tolist() == [1, 0]
  segments = row["decoder_segment_ids"]
  assert targets[segments == 2][:len(tokenized.prompt)].tolist() == tokenized.prompt.tolist()
  assert row["decoder_positions"][segments == 2][0] == 0  # the rejected side starts afresh


def test_pairs_pack_in_order_whole_and_a_pair_too_long_is_dropped_and_counted():
  template = chat_templates.builtin("chatml")
  pairs = [preference_rows.tokenize_pair(template, BYTES, _pair(PROMPT, "A" * n, "B"), index=i)
           for i, n in enumerate((5, 6, 300, 7))]
  kept = preference_rows.fitting(pairs, 256)
  assert [p.index for p in kept] == [0, 1, 3]
  rows = list(preference_rows.rows(kept, 256, 2))
  assert [r["preference_pair_index"].tolist() for r in rows] == [[0, 1], [3, 0]]
  assert [r["preference_pair_slots"].tolist() for r in rows] == [[1, 1], [1, 0]]
  assert rows[0]["decoder_segment_ids"].max() == 4
  with pytest.raises(UserError, match="none of the 1 preference pairs fits"):
    preference_rows.fitting(pairs[2:3], 256)


def test_two_processes_read_the_rows_one_process_reads():
  template = chat_templates.builtin("chatml")
  pairs = [preference_rows.tokenize_pair(template, BYTES, _pair(PROMPT, "A" * (i + 1), "B"),
                                         index=i) for i in range(10)]
  stream = lambda **kw: preference_rows.train_batches(pairs, 256, 4, pairs_per_row=1, seed=3,
                                                      **kw)
  one = [b for _, b in zip(range(6), stream())]
  halves = [[b for _, b in zip(range(6), stream(shard_index=i, num_shards=2))] for i in (0, 1)]
  for whole, first, second in zip(one, *halves):
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([first[key], second[key]]))
  # A resumed stream skips exactly the batches trained.
  for skipped, straight in zip(stream(skip_batches=4), one[4:]):
    np.testing.assert_array_equal(skipped["decoder_target_tokens"],
                                  straight["decoder_target_tokens"])


# The losses against a hand computation, on two pairs' log-prob sums.
SUMS = dict(chosen=np.array([-10.0, -30.0]), rejected=np.array([-12.0, -25.0]),
            chosen_tokens=np.array([4.0, 10.0]), rejected_tokens=np.array([5.0, 8.0]),
            reference_chosen=np.array([-11.0, -29.0]), reference_rejected=np.array([-11.5, -26.0]))


def _by_hand(config: PreferenceLoss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  s = SUMS
  log_sigmoid = lambda x: -np.log1p(np.exp(-x))
  b = config.beta
  if config.loss_type in ("simpo", "orpo"):
    c, r = s["chosen"] / s["chosen_tokens"], s["rejected"] / s["rejected_tokens"]
    if config.loss_type == "simpo":
      z = b * ((c - r) - config.simpo_gamma / b)
      loss = -(1 - config.label_smoothing) * log_sigmoid(z) - config.label_smoothing * log_sigmoid(-z)
    else:
      odds = lambda p: p - np.log(1 - np.exp(p))
      loss = -b * log_sigmoid(odds(c) - odds(r))
    return loss, b * c, b * r
  c = s["chosen"] - s["reference_chosen"]
  r = s["rejected"] - s["reference_rejected"]
  if config.loss_type == "sigmoid":
    z = b * (c - r)
    loss = -(1 - config.label_smoothing) * log_sigmoid(z) - config.label_smoothing * log_sigmoid(-z)
  elif config.loss_type == "hinge":
    loss = np.maximum(0, 1 - b * (c - r))
  else:
    loss = (c / s["chosen_tokens"] - r / s["rejected_tokens"] - 1 / (2 * b)) ** 2
  return loss, b * c, b * r


@pytest.mark.parametrize("config", [
    PreferenceLoss("sigmoid", beta=0.1), PreferenceLoss("sigmoid", beta=0.3, label_smoothing=0.2),
    PreferenceLoss("ipo", beta=0.5), PreferenceLoss("hinge", beta=0.4),
    PreferenceLoss("simpo", beta=2.0, simpo_gamma=1.0, label_smoothing=0.1),
    PreferenceLoss("orpo", beta=0.1)], ids=str)
def test_every_loss_equals_a_hand_computation(config):
  sums = PairSums(**{k: jnp.asarray(v[None], jnp.float32) for k, v in SUMS.items()})
  loss, metrics = preference_losses.pair_losses(config, sums)
  expected, chosen_reward, rejected_reward = _by_hand(config)
  np.testing.assert_allclose(np.asarray(loss)[0], expected, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"])[0], chosen_reward, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(metrics["rewards/margins"])[0],
                             chosen_reward - rejected_reward, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(metrics["rewards/accuracies"])[0],
                                (chosen_reward > rejected_reward).astype(np.float32))


@pytest.mark.parametrize("settings, fragment", [
    (dict(beta=0.0), "beta must be > 0"),
    (dict(loss_type="dpo_magic"), "is not a preference loss"),
    (dict(loss_type="simpo", reference="frozen"), "is reference-free"),
    (dict(reference="lora"), "use one of frozen, precomputed"),
    (dict(loss_type="ipo", label_smoothing=0.1), "applies to 'sigmoid' and 'simpo' only"),
])
def test_bad_settings_are_one_clear_error(settings, fragment):
  with pytest.raises(UserError, match=fragment):
    PreferenceConfig(data=PreferenceData("pairs.jsonl"), **settings).check()


def test_a_bad_setting_on_the_command_line_is_one_error_line_and_exit_2(tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, ".pp"),
                                         os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/dpo_quickstart.gin",
       f"--gin.MODEL_DIR={tmp_path / 'run'}", "--gin.PreferenceConfig.beta=-1.0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and "beta must be > 0" in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_batch_the_devices_cannot_split_is_refused_before_anything_is_written(tmp_path):
  from flan_jax import preference_finetune
  from flan_jax.training.trainer import TrainerConfig
  with pytest.raises(UserError, match="BATCH_SIZE must be a whole number of at least 1"):
    preference_finetune.run(model_dir=str(tmp_path / "run"),
                            preference=PreferenceConfig(data=PreferenceData("pairs.jsonl")),
                            task_feature_lengths={"inputs": 8, "targets": 8}, batch_size=0,
                            trainer=TrainerConfig(train_steps=1))
  assert not (tmp_path / "run").exists()


class _GivenLogits:
  """A model family whose "parameters" are its logits."""

  @staticmethod
  def logits(logits, batch, dropout_rng=None):
    return logits


@pytest.mark.parametrize("loss_type", preference_losses.LOSS_TYPES)
def test_an_empty_pair_slot_changes_nothing(loss_type):
  """A row with room for two pairs and one in it: the loss, its metrics and its gradient
  are those of the pair in a row of its own (and finite: ORPO's log-odds of an empty
  slot would not be)."""
  template = chat_templates.builtin("chatml")
  pair = preference_rows.tokenize_pair(template, BYTES, _pair(PROMPT, "Paris.", "Rome."))
  config = PreferenceLoss(loss_type, beta=0.5)
  loss_fn = preference_losses.preference_loss(config)
  results = []
  for slots in (1, 2):
    row = preference_rows.pair_row([pair], 160, slots)
    batch = {k: jnp.asarray(v[None]) for k, v in row.items()}
    batch["reference_log_probs"] = jnp.asarray(
        np.random.default_rng(0).normal(-1, 0.1, (1, 160)) * row["decoder_loss_weights"],
        jnp.float32)
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 160, BYTES.vocab_size)),
                         jnp.float32)
    value = lambda l: (lambda out: (out[0] / out[1], out[2]))(loss_fn(_GivenLogits, l, batch, None))
    (loss, sums), grad = jax.value_and_grad(value, has_aux=True)(logits)
    results.append((float(loss), {k: float(v) for k, v in sums.items()}, np.asarray(grad)))
  (loss_1, sums_1, grad_1), (loss_2, sums_2, grad_2) = results
  assert np.isfinite(loss_2) and np.isfinite(grad_2).all()
  assert loss_2 == pytest.approx(loss_1, rel=1e-6)
  assert sums_2 == pytest.approx(sums_1, rel=1e-6)
  np.testing.assert_allclose(grad_2, grad_1, rtol=1e-5, atol=1e-7)


def test_finetuning_settings_in_a_preference_run_are_an_error_not_ignored(tmp_path):
  import gin
  from flan_jax import gin_utils, train
  gin.clear_config()
  try:
    gin_utils.parse(["dpo_quickstart.gin"], [f"MODEL_DIR = '{tmp_path}'",
                                              "train.mixture_or_task_name = 'oasst_chat'"])
    with pytest.raises(UserError, match="train.mixture_or_task_name is set too"):
      train.train()
  finally:
    gin.clear_config()
  assert not (tmp_path / "config.gin").exists()


def test_lora_bound_on_the_model_config_of_a_preference_run_is_an_error_not_dropped(tmp_path):
  """Adapters named on the model config (DecoderConfig.lora) would vanish when the starting
  checkpoint replaces that config, and the whole policy would train: refused instead."""
  import gin
  from flan_jax import gin_utils, train
  gin.clear_config()
  try:
    gin_utils.parse(["dpo_quickstart.gin"], [f"MODEL_DIR = '{tmp_path}'",
                                              "train.model = @DecoderConfig()",
                                              "DecoderConfig.lora = @LoraConfig()"])
    with pytest.raises(UserError, match="lora"):
      train.train()
  finally:
    gin.clear_config()
  assert not (tmp_path / "config.gin").exists()
