"""eval's settings that belong to one kind of run are errors in the other, not dropped;
a --judge_* flag changes only the judge field it names."""

import pytest
from absl import flags

from flan_jax import eval as eval_cli
from flan_jax.errors import UserError
from flan_jax.llm_judge import JudgeConfig
from flan_jax.suite import SuiteConfig


@pytest.fixture
def parsed_flags():
  """The command line parsed with the flags a test sets, restored afterwards."""
  saved = {name: flags.FLAGS[name].value for name in
           ("judge_endpoint", "judge_model", "judge_checkpoint")}
  was_parsed = flags.FLAGS.is_parsed()
  if not was_parsed:
    flags.FLAGS(["eval"])
  yield flags.FLAGS
  for name, value in saved.items():
    flags.FLAGS[name].value = value
  if not was_parsed:
    flags.FLAGS.unparse_flags()


def test_one_judge_flag_keeps_the_judge_fields_gin_set(parsed_flags):
  parsed_flags.judge_model = "gpt-4o"
  suite = SuiteConfig(judge=JudgeConfig(endpoint="http://localhost:8000/v1", model="old"))
  judge = eval_cli.judge_from_flags(suite).judge
  assert judge == JudgeConfig(endpoint="http://localhost:8000/v1", model="gpt-4o")


def test_a_judge_flag_without_the_suite_is_an_error(parsed_flags, tmp_path):
  parsed_flags.judge_endpoint = "http://localhost:8000/v1"
  with pytest.raises(UserError, match="judge"):
    eval_cli.evaluate(checkpoint_path=str(tmp_path), mixture_or_task_name="x",
                      task_feature_lengths={"inputs": 8, "targets": 8},
                      output_dir=str(tmp_path / "out"))


@pytest.mark.parametrize("setting", [{"log_samples": True},
                                     {"task_feature_lengths": {"inputs": 8, "targets": 8}},
                                     {"chat_tasks": ("a chat task",)}])
def test_mixture_settings_with_the_suite_are_an_error(setting, tmp_path):
  with pytest.raises(UserError, match=next(iter(setting))):
    eval_cli.evaluate(checkpoint_path=str(tmp_path), output_dir=str(tmp_path / "out"),
                      suite=SuiteConfig(), **setting)
