"""The chat quickstart end to end: train on conversations, record the template, talk."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
# The quickstart's 512-token rows; 32 answer tokens, so evaluation generates 32, not 256.
LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'inputs': 480, 'targets': 32}"
TURNS = [{"role": "system", "content": "You are kind."},
         {"role": "user", "content": "Hello!"},
         {"role": "assistant", "content": "Hi. How can I help?"},
         {"role": "user", "content": "Tell me about cats."},
         {"role": "assistant", "content": "Cats purr."}]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "models", "stories260K-hf")),
                    reason="needs ../shared/data")
def test_the_chat_quickstart_trains_records_its_template_and_answers_messages(tmp_path):
  model_dir = tmp_path / "chat"
  # Plain text mixed in beside the conversations, every token trained.
  corpus = tmp_path / "stories.txt"
  corpus.write_text("Tom had a red ball.\n\nThe sun was warm and the birds sang.\n")
  trained = subprocess.run(
      [sys.executable, "-m", "flan_jax.train", "--gin_file=gin/chat_quickstart.gin",
       f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=2",
       "--gin.train.truncation_sample=0", "--gin.EvalConfig.max_examples_per_task=4",
       "--gin.EvalConfig.batch_size=4", "--gin.train.evaluate_before=False", LENGTHS,
       "--gin.train.text_tasks=[@TextTask()]", "--gin.TextTask.name='stories'",
       f"--gin.TextTask.path='{corpus}'", "--gin.train.mixture_or_task_name='chat_and_text'",
       "--gin.train.mixture_parts={'oasst_chat': 0.8, 'stories': 0.2}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert "conversations dropped whole" in trained.stderr  # long OASST threads are counted
  from flan_jax.data import chat_examples, chat_templates
  recorded = (model_dir / "chat_template.json").read_text()
  assert recorded == chat_templates.builtin("zephyr").to_json()

  # infer --chat renders with the recorded template: the prompt it gives the model is,
  # token for token, the one training trained the last answer after.
  from flan_jax import inference
  predictor = inference.load_predictor(str(model_dir), chat=True)
  ids, weights = chat_examples.tokenize(predictor.chat_template, predictor.vocabulary, TURNS,
                                        bos_id=1)
  prompt = predictor.chat_prompt_tokens(TURNS[:-1])
  first_trained = np.flatnonzero(weights)
  last_answer = first_trained[first_trained >= len(prompt)][0]
  np.testing.assert_array_equal(prompt, ids[:last_answer])
  assert weights[last_answer - 1] == 0 and last_answer == len(prompt)

  # The held-out conversations were evaluated after training (and before, without
  # evaluate_before=False), and `eval` evaluates the run again with the template it
  # recorded: the same numbers.
  evaluated = json.loads((model_dir / "eval" / "heldout.json").read_text())
  after = evaluated["after"]
  assert set(after) >= {"oasst_chat/rouge_l", "oasst_chat/target_nll"}
  assert after["oasst_chat/target_perplexity"] > 1
  output_dir = tmp_path / "eval"
  again = subprocess.run(
      [sys.executable, "-m", "flan_jax.eval", "--gin_file=gin/chat_eval.gin",
       f"--gin.CHECKPOINT_PATH='{model_dir}'", f"--gin.OUTPUT_DIR='{output_dir}'",
       "--gin.EvalConfig.max_examples_per_task=4", "--gin.EvalConfig.batch_size=4", LENGTHS],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  report = json.loads((output_dir / "eval" / "oasst_chat.json").read_text())["results"]
  for metric in ("rouge_l", "target_nll"):
    np.testing.assert_allclose(report[f"oasst_chat/{metric}"], after[f"oasst_chat/{metric}"],
                               rtol=1e-5)

  request = json.dumps({"messages": TURNS[:2]})
  answered = subprocess.run(
      [sys.executable, "-m", "flan_jax.infer", f"--checkpoint={model_dir}", "--chat",
       "--input=-", "--max_new_tokens=8"],
      input=request + "\n", cwd=REPO, capture_output=True, text=True, timeout=300)
  assert answered.returncode == 0, answered.stderr[-3000:]
  reply = json.loads(answered.stdout.splitlines()[0])
  assert reply["messages"] == TURNS[:2] and isinstance(reply["prediction"], str)
  # Exported, the model is served by transformers as it was trained: the template and
  # tokenizer travel with it, the prompt's ids are infer --chat's, and greedy decoding
  # gives infer's reply.
  exported = tmp_path / "hf"
  converted = subprocess.run(
      [sys.executable, "-m", "flan_jax.models.convert", f"--from_orbax={model_dir}",
       f"--to_hf={exported}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert converted.returncode == 0, converted.stderr[-3000:]
  import torch
  import transformers
  served = transformers.AutoTokenizer.from_pretrained(exported)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
  prompt_ids = served.apply_chat_template(TURNS[:2], add_generation_prompt=True,
                                          return_dict=True, return_tensors="pt")["input_ids"]
  assert prompt_ids[0].tolist() == [1, *predictor.chat_prompt_tokens(TURNS[:2]).tolist()]
  generated = hf_model.generate(prompt_ids, max_new_tokens=8, do_sample=False)
  hf_reply = served.decode(generated[0, prompt_ids.shape[1]:], skip_special_tokens=True)
  assert hf_reply == reply["prediction"]

  # A request that does not end with the user's turn is one clear error naming the line.
  from flan_jax.errors import UserError
  with pytest.raises(UserError, match="<stdin>:2: the last message must be the user's"):
    list(inference.read_requests([request, json.dumps({"messages": TURNS})], "<stdin>", chat=True))


def test_command_line_gin_values_keep_references_in_lists_and_quote_bare_strings():
  from flan_jax import gin_utils
  assert gin_utils.rewrite_gin_flags(
      ["--gin.train.text_tasks=[@TextTask()]", "--gin.MODEL_DIR=/tmp/run",
       "--gin.TRAIN_STEPS=5", "--gin.train.mixture_parts={'a': 0.5}"]) == [
      "--gin_bindings=train.text_tasks = [@TextTask()]", "--gin_bindings=MODEL_DIR = '/tmp/run'",
      "--gin_bindings=TRAIN_STEPS = 5", "--gin_bindings=train.mixture_parts = {'a': 0.5}"]
