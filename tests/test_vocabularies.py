"""Hugging Face tokenizer.json vocabularies against SentencePiece, configs, and seqio tasks."""

import copy
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from flan_jax.data import vocabularies
from flan_jax.data.vocabularies import TokenizerJsonVocabulary, vocabulary_from_path
from flan_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
TINY_SP = os.path.join(DATA, "tokenizers", "tiny_sp26.model")

# Leading and repeated spaces exercise SentencePiece's dummy prefix; "<s> ... </s>" checks
# that special-token text in data stays text, as SentencePiece treats it.
TEXTS = ["Hello world", " leading space", "Once upon a time, there was a little girl.",
         "Numbers: 1234 and 3.14!", "Unicode: café, naïve, 日本語 😀",
         "  two  spaces\tand\nnewline", "trailing ", "x", "<s> not special </s>"]

CORPUS = ["the quick brown fox jumps over the lazy dog",
          "a stitch in time saves nine, they said in 1999",
          "hello world, hello tokenizer; goodbye world!"] * 4


def _sp_vocabulary():
  if not os.path.exists(os.path.join(STORIES, "tokenizer.model")):
    pytest.skip(f"{STORIES} is absent")
  return seqio.SentencePieceVocabulary(os.path.join(STORIES, "tokenizer.model"))


@pytest.fixture(scope="module")
def llama_json(tmp_path_factory):
  """stories260K's SentencePiece model converted to a tokenizer.json by transformers."""
  _sp_vocabulary()
  transformers = pytest.importorskip("transformers")
  out = str(tmp_path_factory.mktemp("llama_json"))
  transformers.LlamaTokenizerFast.from_pretrained(STORIES).save_pretrained(out)
  # transformers 5 converts with a Metaspace(prepend_scheme="first") pre-tokenizer, which
  # adds no "▁" prefix to text that already starts with a space, unlike SentencePiece.
  # Meta's published Llama-2 tokenizer.json prepends it unconditionally; use that layout
  # so the file is a faithful copy of the .model and differences are ours.
  path = os.path.join(out, "tokenizer.json")
  tokenizer = tokenizers.Tokenizer.from_file(path)
  tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
  tokenizer.pre_tokenizer = None
  tokenizer.save(path)
  return path


