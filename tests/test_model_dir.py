"""What a checkpoint path points at, resolved once (`model_dir`), and MODEL_DIR's JSON."""

import json
import logging

import pytest

from flan_jax import model_dir, paths
from flan_jax.errors import UserError


def _step(checkpoints, step: int, finished: bool = True):
  directory = checkpoints / str(step) / model_dir.STEP_ITEM
  directory.mkdir(parents=True)
  (directory / "value").write_text(str(step))
  if finished:
    (checkpoints / str(step) / model_dir.COMMIT_MARKER).write_text("")


def _read(item: str) -> int:
  text = (paths.read_text(paths.join(item, "value")))
  if text == "damaged":
    raise ValueError("cannot read\nsecond line")
  return int(text)


def test_each_kind_of_checkpoint_path_is_told_apart(tmp_path):
  run, orbax, hf, other = (tmp_path / name for name in ("run", "orbax", "hf", "other"))
  (run / model_dir.CHECKPOINTS_DIR).mkdir(parents=True)
  (run / model_dir.CONFIG_FILE).write_text("{}")
  (orbax / model_dir.PARAMS_DIR).mkdir(parents=True)
  (orbax / model_dir.CONFIG_FILE).write_text("{}")
  hf.mkdir()
  (hf / "config.json").write_text("{}")
  other.mkdir()
  kinds = {p.name: model_dir.resolve(str(p)).kind for p in (run, orbax, hf, other)}
  assert kinds == {"run": "run", "orbax": "orbax", "hf": "hf", "other": None}
  assert model_dir.resolve(str(tmp_path / "missing")).kind is None  # resolving never fails
  resolved = model_dir.resolve(str(hf))
  assert resolved.config_file == str(hf / "config.json") == resolved.hf_config_file
  assert model_dir.resolve(str(run)).config_file == str(run / model_dir.CONFIG_FILE)
  assert model_dir.resolve(str(run)).hf_config_file is None


def test_a_relative_path_is_kept_for_messages_and_made_absolute_for_reading(tmp_path,
                                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)
  resolved = model_dir.resolve("run")
  assert (resolved.path, resolved.directory) == ("run", str(tmp_path / "run"))


def test_the_tokenizer_is_beside_the_weights_or_in_hf_files(tmp_path):
  assert model_dir.resolve(str(tmp_path)).tokenizer_dir is None
  (tmp_path / model_dir.HF_FILES_DIR).mkdir()
  (tmp_path / model_dir.HF_FILES_DIR / "tokenizer.json").write_text("{}")
  assert model_dir.resolve(str(tmp_path)).tokenizer_dir == str(tmp_path / model_dir.HF_FILES_DIR)
  (tmp_path / "tokenizer.model").write_text("")
  assert model_dir.resolve(str(tmp_path)).tokenizer_dir == str(tmp_path)


def test_the_chat_template_is_the_recorded_one_else_the_models_own(tmp_path):
  resolved = model_dir.resolve(str(tmp_path))
  assert resolved.chat_template_file() is None
  (tmp_path / model_dir.TOKENIZER_CONFIG).write_text('{"eos_token": "</s>"}')
  assert resolved.chat_template_file() is None  # a tokenizer config without a template
  (tmp_path / model_dir.TOKENIZER_CONFIG).write_text('{"chat_template": "{{ x }}"}')
  assert resolved.chat_template_file() == str(tmp_path / model_dir.TOKENIZER_CONFIG)
  (tmp_path / model_dir.TEMPLATE_FILE).write_text("{}")
  assert resolved.chat_template_file() == str(tmp_path / model_dir.TEMPLATE_FILE)


def test_the_held_out_record_reads_back_what_was_written(tmp_path):
  resolved = model_dir.resolve(str(tmp_path))
  assert resolved.held_out() == {}
  record = {"chat": {"path": "/data/chat.jsonl", "validation_records": 3}}
  paths.write_json(resolved.file(model_dir.HELD_OUT_FILE), record, indent=1, sort_keys=True)
  assert resolved.held_out() == record
  # The same text `json.dumps` writes: files written before read the same.
  assert (tmp_path / model_dir.HELD_OUT_FILE).read_text() == json.dumps(record, indent=1,
                                                                        sort_keys=True)


def test_only_finished_steps_count_and_the_newest_that_reads_is_read(tmp_path, caplog):
  checkpoints = tmp_path / model_dir.CHECKPOINTS_DIR
  for step in (2, 4, 6):
    _step(checkpoints, step)
  _step(checkpoints, 8, finished=False)  # a save cut short
  (checkpoints / "4.damaged").mkdir()  # set aside by a run: no longer a step
  assert model_dir.finished_steps(str(checkpoints)) == [2, 4, 6]
  resolved = model_dir.resolve(str(tmp_path))
  assert resolved.read_step(None, _read) == 6
  assert resolved.read_step(4, _read) == 4

  (checkpoints / "6" / model_dir.STEP_ITEM / "value").write_text("damaged")
  with caplog.at_level(logging.WARNING):
    assert resolved.read_step(None, _read) == 4
  assert (f"Checkpoint 6 in {checkpoints} does not restore (ValueError: cannot read); "
          "reading checkpoint 4 instead.") in caplog.text
  with pytest.raises(UserError, match=r"checkpoint 6 in \S+ does not restore \(ValueError: "
                                      r"cannot read\): pass the step of an intact one \(2, 4\)"):
    resolved.read_step(6, _read)
  with pytest.raises(UserError, match=r"has no finished checkpoint for step 8 \(found: \[2, 4, 6\]\)"):
    resolved.read_step(8, _read)
  for step in (2, 4):
    (checkpoints / str(step) / model_dir.STEP_ITEM / "value").write_text("damaged")
  with pytest.raises(UserError, match=r"no checkpoint in \S+ restores: step 6 \(ValueError: "
                                      r"cannot read\); step 4 .*; step 2 "):
    resolved.read_step(None, _read)


def test_a_run_without_finished_steps_says_so(tmp_path):
  (tmp_path / model_dir.CHECKPOINTS_DIR).mkdir()
  with pytest.raises(UserError, match=r"has no finished checkpoint \(found: none\)"):
    model_dir.resolve(str(tmp_path)).read_step(None, _read)
