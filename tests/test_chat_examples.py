"""Conversations as token ids and loss weights: trained spans, EOS, BOS, truncation, drops."""

import contextlib
import json
import os
import re

import numpy as np
import pytest
import seqio

from flan_jax.data import chat_examples, chat_templates, conversations, pipeline, vocabularies
from flan_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES_TOKENIZER = os.path.join(os.path.dirname(REPO), "shared", "data", "models",
                                 "stories260K-hf", "tokenizer.model")
BYTES = vocabularies.byte_vocabulary()
EOS = BYTES.eos_id
TURNS = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "Of Italy?"},
    {"role": "assistant", "content": "Rome."},
    {"role": "user", "content": "Of Spain?"},
    {"role": "assistant", "content": "Madrid."},
]


def byte_ids(text: str) -> list[int]:
  """ByteVocabulary's ids, by hand: each UTF-8 byte plus its 3 special ids."""
  return [b + 3 for b in text.encode()]


def trained_runs(ids, weights) -> list[list[int]]:
  runs, current = [], []
  for token, weight in zip(ids.tolist(), weights.tolist()):
    if weight:
      current.append(token)
    elif current:
      runs, current = runs + [current], []
  return runs + ([current] if current else [])


# What each built-in template trains of an answer: its text and its end of turn, which
# is the vocabulary's EOS id (Llama 2 puts a space on either side of the answer).
ANSWER = {"chatml": "{}", "llama2": " {} ", "llama3": "{}", "zephyr": "{}"}


@pytest.mark.parametrize("name", chat_templates.BUILTIN_NAMES)
def test_every_assistant_turn_and_its_eos_are_trained_and_nothing_else(name):
  template = chat_templates.builtin(name)
  ids, weights = chat_examples.tokenize(template, BYTES, TURNS, bos_id=1)
  expected = [byte_ids(ANSWER[name].format(answer)) + [EOS]
              for answer in ("Paris.", "Rome.", "Madrid.")]
  assert trained_runs(ids, weights) == expected
  assert int(weights.sum()) == sum(map(len, expected))
  # Only the last answer with train_on="last"; the ids themselves do not change.
  last_ids, last_weights = chat_examples.tokenize(template, BYTES, TURNS, train_on="last", bos_id=1)
  np.testing.assert_array_equal(last_ids, ids)
  assert trained_runs(last_ids, last_weights) == expected[-1:]


@pytest.mark.parametrize("name", chat_templates.BUILTIN_NAMES)
def test_the_prompt_at_inference_is_the_training_prompt_token_for_token(name):
  template = chat_templates.builtin(name)
  ids, weights = chat_examples.tokenize(template, BYTES, TURNS, bos_id=1)
  prompt = chat_examples.prompt_ids(template, BYTES, TURNS[:-1], bos_id=1)
  last_answer = np.flatnonzero(weights)[-len(byte_ids(ANSWER[name].format("Madrid."))) - 1]
  np.testing.assert_array_equal(prompt, ids[:last_answer])
  # The text is byte-identical too: the rendered prompt is the conversation's start.
  assert template.render(TURNS).startswith(template.render(TURNS[:-1], add_generation_prompt=True))


@pytest.mark.skipif(not os.path.isfile(STORIES_TOKENIZER), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["llama2"])
def test_no_double_bos_with_a_llama_tokenizer(name):
  vocabulary = vocabularies.sentencepiece_vocabulary(STORIES_TOKENIZER)
  bos = 1  # Llama's BOS; the packer starts every row with it
  ids, weights = chat_examples.tokenize(chat_templates.builtin(name), vocabulary, TURNS,
                                        bos_id=bos)
  assert ids[0] != bos  # the template's leading BOS text is dropped: the row starts with one
  row = next(iter(chat_examples_rows([{"targets": ids, "targets_weights": weights}], bos)))
  inputs = row["decoder_input_tokens"]
  assert inputs[0] == bos and inputs[1] != bos
  # Llama 2 opens each later exchange with <s> (the id, not its letters); Llama 3 never.
  assert int((ids == bos).sum()) == (2 if name == "llama2" else 0)
  assert "<s>" not in vocabulary.decode(ids.tolist())
  assert ids[weights.astype(bool)][-1] == vocabulary.eos_id  # the model learns to stop


def chat_examples_rows(examples, bos_id, length=1024):
  from flan_jax.data import packing
  examples = [{"inputs": np.zeros(0, np.int32), **e} for e in examples]
  return packing.pack(examples, {"inputs": 0, "targets": length}, bos_id=bos_id)


def test_too_long_conversations_lose_whole_early_exchanges_never_the_final_answer():
  template = chat_templates.builtin("chatml")
  full, _ = chat_examples.tokenize(template, BYTES, TURNS)
  two_exchanges, _ = chat_examples.tokenize(template, BYTES, [TURNS[0], *TURNS[3:]])
  ids, weights, dropped = chat_examples.fit(template, BYTES, TURNS, len(full) - 1)
  assert dropped == 1
  np.testing.assert_array_equal(ids, two_exchanges)  # system prompt kept, first exchange out
  assert trained_runs(ids, weights)[-1] == byte_ids("Madrid.") + [EOS]
  # Not even the last exchange fits: nothing to train, so no example at all.
  last_alone, _ = chat_examples.tokenize(template, BYTES, [TURNS[0], *TURNS[5:]])
  assert chat_examples.fit(template, BYTES, TURNS, len(last_alone) - 1) is None


