"""The README's worked example (seed tasks -> Self-Instruct -> curate -> finetune -> evaluate)
stays a chain that runs: each command's flags exist, and each step reads what the step
before it wrote.

Running the chain takes minutes (it was run as written and its numbers recorded in the
README and benchmarks/README.md), so this checks the commands' text against the code,
which an edit to either can break silently: a renamed flag, an output path changed in
one step and not the next.
"""

import ast
import os
import re
import shlex

from flan_jax.data import self_instruct as self_instruct_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _worked_example_commands() -> list[list[str]]:
  readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
  section = readme.split("## Worked example", 1)[1].split("\n## ", 1)[0]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  return [shlex.split(block.replace("\\\n", " ")) for block in blocks]


def _flags(words: list[str]) -> dict[str, list[str]]:
  """--name=value words as name -> values (repeatable flags keep every value)."""
  found: dict[str, list[str]] = {}
  for word in words:
    assert word.startswith("--") and "=" in word, f"not a --flag=value: {word!r}"
    name, value = word[2:].split("=", 1)
    found.setdefault(name, []).append(value)
  return found


def _defined_flags(module: str) -> set[str]:
  """The absl flags a flan_jax entry point defines (read from its source: importing the
  four entry points into one process would define some flags twice)."""
  source = open(os.path.join(ROOT, "flan_jax", f"{module}.py"), encoding="utf-8").read()
  names = set(re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", source))
  if "gin_utils.define_flags" in source or "gin_utils.main_calling" in source:
    names |= {"gin_file", "gin_bindings"}
  return names


def _gin(flags: dict[str, list[str]], name: str) -> str:
  (value,) = flags[f"gin.{name}"]
  return value


def test_each_step_is_one_command_with_flags_that_exist():
  commands = _worked_example_commands()
  modules = [words[2] for words in commands]
  assert modules == ["flan_jax.self_instruct", "flan_jax.curate", "flan_jax.train",
                     "flan_jax.eval"]
  for words in commands:
    assert words[:2] == ["python", "-m"]
    module = words[2].split(".", 1)[1]
    defined = _defined_flags(module)
    unknown = [name for name in _flags(words[3:]) if not name.startswith("gin.")
               and name not in defined]
    assert not unknown, f"{words[2]}: no such flags {unknown}"
    for gin_file in _flags(words[3:]).get("gin_file", []):
      if not gin_file.startswith("/tmp/"):  # written by an earlier step
        assert os.path.isfile(os.path.join(ROOT, gin_file)), gin_file


def test_each_step_reads_what_the_step_before_wrote():
  generate, curate, train, evaluate = (_flags(words[3:]) for words in
                                       _worked_example_commands())
  (generated_dir,) = generate["output"]
  assert curate["input"] == [os.path.join(generated_dir, self_instruct_data.OUTPUT_FILE)]
  (curated,) = curate["output"]
  # The chat task that Self-Instruct registers, pointed at the curated file instead.
  assert os.path.join(generated_dir, self_instruct_data.CHAT_GIN) in train["gin_file"]
  assert _gin(train, "CHAT_DATA") == curated
  assert _gin(train, "train.mixture_or_task_name") == "self_instruct"  # --task_name default
  # The evaluation reads the run's checkpoint and the same held-out records.
  assert _gin(evaluate, "CHECKPOINT_PATH") == _gin(train, "MODEL_DIR")
  assert _gin(evaluate, "CHAT_DATA") == curated
  assert _gin(evaluate, "ChatTask.name") == _gin(evaluate, "evaluate.mixture_or_task_name") \
      == "self_instruct"
  assert _gin(evaluate, "ChatTask.validation_records") == \
      _gin(train, "ChatTask.validation_records")
  # Curation and the run guard against the same evaluation sets.
  (curate_against,) = curate["decontaminate_against"]
  train_against = ast.literal_eval(_gin(train, "train.decontaminate_against"))
  assert curate_against.split(",") == train_against


def test_the_self_instruct_chat_gin_reads_its_data_through_the_overridden_macro(tmp_path):
  # --gin.CHAT_DATA in step 3 only reaches the task because chat_task.gin routes its
  # path through that macro.
  text = open(self_instruct_data.write_chat_gin(str(tmp_path))).read()
  assert re.search(r"^self_instruct/ChatTask\.path = %CHAT_DATA$", text, re.M)
