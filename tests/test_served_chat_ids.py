"""A chat model is served elsewhere as it was trained: the ids training encodes a
conversation to are the ids transformers gives `apply_chat_template` of the files the
export carries, for SentencePiece and tokenizer.json vocabularies alike."""

import json
import os
import random
import shutil

import numpy as np
import pytest

from flan_jax.data import chat_examples, chat_export, chat_templates, hf_tokenizer, vocabularies

transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
LLAMA2_SP = os.path.join(SHARED, "tokenizers", "llama2_sp32000.model")
STORIES_SP = os.path.join(SHARED, "models", "stories260K-hf", "tokenizer.model")
pytestmark = pytest.mark.skipif(not os.path.isfile(LLAMA2_SP), reason="needs ../shared/data")

CONVERSATIONS = [
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Count to three."},
     {"role": "assistant", "content": "One, two, three."},
     {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "You're welcome!"}],
    [{"role": "user", "content": "  Two leading spaces,\n\nthen a blank line\tand a tab.  "},
     {"role": "assistant", "content": "Kept:\n- one\n-  two\n\n  indented café 日本"}],
]

# A model's own template (not a built-in), as a tokenizer_config.json carries one:
# Mistral-instruct's layout, system prompts dropped.
OWN_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == "
                "'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}")


def _hf_tokenizer_dir(path, model_file, specials=(), **tokens):
  """A tokenizer.json written by transformers from a SentencePiece model, with `specials`
  added as special tokens and `tokens` (bos_token=..., eos_token=...) set."""
  source = path / "source"
  source.mkdir()
  shutil.copy(model_file, source / "tokenizer.model")
  (source / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
       "unk_token": "<unk>"}))
  tokenizer = transformers.AutoTokenizer.from_pretrained(source)
  if specials:
    tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
  for name, value in tokens.items():
    setattr(tokenizer, name, value)
  out = path / "tokenizer_json"
  tokenizer.save_pretrained(out)
  os.remove(out / "tokenizer.model") if (out / "tokenizer.model").exists() else None
  return out / "tokenizer.json"


@pytest.fixture(scope="module")
def vocabularies_by_kind(tmp_path_factory):
  base = tmp_path_factory.mktemp("tokenizers")
  made = {"sentencepiece": vocabularies.sentencepiece_vocabulary(LLAMA2_SP)}
  for name, specials, tokens in [
      ("tokenizer.json", (), {}),
      ("tokenizer.json+chatml", ("<|im_start|>", "<|im_end|>"), {"eos_token": "<|im_end|>"}),
      ("tokenizer.json+llama3", ("<|begin_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"),
       {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})]:
    directory = base / name.replace("+", "_").replace(".", "_")
    directory.mkdir()
    made[name] = vocabularies.TokenizerJsonVocabulary(
        str(_hf_tokenizer_dir(directory, LLAMA2_SP, specials, **tokens)))
  return made


CASES = [("llama2", "sentencepiece"), ("zephyr", "sentencepiece"), ("own", "sentencepiece"),
         ("llama2", "tokenizer.json"), ("zephyr", "tokenizer.json"), ("own", "tokenizer.json"),
         ("chatml", "tokenizer.json+chatml"), ("llama3", "tokenizer.json+llama3")]


def _template(name, tmp_path):
  if name != "own":
    return chat_templates.builtin(name)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"chat_template": OWN_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"}))
  return chat_templates.from_tokenizer_config(tmp_path / "tokenizer_config.json")


@pytest.mark.parametrize("name,kind", CASES)
def test_training_and_prompt_ids_equal_transformers_apply_chat_template(
    name, kind, vocabularies_by_kind, tmp_path):
  vocabulary = vocabularies_by_kind[kind]
  template = _template(name, tmp_path)
  exported = tmp_path / "export"
  assert chat_export.write_served_files(str(exported), template, vocabulary)
  served = transformers.AutoTokenizer.from_pretrained(exported)
  bos = vocabularies.bos_id(vocabulary)
  for turns in CONVERSATIONS:
    messages = turns
    text = served.apply_chat_template(messages, tokenize=False)
    expected = served(text, add_special_tokens=False)["input_ids"]
    ids, weights = chat_examples.tokenize(template, vocabulary, messages)
    # Every training row starts with the BOS the packer writes.
    assert [bos, *ids.tolist()] == expected, (served.convert_ids_to_tokens(expected),
                                              served.convert_ids_to_tokens(ids.tolist()))
    # Each answer's trained tokens decode to the answer and its end of turn.
    trained = served.decode(ids[weights.astype(bool)].tolist(), skip_special_tokens=False)
    for turn in messages:
      if turn["role"] == "assistant":
        assert turn["content"].strip() in trained
    assert ids[weights.astype(bool)][-1] == vocabulary.eos_id
    prompt = served.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    np.testing.assert_array_equal(
        [bos, *chat_examples.prompt_ids(template, vocabulary, messages[:-1])],
        served(prompt, add_special_tokens=False)["input_ids"])