def _train_bpe(directory, corpus=CORPUS, vocab_size=300, config=True):
  """A byte-level BPE trained on `corpus`, saved as directory/tokenizer.json (+ config).

  The 256 byte symbols and 4 specials come first; the rest of `vocab_size` are merges.
  """
  os.makedirs(directory, exist_ok=True)
  tokenizer = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  # Not seqio's 0/1/2 layout, so reading the ids from the config is what makes them right.
  trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(corpus, trainer=trainer)
  # Like Llama's tokenizer.json: HF encoding adds BOS/EOS unless told not to.
  tokenizer.post_processor = processors.TemplateProcessing(
      single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
  path = os.path.join(directory, "tokenizer.json")
  tokenizer.save(path)
  if config:
    _write_json(directory, "tokenizer_config.json", {
        "bos_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
        # transformers writes AddedToken dicts in some versions.
        "eos_token": {"content": "</s>", "lstrip": False, "special": True}})
  return path


def _write_json(directory, name, value):
  with open(os.path.join(directory, name), "w") as f:
    json.dump(value, f)


def _encode_in_tf_data(vocabulary, texts):
  ds = tf.data.Dataset.from_tensor_slices(texts).map(vocabulary.encode_tf)
  return [ids.tolist() for ids in ds.as_numpy_iterator()]


def test_converted_sentencepiece_matches_seqio(llama_json):
  sp = _sp_vocabulary()
  vocab = TokenizerJsonVocabulary(llama_json)
  expected = [sp.encode(text) for text in TEXTS]
  assert [vocab.encode(text) for text in TEXTS] == expected
  assert _encode_in_tf_data(vocab, TEXTS) == expected
  assert [vocab.decode(ids) for ids in expected] == TEXTS
  for ids, text in zip(expected, TEXTS):
    assert vocab.decode_tf(tf.constant(ids, tf.int32)).numpy().decode("utf-8") == text
  assert (vocab.eos_id, vocab.bos_id, vocab.unk_id) == (sp.eos_id, sp.bos_id, sp.unk_id)
  assert vocab.vocab_size == sp.vocab_size == 512
  assert vocabularies.bos_id(vocab) == vocabularies.bos_id(sp) == 1


def test_ids_from_model_configs_when_no_tokenizer_config(llama_json, tmp_path):
  """Only config.json / generation_config.json beside the file: their *_token_id count."""
  shutil.copy(llama_json, tmp_path / "tokenizer.json")
  shutil.copy(os.path.join(STORIES, "config.json"), tmp_path)
  vocab = TokenizerJsonVocabulary(str(tmp_path / "tokenizer.json"))
  assert (vocab.eos_id, vocab.bos_id, vocab.unk_id) == (2, 1, None)
  _write_json(tmp_path, "generation_config.json", {"eos_token_id": [7, 2], "bos_token_id": 1})
  # generation_config.json comes before config.json; of a list, the first id is EOS.
  assert TokenizerJsonVocabulary(str(tmp_path / "tokenizer.json")).eos_id == 7


def test_trained_bpe_reads_ids_and_round_trips(tmp_path):
  path = _train_bpe(str(tmp_path / "a"))
  vocab = TokenizerJsonVocabulary(path)
  token = vocab.tokenizer.token_to_id
  assert (vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.pad_id) == (0, 1, 2, 3)
  assert (token("<unk>"), token("<s>"), token("</s>"), token("<pad>")) == (0, 1, 2, 3)
  assert vocab.vocab_size == vocab.tokenizer.get_vocab_size() == 300
  texts = ["the lazy fox", "hello, 1999 world!", "unseen: naïve café ✓", " spaced  out "]
  encoded = [vocab.encode(text) for text in texts]
  assert all(len(ids) > 0 and vocab.eos_id not in ids and vocab.bos_id not in ids
             for ids in encoded)  # no special tokens added
  assert [vocab.decode(ids) for ids in encoded] == texts
  assert _encode_in_tf_data(vocab, texts) == encoded
  # Past EOS, and ids outside the vocabulary, are not text.
  assert vocab.decode(encoded[0] + [vocab.eos_id] + encoded[1]) == texts[0]
  assert vocab.decode(encoded[0] + [vocab.vocab_size + 5]) == texts[0]


def test_tf_shapes_and_batches(tmp_path):
  vocab = TokenizerJsonVocabulary(_train_bpe(str(tmp_path)))
  a, b = vocab.encode("the quick fox"), vocab.encode("hello")
  scalar = vocab.encode_tf(tf.constant("the quick fox"))
  assert scalar.dtype == tf.int32 and scalar.shape.rank == 1 and scalar.numpy().tolist() == a
  batch = vocab.encode_tf(tf.constant(["the quick fox", "hello", ""]))
  assert isinstance(batch, tf.RaggedTensor) and batch.dtype == tf.int32
  assert batch.to_list() == [a, b, []]
  assert vocab.encode_tf(tf.constant([["hello"], ["the quick fox"]])).to_list() == [[b], [a]]
  # Decoding a padded batch: each row stops at its EOS, whatever the padding id decodes to.
  rows = np.zeros([2, len(a) + 4], np.int32)
  rows[0, :len(a)], rows[0, len(a)] = a, vocab.eos_id
  rows[1, :len(b)], rows[1, len(b)], rows[1, len(b) + 1] = b, vocab.eos_id, a[0]
  decoded = vocab.decode_tf(tf.constant(rows))
  assert decoded.shape == (2,) and decoded.numpy().tolist() == [b"the quick fox", b"hello"]
  ragged = vocab.decode_tf(tf.ragged.constant([a, b]))
  assert ragged.numpy().tolist() == [b"the quick fox", b"hello"]
  # seqio's decode_tf overwrites what follows EOS with pad_id before the hook sees it; the
  # hook must stop at EOS itself, for tokenizers whose pad id is an ordinary token.
  assert vocab._decode_tf(tf.constant(a + [vocab.eos_id] + b)).numpy() == b"the quick fox"


def test_stored_truncation_and_padding_are_ignored(tmp_path):
  """seqio trims and pads to the task's lengths; a file's own settings must not cut first."""
  path = _train_bpe(str(tmp_path))
  plain = TokenizerJsonVocabulary(path).encode(CORPUS[0])
  tokenizer = tokenizers.Tokenizer.from_file(path)
  tokenizer.enable_truncation(max_length=2)
  tokenizer.enable_padding(length=64, pad_id=3, pad_token="<pad>")
  tokenizer.save(path)
  vocab = TokenizerJsonVocabulary(path)
  assert len(plain) > 2
  assert vocab.encode(CORPUS[0]) == plain
  assert _encode_in_tf_data(vocab, [CORPUS[0], "hello"]) == [plain, vocab.encode("hello")]


def test_special_token_text_is_text_unless_asked(tmp_path):
  path = _train_bpe(str(tmp_path))
  literal = TokenizerJsonVocabulary(path)
  parsing = TokenizerJsonVocabulary(path, parse_special_tokens=True)
  assert literal.eos_id not in literal.encode("hello </s> world")
  assert parsing.encode("</s>") == [parsing.eos_id]
  assert literal != parsing


def test_equality_by_content(tmp_path):
  path = _train_bpe(str(tmp_path / "a"))
  same = TokenizerJsonVocabulary(path)
  assert TokenizerJsonVocabulary(path) == same
  assert hash(TokenizerJsonVocabulary(path)) == hash(same)
  shutil.copytree(tmp_path / "a", tmp_path / "copy")
  assert TokenizerJsonVocabulary(str(tmp_path / "copy" / "tokenizer.json")) == same
  other = TokenizerJsonVocabulary(_train_bpe(str(tmp_path / "b"), vocab_size=280))
  assert other != same
  assert TokenizerJsonVocabulary(path, eos_id=1) != same
  assert same != seqio.ByteVocabulary()
  for clone in (pickle.loads(pickle.dumps(same)), copy.deepcopy(same)):
    assert clone == same
    # The encode-special-tokens-as-text setting is not in the JSON; it must survive.
    assert clone.encode("</s>") == same.encode("</s>") != [same.eos_id]


def test_config_precedence_and_explicit_ids(tmp_path):
  path = _train_bpe(str(tmp_path), config=False)
  _write_json(tmp_path, "special_tokens_map.json", {"eos_token": "<s>", "pad_token": "<pad>"})
  _write_json(tmp_path, "tokenizer_config.json", {"eos_token": "</s>"})
  vocab = TokenizerJsonVocabulary(path)
  assert (vocab.eos_id, vocab.pad_id, vocab.bos_id) == (2, 3, None)  # tokenizer_config wins
  assert TokenizerJsonVocabulary(path, eos_id=1, bos_id=0).eos_id == 1
  assert vocabularies.bos_id(TokenizerJsonVocabulary(path, bos_id=0)) == 0


def test_missing_eos_is_a_user_error(tmp_path):
  path = _train_bpe(str(tmp_path), config=False)
  with pytest.raises(UserError, match=r"No EOS token for .*tokenizer\.json.*eos_id="):
    TokenizerJsonVocabulary(path)
  assert TokenizerJsonVocabulary(path, eos_id=2).eos_id == 2
  _write_json(tmp_path, "tokenizer_config.json", {"eos_token": "<|end|>"})
  with pytest.raises(UserError, match=r"tokenizer_config\.json names eos_token '<\|end\|>'"):
    TokenizerJsonVocabulary(path)
  with pytest.raises(UserError, match="outside its vocabulary"):
    TokenizerJsonVocabulary(path, eos_id=10_000)


def test_vocabulary_from_path(tmp_path):
  json_dir = tmp_path / "json_only"
  path = _train_bpe(str(json_dir))
  assert isinstance(vocabulary_from_path(path), TokenizerJsonVocabulary)
  assert vocabulary_from_path(str(json_dir)) == TokenizerJsonVocabulary(path)
  with pytest.raises(UserError, match=r"neither tokenizer\.model .* nor tokenizer\.json"):
    vocabulary_from_path(str(tmp_path))
  with pytest.raises(UserError, match=r"No tokenizer at .*missing\.model"):
    vocabulary_from_path(str(tmp_path / "missing.model"))
  (tmp_path / "vocab.txt").write_text("a\nb\n")
  with pytest.raises(UserError, match=r"Unrecognized tokenizer file .*vocab\.txt"):
    vocabulary_from_path(str(tmp_path / "vocab.txt"))
  _write_json(tmp_path, "config.json", {"model_type": "llama"})
  with pytest.raises(UserError, match="is not a Hugging Face tokenizer.json"):
    vocabulary_from_path(str(tmp_path / "config.json"))
  if not os.path.exists(TINY_SP):
    pytest.skip(f"{TINY_SP} is absent")
  assert isinstance(vocabulary_from_path(TINY_SP), seqio.SentencePieceVocabulary)
  shutil.copy(TINY_SP, json_dir / "tokenizer.model")  # both: the SentencePiece original wins
  chosen = vocabulary_from_path(str(json_dir))
  assert isinstance(chosen, seqio.SentencePieceVocabulary)
  assert vocabularies.bos_id(chosen) is None  # the model defines no BOS (bos_id() == -1)
  assert vocabularies.bos_id(seqio.ByteVocabulary()) is None


def test_seqio_task_tokenizes_with_it(tmp_path):
  vocab = TokenizerJsonVocabulary(_train_bpe(str(tmp_path)))
  examples = [{"inputs": "the quick brown fox", "targets": "jumps over"},
              {"inputs": "hello world", "targets": "goodbye, 1999!"}]

  def dataset_fn(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(
        {k: [ex[k] for ex in examples] for k in ("inputs", "targets")})

  name = "test_vocabularies_tokenizer_json_task"
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=vocabularies.output_features(vocab))
  try:
    ds = seqio.get_mixture_or_task(name).get_dataset(
        {"inputs": 32, "targets": 32}, split="train", shuffle=False, use_cached=False)
    got = list(ds.as_numpy_iterator())
  finally:
    seqio.TaskRegistry.remove(name)
  assert len(got) == len(examples)
  for row, ex in zip(got, examples):
    for key in ("inputs", "targets"):
      assert row[key].dtype == np.int32
      assert row[key].tolist() == vocab.encode(ex[key]) + [vocab.eos_id]
      assert vocab.decode(row[key].tolist()) == ex[key]


def test_the_library_tokenizes_with_the_starting_checkpoints_own_tokenizer(tmp_path):
  from flan_jax import model_dir
  from flan_jax.data.vocabularies import library_vocabulary

  def _library_vocabulary(vocabulary_path, checkpoint_path):  # as a job resolves it
    checkpoint = checkpoint_path and model_dir.resolve(checkpoint_path)
    return library_vocabulary(vocabulary_path, checkpoint and checkpoint.tokenizer_dir)

  hf_dir = tmp_path / "hf"
  _train_bpe(hf_dir)  # a tokenizer.json (+ its config) beside an HF checkpoint
  assert isinstance(_library_vocabulary(None, str(hf_dir)), TokenizerJsonVocabulary)
  # An orbax conversion keeps the tokenizer under hf_files/.
  orbax_dir = tmp_path / "orbax"
  shutil.copytree(hf_dir, orbax_dir / "hf_files")
  assert _library_vocabulary(None, str(orbax_dir)) == _library_vocabulary(None, str(hf_dir))
  # An explicit path wins; no checkpoint and no path leave the default (bytes).
  other = tmp_path / "other"
  _train_bpe(other, corpus=CORPUS[:3], vocab_size=120)
  assert _library_vocabulary(str(other / "tokenizer.json"), str(hf_dir)) != \
      _library_vocabulary(None, str(hf_dir))
  assert _library_vocabulary(None, None) is None
  assert _library_vocabulary(None, str(tmp_path / "no_tokenizer_here")) is None
