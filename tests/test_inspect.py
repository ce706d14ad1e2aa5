"""`python -m flan_jax.inspect_data` and `flan_jax.data.inspect`: names, rendered examples,
statistics and a plot."""

import io
import os
import subprocess
import sys

import seqio

import flan_jax_tasks.default_mixture  # noqa: F401
from flan_jax.data import inspect

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_list_prints_every_task_and_mixture_one_per_line():
  result = subprocess.run([sys.executable, "-m", "flan_jax.inspect_data", "--list"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  names = result.stdout.split()
  assert "default_train" in names and "default_add" in names and "default_heldout" in names
  assert len(names) == len(set(names))


def test_report_shows_the_loss_mask_counts_rates_truncation_and_packing(tmp_path):
  out = io.StringIO()
  tasks = ["default_add_zs_noopt", "default_list_sort_zs_noopt", "default_double_zs_noopt",
           "default_double_fs_noopt"]
  seqio.MixtureRegistry.add("inspect_test_mixture", tasks, default_rate=1.0)
  try:
    report = inspect.inspect("inspect_test_mixture", num_examples=1, sample_size=20,
                             lengths={"inputs": 30, "targets": 8},
                             plot_path=str(tmp_path / "rates.png"), out=out)
  finally:
    seqio.MixtureRegistry.remove("inspect_test_mixture")
  text = out.getvalue()
  assert "⟦" in text and "<eos>⟧" in text  # targets are what the loss sees
  assert abs(sum(report["rates"].values()) - 1) < 1e-9
  assert report["tasks"]["default_add_zs_noopt"]["examples"] == 5_000
  # Prompts are often longer than 30 bytes and list_sort answers longer than 8.
  assert report["tasks"]["default_add_zs_noopt"]["truncated_inputs"] > 0
  assert report["tasks"]["default_list_sort_zs_noopt"]["truncated_targets"] > 0
  assert report["tasks"]["default_double_zs_noopt"]["truncated_inputs"] == 0
  # Few-shot prompts are counted as training reads them: exemplars that do not fit are
  # dropped first, so at 30 bytes the zero-exemplar prompt remains, and nothing is cut.
  assert report["tasks"]["default_double_fs_noopt"]["truncated_inputs"] == 0
  assert 0.5 < report["packing_efficiency"] <= 1.0
  assert (tmp_path / "rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_mask_rendering_marks_only_target_tokens():
  import numpy as np
  vocabulary = flan_jax_tasks.default_mixture.byte_vocabulary()
  prompt, answer = vocabulary.encode("2+2?"), vocabulary.encode("4")
  tokens = np.array(prompt + [1] + answer + [1, 0, 0])
  weights = np.array([0] * (len(prompt) + 1) + [1] * (len(answer) + 1) + [0, 0])
  row = {"decoder_target_tokens": tokens, "decoder_loss_weights": weights}
  assert inspect.show_with_loss_mask(vocabulary, row) == "2+2?<eos>⟦4<eos>⟧"


def test_a_conversation_shows_each_assistant_turn_and_its_eos_as_trained(tmp_path):
  import io
  import json
  from flan_jax.data import chat_examples, vocabularies
  turns = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "Capital of France?"},
           {"role": "assistant", "content": "Paris."},
           {"role": "user", "content": "Of Italy?"},
           {"role": "assistant", "content": "Rome."}]
  path = tmp_path / "chats.jsonl"
  path.write_text(json.dumps({"messages": turns}) + "\n")
  chat_examples.ChatTask("inspect_chat", str(path), "zephyr").register(
      vocabularies.byte_vocabulary())
  try:
    out = io.StringIO()
    report = inspect.inspect("inspect_chat", num_examples=1, plot_path=str(tmp_path / "p.png"),
                             lengths={"inputs": 64, "targets": 64}, out=out)
    shown = out.getvalue()
    assert ("<|system|>\nBe brief.<eos>\n<|user|>\nCapital of France?<eos>\n<|assistant|>\n"
            "⟦Paris.<eos>⟧\n<|user|>\nOf Italy?<eos>\n<|assistant|>\n⟦Rome.<eos>⟧") in shown
    # 114 tokens fit the 128-token row: not reported as cut against targets=64.
    assert report["tasks"]["inspect_chat"]["truncated_targets"] == 0
  finally:
    seqio.TaskRegistry.remove("inspect_chat")


def _chat_file(tmp_path, conversations):
  import json
  path = tmp_path / "chats.jsonl"
  path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
  return str(path)


def test_a_conversation_too_long_for_the_row_is_tokenized_once_not_every_epoch(tmp_path,
                                                                                monkeypatch):
  # The packing statistics fill 64 rows from this 2-record file, reading it for
  # hundreds of epochs; tokenizing the megabyte turn each time took minutes (at 10 MB,
  # more than 4), though the answer never changes: it does not fit.
  import time
  from flan_jax.data import chat_examples, vocabularies
  big = "word " * 200_000
  path = _chat_file(tmp_path, [
      [{"role": "user", "content": big}, {"role": "assistant", "content": "Too long."}],
      [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]])
  tokenize, big_ones = chat_examples.tokenize, []

  def tokenize_once(template, vocabulary, turns, **kwargs):
    if len(turns[0]["content"]) == len(big):
      big_ones.append(turns)
      assert len(big_ones) == 1, "the 1 MB conversation was tokenized again"
    return tokenize(template, vocabulary, turns, **kwargs)

  monkeypatch.setattr(chat_examples, "tokenize", tokenize_once)
  chat_examples.ChatTask("inspect_big_turn", path, "chatml").register(
      vocabularies.byte_vocabulary())
  try:
    started = time.monotonic()
    report = inspect.inspect("inspect_big_turn", num_examples=1,
                             plot_path=str(tmp_path / "p.png"), out=io.StringIO())
    assert time.monotonic() - started < 30
    assert report["tasks"]["inspect_big_turn"]["examples"] == 2
    assert report["packing_efficiency"] > 0
  finally:
    seqio.TaskRegistry.remove("inspect_big_turn")


def test_conversations_that_all_exceed_the_row_are_said_so_not_a_traceback(tmp_path):
  import pytest
  from flan_jax.data import chat_examples, vocabularies
  from flan_jax.errors import UserError
  path = _chat_file(tmp_path, [[{"role": "user", "content": "Capital of France?"},
                                {"role": "assistant", "content": "Paris."}]] * 2)
  chat_examples.ChatTask("inspect_too_long", path, "chatml").register(
      vocabularies.byte_vocabulary())
  out = io.StringIO()
  try:
    with pytest.raises(UserError, match="longer than a row"):
      inspect.inspect("inspect_too_long", num_examples=1, plot_path=str(tmp_path / "p.png"),
                      lengths={"inputs": 8, "targets": 8}, out=out)
  finally:
    seqio.TaskRegistry.remove("inspect_too_long")
  assert "[inspect_too_long]\n(no example fits a row of 16 tokens" in out.getvalue()