@pytest.fixture
def chat_file(tmp_path):
  path = tmp_path / "chats.jsonl"
  long_answer = "word " * 100
  rows = [{"messages": TURNS}] * 6 + [
      {"messages": [{"role": "user", "content": "Say a lot."},
                    {"role": "assistant", "content": long_answer}]}] * 2
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  return str(path)


def test_a_row_left_with_nothing_to_train_is_dropped_and_counted(chat_file):
  name = chat_examples.register_chat_task("chat_test_drops", chat_file,
                                          template=chat_templates.builtin("zephyr"),
                                          vocabulary=BYTES)
  try:
    lengths = {"inputs": 0, "targets": 200}  # the long answers (500+ tokens) never fit
    stream = pipeline.train_batches(name, lengths, 4, seed=0)
    for _ in range(5):
      batch = next(stream)
      # Every row trains on something: no all-masked row, no silent zero loss.
      assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()
    stats = stream.state()["packer"]["stats"]
    assert stats["dropped_examples"] > 0 and stats["examples"] > 0
    # Only conversations that never fit: one clear error, not an endless loop.
    with pytest.raises(UserError, match="longer than a row"):
      next(pipeline.train_batches(name, {"inputs": 0, "targets": 20}, 4, seed=0))
  finally:
    seqio.TaskRegistry.remove(name)


def test_a_chat_task_reads_the_same_with_data_workers(chat_file):
  name = chat_examples.register_chat_task("chat_test_workers", chat_file,
                                          template=chat_templates.builtin("llama3"),
                                          vocabulary=BYTES, bos_id=1)
  try:
    lengths = {"inputs": 0, "targets": 256}
    alone = pipeline.train_batches(name, lengths, 4, seed=3)
    parallel = pipeline.train_batches(name, lengths, 4, seed=3, workers=2)
    for _ in range(3):
      ours, theirs = next(parallel), next(alone)
      for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])
  finally:
    seqio.TaskRegistry.remove(name)


def test_one_string_for_bos_and_eos_ends_turns_with_eos():
  # GPT-2-style tokenizers use "<|endoftext|>" for both.
  source = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
  template = chat_templates.TemplateSpec("shared_marker", source, bos="<|endoftext|>",
                                         eos="<|endoftext|>")
  ids, weights = chat_examples.tokenize(template, BYTES, TURNS, bos_id=7)
  assert trained_runs(ids, weights)[0] == byte_ids("Paris.") + [EOS]
  assert 7 not in ids.tolist()


def test_a_bos_inside_the_conversation_without_a_bos_id_is_an_error_not_letters():
  with pytest.raises(UserError, match="inside the conversation.*no BOS id"):
    chat_examples.tokenize(chat_templates.builtin("llama2"), BYTES, TURNS, bos_id=None)


def test_conversations_the_template_rejects_are_counted_and_left_out_at_load(tmp_path):
  path = tmp_path / "chats.jsonl"
  no_system = TURNS[1:]
  path.write_text("\n".join(json.dumps({"messages": m}) for m in [no_system, TURNS, no_system])
                  + "\n")
  # Like Gemma's, a template that has no system turn and says so.
  chatml = chat_templates.builtin("chatml")
  refuses_system = chat_templates.TemplateSpec(
      "no_system", "{% if messages[0]['role'] == 'system' %}"
      "{{ raise_exception('System role not supported') }}{% endif %}" + chatml.source,
      bos=chatml.bos, eos=chatml.eos)
  name = chat_examples.register_chat_task("chat_test_rejected", str(path),
                                          template=refuses_system, vocabulary=BYTES, bos_id=1)
  try:
    task = seqio.get_mixture_or_task(name)
    assert task.source.counts["template_rejected"] == 1
    assert task.source.num_input_examples("train") == 2
    # The pre-training truncation report does not take a conversation that fits the
    # row for a cut target (conversations fit inputs + targets; the packer counts).
    lengths = {"inputs": 256, "targets": 16}
    counts = pipeline.report_truncation([task], lengths)[name]
    assert counts.examples == 0 and counts.targets_cut == 0
    batch = next(pipeline.train_batches(name, lengths, 2, seed=0))
    assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()
  finally:
    seqio.TaskRegistry.remove(name)


def test_a_file_without_conversations_says_so_rather_than_blame_the_template(tmp_path):
  def source(text):
    path = tmp_path / "chats.jsonl"
    path.write_text(text, encoding="utf-8")
    load = lambda: conversations.read_conversations(path)
    return chat_examples.ChatSource(load, chat_templates.builtin("chatml"), BYTES,
                                    salt="chat_test_empty", path=str(path))

  with pytest.raises(UserError, match=r"chats\.jsonl: the file holds no records"):
    source("").count()
  # An OpenAssistant prompt nobody answered is pruned, leaving nothing to train on.
  unanswered = {"prompt": {"role": "prompter", "text": "Anyone?", "replies": []}}
  with pytest.raises(UserError, match=r"chats\.jsonl holds no conversation to train on "
                                      r"\(0 conversations; 1 unanswered_prompt\)"):
    source(json.dumps(unanswered) + "\n").count()