def test_the_export_records_the_end_of_turn_and_keeps_an_imported_config(vocabularies_by_kind,
                                                                         tmp_path):
  vocabulary = vocabularies_by_kind["tokenizer.json+llama3"]
  exported = tmp_path / "export"
  exported.mkdir()
  (exported / "tokenizer_config.json").write_text(json.dumps(
      {"model_max_length": 4096, "chat_template": "{{ 'the base model own' }}",
       "padding_side": "left"}))
  (exported / "generation_config.json").write_text(json.dumps({"temperature": 0.6,
                                                               "eos_token_id": 0}))
  template = chat_templates.builtin("llama3")
  chat_export.write_served_files(str(exported), template, vocabulary)
  config = json.loads((exported / "tokenizer_config.json").read_text())
  assert config["model_max_length"] == 4096 and config["padding_side"] == "left"
  assert config["chat_template"] == template.source  # Llama 3's writes its own BOS
  assert (exported / "chat_template.jinja").read_text() == template.source
  assert config["eos_token"] == "<|eot_id|>" and config["bos_token"] == "<|begin_of_text|>"
  generation = json.loads((exported / "generation_config.json").read_text())
  assert generation == {"temperature": 0.6, "eos_token_id": vocabulary.eos_id,
                        "bos_token_id": vocabularies.bos_id(vocabulary)}
  assert vocabulary.tokenizer.id_to_token(vocabulary.eos_id) == "<|eot_id|>"


@pytest.mark.skipif(not os.path.isfile(STORIES_SP), reason="needs ../shared/data")
@pytest.mark.parametrize("model_file", [LLAMA2_SP, STORIES_SP])
def test_the_sentencepiece_tokenizer_is_the_one_transformers_builds(model_file, tmp_path):
  # transformers' own conversion of the .model (no tokenizer.json), on random text with
  # runs of spaces, newlines, special tokens and characters outside the vocabulary.
  shutil.copy(model_file, tmp_path / "tokenizer.model")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
       "unk_token": "<unk>", "legacy": False}))
  reference = transformers.AutoTokenizer.from_pretrained(tmp_path)
  with open(model_file, "rb") as f:
    ours = hf_tokenizer.from_sentencepiece(f.read())
  pieces = [" ", "  ", "\n", "\t", "The", " cat", "</s>", "<s>", "<unk>", ".", "é", "日", "🙂",
            "[INST]", "<|", "|>", "12", " once upon", "a"]
  rng = random.Random(0)
  for _ in range(400):
    text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
    assert hf_tokenizer.encode(ours, text)[0].tolist() == reference(
        text, add_special_tokens=False)["input_ids"], text


@pytest.mark.skipif(not os.path.isfile(STORIES_SP), reason="needs ../shared/data")
def test_an_imported_models_own_template_and_tokenizer_settings_survive_the_round_trip(tmp_path):
  from flan_jax.models import convert
  source = tmp_path / "hf"
  shutil.copytree(os.path.dirname(STORIES_SP), source)
  own = {"tokenizer_class": "LlamaTokenizer", "legacy": True, "bos_token": "<s>",
         "eos_token": "</s>", "chat_template": OWN_TEMPLATE, "model_max_length": 512}
  (source / "tokenizer_config.json").write_text(json.dumps(own))
  (source / "chat_template.jinja").write_text(OWN_TEMPLATE)
  convert.hf_to_orbax(str(source), str(tmp_path / "orbax"))
  convert.orbax_to_hf(str(tmp_path / "orbax"), str(tmp_path / "back"))
  for name in ("tokenizer_config.json", "chat_template.jinja", "tokenizer.model",
               "generation_config.json"):
    assert (tmp_path / "back" / name).read_bytes() == (source / name).read_bytes(), name
