"""Held-out conversations: the validation split, the prompt and answer evaluated, and
evaluation against a hand computation and against `infer --chat`."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import seqio

from flan_jax import metrics, model_dir as model_dir_lib
from flan_jax.data import chat_examples, chat_templates, vocabularies
from flan_jax.errors import UserError
from flan_jax.evaluation import evaluator
from flan_jax.inference import Predictor
from flan_jax.models.decoder import Decoder
from flan_jax.models.families import conversation_reader, family_for
from tiny import TINY_DECODER, dummy_inputs

BYTES = vocabularies.byte_vocabulary()
EOS = BYTES.eos_id


def conversation(n: int) -> list[dict]:
  return [{"role": "system", "content": "Be brief."},
          {"role": "user", "content": f"What is {n} plus {n}?"},
          {"role": "assistant", "content": f"{n} plus {n} is {2 * n}."},
          {"role": "user", "content": f"And {n} times two?"},
          {"role": "assistant", "content": f"Also {2 * n}."}]


def oasst_tree(n: int) -> dict:
  """An OpenAssistant tree with two replies: two conversations from one record."""
  return {"prompt": {"text": f"Name a number above {n}.", "role": "prompter", "replies": [
      {"text": f"{n + 1}.", "role": "assistant", "rank": 0, "replies": []},
      {"text": f"{n + 2}.", "role": "assistant", "rank": 1, "replies": []}]}}


@pytest.fixture(autouse=True)
def _fresh_registry():
  names = []
  yield names
  for name in names:
    seqio.TaskRegistry.remove(name)


def register(names, tmp_path, records, *, template="chatml", validation_records=2, name="chat"):
  path = tmp_path / f"{name}.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  names.append(chat_examples.register_chat_task(
      name, str(path), template=chat_templates.builtin(template), vocabulary=BYTES,
      bos_id=1, validation_records=validation_records))
  return seqio.get_mixture_or_task(name)


def test_the_last_records_are_held_out_whole_and_training_never_reads_them(_fresh_registry,
                                                                           tmp_path):
  records = [{"messages": conversation(n)} for n in range(4)] + [oasst_tree(10), oasst_tree(20)]
  task = register(_fresh_registry, tmp_path, records)
  source = task.source
  assert task.splits == ("train", "validation")
  assert source.count("train") == 4 and source.count("validation") == 4  # two trees, two paths each
  lengths = {"inputs": 512, "targets": 512}
  train_text = [source.example("train", i, lengths)["targets_pretokenized"] for i in range(4)]
  assert all("above" not in text for text in train_text)  # no tree's opening in training
  held_out = [source.example("validation", i, lengths) for i in range(4)]
  assert sorted(e["targets_pretokenized"] for e in held_out) == ["11.", "12.", "21.", "22."]
  # The prompt is the conversation up to the answer, ready for it, as inference renders it.
  assert held_out[0]["inputs_pretokenized"] == chat_templates.builtin("chatml").render(
      [{"role": "user", "content": "Name a number above 10."}], add_generation_prompt=True)


def test_holding_out_every_record_or_none_of_the_answers_is_one_clear_error(_fresh_registry,
                                                                            tmp_path):
  task = register(_fresh_registry, tmp_path, [{"messages": conversation(1)}], validation_records=1)
  with pytest.raises(UserError, match="validation_records=1 holds out every record"):
    task.source.count("train")
  # Files never give a conversation ending with the user (its trailing turn is dropped and
  # counted when read); another loader may.
  from flan_jax.data.conversations import Conversations
  unanswered = lambda: Conversations([conversation(1), conversation(2)[:-1]], records=[0, 1])
  source = chat_examples.ChatSource(unanswered, chat_templates.builtin("chatml"), BYTES,
                                    validation_records=1, salt="open")
  with pytest.raises(UserError, match="none of the conversations of the last 1 records ends "
                                      "with an assistant turn"):
    source.count("validation")
  with pytest.raises(UserError, match="validation_records=-1"):
    chat_examples.ChatSource(lambda: None, chat_templates.builtin("chatml"), BYTES,
                             validation_records=-1)


@pytest.mark.parametrize("name", chat_templates.BUILTIN_NAMES)
def test_the_evaluated_answer_is_what_training_trains_after_the_inference_prompt(name):
  template, turns = chat_templates.builtin(name), conversation(3)
  prompt, answer, dropped = chat_examples.answer_example(template, BYTES, turns, 1000, bos_id=1)
  ids, weights = chat_examples.tokenize(template, BYTES, turns, train_on="last", bos_id=1)
  assert dropped == 0
  np.testing.assert_array_equal(prompt, chat_examples.prompt_ids(template, BYTES, turns[:-1],
                                                                 bos_id=1))
  np.testing.assert_array_equal(np.concatenate([prompt, answer]), ids[:len(prompt) + len(answer)])
  np.testing.assert_array_equal(answer, ids[weights == 1])
  assert answer[-1] == EOS
  # A short prompt buffer: the earlier exchange goes whole, the system prompt stays.
  short, same_answer, dropped = chat_examples.answer_example(template, BYTES, turns,
                                                             len(prompt) - 1, bos_id=1)
  assert dropped == 1 and len(short) < len(prompt)
  kept = [turns[0], *turns[3:4]]
  np.testing.assert_array_equal(short, chat_examples.prompt_ids(template, BYTES, kept, bos_id=1))
  np.testing.assert_array_equal(same_answer, answer)


def _model():
  network = family_for(TINY_DECODER, bos_id=1, num_token_ids=BYTES.vocab_size)
  decoder = Decoder(TINY_DECODER)
  params = decoder.init(jax.random.key(0), *dummy_inputs(8))["params"]
  return network, decoder, params


def _reference_nll(decoder, params, template, turns, first: int | None = None
                   ) -> tuple[float, int]:
  """The final answer's summed negative log-likelihood (of its `first` tokens), by hand
  from the model's logits over the whole conversation (BOS first), with training's
  last-turn weights."""
  ids, weights = chat_examples.tokenize(template, BYTES, turns, train_on="last", bos_id=1)
  if first is not None:
    weights = weights * (np.cumsum(weights) <= first)
  inputs = np.asarray([[1, *ids[:-1]]], np.int32)
  positions = np.arange(len(ids), dtype=np.int32)[None]
  ones, zeros = np.ones_like(inputs), np.zeros_like(inputs)
  logits = decoder.apply({"params": params}, inputs, positions, ones, zeros)[0]
  # Over the tokenizer's ids only: the table's padding rows are no token (as scoring has it).
  log_probs = jax.nn.log_softmax(np.asarray(logits, np.float32)[0, :, :BYTES.vocab_size], axis=-1)
  picked = log_probs[np.arange(len(ids)), ids]
  return float(-(picked * weights).sum()), int(weights.sum())


def test_held_out_perplexity_equals_a_hand_computation_and_replies_equal_infer_chat(
    _fresh_registry, tmp_path, monkeypatch):
  replies = {}
  recording = lambda targets, predictions: replies.update(texts=list(predictions)) or {}
  monkeypatch.setattr(metrics, "rouge_l", recording)  # what the task's predictions were
  records = [{"messages": conversation(n)} for n in range(6)]
  template = chat_templates.builtin("zephyr")
  task = register(_fresh_registry, tmp_path, records, template="zephyr", validation_records=3)
  network, decoder, params = _model()
  lengths = {"inputs": 160, "targets": 24}
  model = evaluator.make_eval_model(network, params, lengths, EOS, batch_size=4)
  results, counts = evaluator.evaluate_task(task, model, evaluator.EvalConfig(seed=0))

  held_out = [conversation(n) for n in range(3, 6)]
  by_hand = [_reference_nll(decoder, params, template, turns) for turns in held_out]
  nll = sum(total for total, _ in by_hand) / sum(tokens for _, tokens in by_hand)
  assert counts.inputs_cut == 0 and counts.targets_cut == 0
  np.testing.assert_allclose(results["target_nll"], nll, rtol=1e-5)
  np.testing.assert_allclose(results["target_perplexity"], np.exp(nll), rtol=1e-5)

  # The replies evaluation scores are the ones `infer --chat` gives for the same turns
  # (which reads them causally, as training did, though the model is a prefix-LM).
  predictor = Predictor(conversation_reader(network), params, BYTES, max_input_length=lengths["inputs"],
                        max_new_tokens=lengths["targets"], batch_size=4, chat_template=template)
  order = [task.source.example("validation", i, lengths)["targets_pretokenized"]
           for i in range(3)]
  expected = predictor.chat([next(t[:-1] for t in held_out if t[-1]["content"] == answer)
                             for answer in order])
  assert replies["texts"] == [reply.strip() for reply in expected]

  # With a shorter prompt buffer, early exchanges go, and each prompt shortened is counted.
  short = evaluator.make_eval_model(network, params, {"inputs": 96, "targets": 24}, EOS, 4)
  assert evaluator.evaluate_task(task, short, evaluator.EvalConfig())[1].inputs_cut == 3
  # Answers longer than the targets are scored on their first tokens (no EOS forced in
  # where the answer goes on), and counted.
  cut = evaluator.make_eval_model(network, params, {"inputs": 160, "targets": 4}, EOS, 4)
  results, counts = evaluator.evaluate_task(task, cut, evaluator.EvalConfig())
  by_hand = [_reference_nll(decoder, params, template, turns, first=4) for turns in held_out]
  assert counts.targets_cut == 3 and all(tokens == 4 for _, tokens in by_hand)
  np.testing.assert_allclose(results["target_nll"], sum(t for t, _ in by_hand) / 12, rtol=1e-5)


def test_a_named_template_must_be_the_one_the_checkpoint_recorded():
  zephyr, chatml = chat_templates.builtin("zephyr"), chat_templates.builtin("chatml")
  unset = chat_examples.ChatTask("c", "unused.jsonl")
  assert unset.resolve_template(recorded=zephyr) == zephyr
  assert unset.resolve_template() == chatml  # a new run's default
  assert chat_examples.ChatTask("c", "x", template="zephyr").resolve_template(zephyr) == zephyr
  with pytest.raises(UserError, match="names chat template 'chatml', but the checkpoint was "
                                      "trained with 'zephyr'"):
    chat_examples.ChatTask("c", "x", template="chatml").resolve_template(recorded=zephyr)


def test_target_perplexity_by_hand():
  scores = [metrics.TargetScore(-3.0, 2), metrics.TargetScore(-1.0, 2)]
  result = metrics.target_perplexity(["a", "b"], scores)
  assert result["target_nll"] == pytest.approx(1.0)
  assert result["target_perplexity"] == pytest.approx(np.e)


def test_a_prefix_lm_run_on_conversations_answers_causally_and_keeps_its_template(
    _fresh_registry, tmp_path):
  from flan_jax import finetune, inference
  from flan_jax.models.decoder import DecoderConfig
  from flan_jax.training.trainer import TrainerConfig
  records = [{"messages": conversation(n)} for n in range(6)]
  register(_fresh_registry, tmp_path, records, template="zephyr", validation_records=2)
  model_dir = tmp_path / "run"
  settings = dict(
      model_dir=str(model_dir), mixture_or_task_name="chat",
      task_feature_lengths={"inputs": 96, "targets": 96}, batch_size=2,
      trainer=TrainerConfig(train_steps=1, progress_bar=False),
      model=DecoderConfig(vocab_size=BYTES.vocab_size, num_layers=1, embed_dim=16, num_heads=2,
                          num_kv_heads=2, head_dim=8, mlp_dim=32),  # a prefix-LM
      evaluation=evaluator.EvalConfig(max_examples_per_task=2, batch_size=2),
      evaluate_before=False, truncation_sample=0)
  results = finetune.finetune(**settings)
  assert results["after"]["chat/target_perplexity"] > 1
  predictor = inference.load_predictor(str(model_dir), chat=True)
  assert predictor.chat_template == chat_templates.builtin("zephyr")
  assert not predictor.network.config.prefix_lm  # the prompt read as training read it
  assert inference.load_predictor(str(model_dir)).network.config.prefix_lm  # FLAN prompts
  held_out = json.loads((model_dir / model_dir_lib.HELD_OUT_FILE).read_text())
  assert held_out == {"chat": {"path": str(tmp_path / "chat.jsonl"), "validation_records": 2}}

  def reregister(**changes):
    seqio.TaskRegistry.remove("chat")
    _fresh_registry.remove("chat")
    register(_fresh_registry, tmp_path, records, **{"template": "zephyr",
                                                    "validation_records": 2, **changes})

  # Resumed with another template, its checkpoints would answer in two formats; with
  # another hold-out, it would train on conversations it evaluated on.
  reregister(template="chatml")
  with pytest.raises(UserError, match="records chat template 'zephyr', but this run renders "
                                      "conversations with 'chatml'"):
    finetune.finetune(**settings)
  reregister(validation_records=1)
  with pytest.raises(UserError, match="chat held out .*'validation_records': 2.*but this run "
                                      "holds out .*'validation_records': 1"):
    finetune.finetune(**settings)
  # Evaluating the checkpoint later: the same records, or an error saying which.
  same = chat_examples.ChatTask("chat", str(tmp_path / "chat.jsonl"), validation_records=2)
  chat_examples.check_held_out(held_out, same, "x")
  with pytest.raises(UserError, match="Set ChatTask.validation_records=2"):
    chat_examples.check_held_out(held_out, dataclasses.replace(same, validation_records=5), "x")
  other_file = dataclasses.replace(same, path=str(tmp_path / "other.jsonl"), validation_records=5)
  chat_examples.check_held_out(held_out, other_file, "x")  # none of it was trained on


def test_a_checkpoint_without_a_template_or_with_a_damaged_one_is_an_error_not_chatml(tmp_path):
  from flan_jax import checkpoint_eval
  def recorded_template():
    return chat_examples.trained_template(model_dir_lib.resolve(str(tmp_path)).chat_template_file())

  assert recorded_template() is None
  unnamed = chat_examples.ChatTask("c", str(tmp_path / "c.jsonl"), validation_records=1)
  with pytest.raises(UserError, match="records no chat template .* set ChatTask.template"):
    checkpoint_eval.evaluate_checkpoint(str(tmp_path), "c", {"inputs": 8, "targets": 8},
                                        str(tmp_path / "out"), chat_tasks=[unnamed])
  (tmp_path / model_dir_lib.TEMPLATE_FILE).write_text("{not json")
  with pytest.raises(UserError):
    recorded_template()