@pytest.mark.skipif(not os.path.isfile(STORIES_TOKENIZER), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["llama2", "zephyr"])
def test_training_only_the_last_answer_keeps_the_ids_inference_sees(name):
  # The whole conversation is encoded at once whatever is trained, so the ids do not
  # depend on train_on, and the prompt inference encodes is where the answer starts.
  vocabulary = vocabularies.sentencepiece_vocabulary(STORIES_TOKENIZER)
  template = chat_templates.builtin(name)
  all_ids, _ = chat_examples.tokenize(template, vocabulary, TURNS, bos_id=1)
  last_ids, last_weights = chat_examples.tokenize(template, vocabulary, TURNS, train_on="last",
                                                  bos_id=1)
  np.testing.assert_array_equal(last_ids, all_ids)
  prompt = chat_examples.prompt_ids(template, vocabulary, TURNS[:-1], bos_id=1)
  np.testing.assert_array_equal(last_ids[:len(prompt)], prompt)
  assert last_weights[:len(prompt)].sum() == 0 and last_weights[len(prompt)] == 1


@pytest.mark.skipif(not os.path.isfile(STORIES_TOKENIZER), reason="needs ../shared/data")
@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_an_end_of_turn_marker_the_vocabulary_lacks_is_refused_naming_it(name):
  # A Llama SentencePiece vocabulary has no "<|im_end|>" or "<|eot_id|>": a server encodes
  # them as letters, so training them as the EOS id would serve another model.
  vocabulary = vocabularies.sentencepiece_vocabulary(STORIES_TOKENIZER)
  template = chat_templates.builtin(name)
  with pytest.raises(UserError, match=f"ends each turn with '{re.escape(template.eos)}', which "
                     "the vocabulary has no token for.*'zephyr' or 'llama2'"):
    chat_examples.tokenize(template, vocabulary, TURNS)
  # Without a template named, such a vocabulary gets Zephyr, which ends turns with its EOS.
  chosen = chat_examples.ChatTask(name="t", path="unused.jsonl").resolve_template(
      vocabulary=vocabulary)
  assert chosen.name == "zephyr" and chosen.eos == "</s>"
  assert chat_examples.ChatTask(name="t", path="x").resolve_template(vocabulary=BYTES).name == "chatml"


@contextlib.contextmanager
def _registered_failing(tmp_path, name, source, conversations=(TURNS, TURNS[:3])):
  """A task of `conversations` (records 1, 2, ...) rendered with template `source`,
  registered for the block."""
  path = tmp_path / f"{name}.jsonl"
  path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
  template = chat_templates.TemplateSpec(name, source)
  chat_examples.register_chat_task(name, str(path), template=template, vocabulary=BYTES)
  try:
    yield seqio.get_mixture_or_task(name), str(path)
  finally:
    seqio.TaskRegistry.remove(name)


def test_a_template_that_fails_everywhere_names_the_first_conversation_and_its_record(tmp_path):
  with _registered_failing(tmp_path, "chat_divides", "{{ 1 / 0 }}") as (task, path):
    with pytest.raises(UserError, match=rf"renders none of the 2 conversations\. The first: "
                                        rf"{re.escape(path)}, record 1: chat template "
                                        r"'chat_divides' .*ZeroDivisionError"):
      task.source.count()


def test_a_template_past_its_limits_stops_the_load_at_that_conversation(tmp_path):
  # Costly on the short conversation (record 2) only: not a rejection to count and skip
  # (each would spend the whole budget again), but one error that says where.
  costly = "{% if messages | length < 4 %}{{ range(10 ** 9) | length }}{% endif %}" + (
      chat_templates.builtin("chatml").source)
  with _registered_failing(tmp_path, "chat_costly", costly) as (task, path):
    with pytest.raises(UserError, match=rf"^{re.escape(path)}, record 2: chat template "
                                        r"'chat_costly' stopped .*a range of 1000000000 items"):
      task.source.count()


def test_a_template_that_fails_only_on_a_prompt_names_the_conversation_it_was_making(tmp_path):
  # The whole conversation renders at load; the prompts inside it only when tokenized.
  prompt_fails = "{% if add_generation_prompt %}{{ 1 / 0 }}{% endif %}" + (
      chat_templates.builtin("chatml").source)
  with _registered_failing(tmp_path, "chat_prompt_fails", prompt_fails) as (task, path):
    assert task.source.count() == 2
    with pytest.raises(UserError, match=rf"^{re.escape(path)}, record 2: chat template "
                                        r"'chat_prompt_fails' cannot render.*ZeroDivisionError"):
      task.source.example("train", 1, {"inputs": 0, "targets": 512})
