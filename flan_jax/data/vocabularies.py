"""Vocabularies (bytes, SentencePiece, Hugging Face tokenizer.json) and the seqio output
features every flan_jax task declares.
"""

import hashlib
import json
import os
from typing import Any, Sequence

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from flan_jax.errors import UserError


def byte_vocabulary() -> seqio.Vocabulary:
  """UTF-8 bytes plus pad/eos/unk: needs no download, so the default mixture runs offline."""
  return seqio.ByteVocabulary()


def sentencepiece_vocabulary(path: str) -> seqio.Vocabulary:
  """A SentencePiece `.model` file as a seqio vocabulary."""
  return seqio.SentencePieceVocabulary(path)


# Where a tokenizer.json's special tokens are named, most specific first. The first two
# name tokens by their text (a string, or a dict with "content"), as transformers saves
# them; the last two give model ids (an int, or a list whose first entry is the main one).
_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_ID_FILES = ("generation_config.json", "config.json")
_SPECIAL = ("eos", "bos", "unk", "pad")


class TokenizerJsonVocabulary(seqio.Vocabulary):
  """A Hugging Face `tokenizer.json` (the `tokenizers` library format) as a seqio vocabulary.

  Encoding adds no special tokens: seqio appends EOS itself (the output feature's
  `add_eos`), and the model's BOS is the decoder's business. Text that spells a special
  token ("</s>", "<|eot_id|>") is encoded as ordinary text, as SentencePiece does, so
  data cannot smuggle control tokens in; pass `parse_special_tokens=True` for prompts
  (chat templates) that mean them. Truncation and padding stored in the file are turned
  off: seqio trims and pads to the task's feature lengths.

  The EOS, BOS, UNK and PAD ids come from the constructor when given, else from the files
  transformers saves next to tokenizer.json: tokenizer_config.json, special_tokens_map.json,
  generation_config.json, config.json, in that order. Without an EOS the vocabulary is
  unusable (seqio ends every feature with it), so that is an error.

  Padding: seqio's feature converters pad with 0 and derive loss weights and attention
  from `token != 0`, whatever `pad_id` says. `pad_id` is the tokenizer's own pad when
  it declares one (else 0), which only affects decoding: seqio's `decode_tf` overwrites
  what follows EOS with it. Padding positions holding 0 rather than the tokenizer's pad
  is harmless because they are masked; the cost is that a real token with id 0 in an
  unpacked target (GPT-2's "!"; Llama's is <unk>) gets loss weight 0 too.

  Decoding skips special tokens (so BOS/EOS/pad vanish, as SentencePiece's control
  tokens do; an <unk> marked special also vanishes where SentencePiece prints " ⁇ ") and
  drops ids outside the vocabulary.
  """

  def __init__(self, path: str, *, eos_id: int | None = None, bos_id: int | None = None,
               unk_id: int | None = None, pad_id: int | None = None,
               parse_special_tokens: bool = False):
    """Reads `path` (a tokenizer.json, local or any tf.io.gfile path) and its sibling configs.

    Args:
      path: the tokenizer.json file.
      eos_id, bos_id, unk_id, pad_id: ids that override what the sibling config files say.
      parse_special_tokens: encode special-token text in the input as the special ids.
    """
    super().__init__(extra_ids=0)
    self._path = path
    try:
      with tf.io.gfile.GFile(path, "r") as f:
        self._json = f.read()
    except (tf.errors.NotFoundError, OSError) as e:
      raise UserError(f"Cannot read tokenizer file {path!r}: {e}") from e
    self._parse_special_tokens = parse_special_tokens
    self._load_tokenizer()
    explicit = {"eos": eos_id, "bos": bos_id, "unk": unk_id, "pad": pad_id}
    # Only what was not given is looked up, so a stale config cannot block explicit ids.
    wanted = [name for name in _SPECIAL if explicit[name] is None]
    found = _special_ids_from_configs(os.path.dirname(path), self._tokenizer, path, wanted)
    self._ids = {name: explicit[name] if explicit[name] is not None else found.get(name)
                 for name in _SPECIAL}
    for name, value in self._ids.items():
      if value is not None and not 0 <= value < self._size:
        raise UserError(f"{name}_id {value} for {path!r} is outside its vocabulary of "
                        f"{self._size} ids.")
    if self._ids["eos"] is None:
      raise UserError(
          f"No EOS token for {path!r}: none of {', '.join(_TOKEN_FILES + _ID_FILES)} next to "
          "it names one. Put a tokenizer_config.json with \"eos_token\" beside it, or pass "
          "the id: TokenizerJsonVocabulary(path, eos_id=...).")

  def _load_tokenizer(self) -> None:
    """Builds the tokenizer from the stored JSON, with the settings the JSON does not keep."""
    try:
      tokenizer = tokenizers.Tokenizer.from_str(self._json)
    except Exception as e:  # the Rust parser's errors are plain Exceptions
      raise UserError(f"{self._path!r} is not a Hugging Face tokenizer.json: {e}") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()
    # Not part of the serialized JSON (and lost by pickling Tokenizer), so set it here.
    tokenizer.encode_special_tokens = not self._parse_special_tokens
    self._tokenizer = tokenizer
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    # Ids need not be dense (added tokens may leave gaps): the size must cover the largest.
    self._size = max(vocab.values()) + 1 if vocab else 0
    self._digest = hashlib.sha256(self._json.encode("utf-8")).hexdigest()

  # Pickling (gin deep-copies configurable arguments) keeps the JSON and rebuilds the
  # tokenizer, so the settings above survive it.
  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    del state["_tokenizer"]
    state.pop("_served", None)
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._load_tokenizer()

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    return self._tokenizer

  @property
  def served_tokenizer(self) -> tokenizers.Tokenizer:
    """The tokenizer as transformers loads it from the same file: special tokens in the
    text are matched (chat templates write them)."""
    if not hasattr(self, "_served"):
      served = tokenizers.Tokenizer.from_str(self._json)
      served.no_truncation()
      served.no_padding()
      self._served = served
    return self._served

  @property
  def path(self) -> str:
    return self._path

  @property
  def eos_id(self) -> int:
    return self._ids["eos"]

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  @property
  def unk_id(self) -> int | None:
    return self._ids["unk"]

  @property
  def pad_id(self) -> int:
    pad = self._ids["pad"]
    return 0 if pad is None else pad

  @property
  def _base_vocab_size(self) -> int:
    return self._size

  def _encode(self, s: str) -> Sequence[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self._size]
    return self._tokenizer.decode(ids, skip_special_tokens=True)

  # TensorFlow: tokenizers has no TF ops, so the graph calls back into Python through
  # tf.numpy_function (it works in tf.data maps; it cannot be exported in a SavedModel).

  def _encode_tf(self, s) -> tf.Tensor | tf.RaggedTensor:
    """A scalar string -> int32 [n]; strings [d0, ..., dk] -> ragged int32 [d0, ..., dk, None].

    The same shapes tf_text's SentencePiece tokenizer gives seqio.SentencePieceVocabulary.
    """
    s = tf.convert_to_tensor(s, dtype=tf.string)
    rank = s.shape.rank
    if rank is None:
      raise ValueError("encode_tf needs a string tensor of known rank.")
    if rank == 0:
      ids = tf.numpy_function(self._encode_scalar_np, [s], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids
    values, lengths = tf.numpy_function(self._encode_batch_np, [tf.reshape(s, [-1])],
                                        [tf.int32, tf.int64], stateful=False)
    values.set_shape([None])
    lengths.set_shape([None])
    ids = tf.RaggedTensor.from_row_lengths(values, lengths, validate=False)
    dims = tf.shape(s, out_type=tf.int64)
    for axis in range(rank - 1, 0, -1):  # restore the outer dimensions, innermost first
      ids = tf.RaggedTensor.from_uniform_row_length(ids, dims[axis], validate=False)
    return ids

  def _encode_scalar_np(self, s: np.ndarray | bytes) -> np.ndarray:
    # A 0-d array eagerly, bytes in a graph. Invalid UTF-8 would otherwise kill a
    # long-running input pipeline on one bad record.
    text = np.asarray(s).item().decode("utf-8", errors="replace")
    return np.asarray(self._encode(text), dtype=np.int32)

  def _encode_batch_np(self, strings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    texts = [s.decode("utf-8", errors="replace") for s in strings.tolist()]
    encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
    lengths = np.asarray([len(e.ids) for e in encodings], dtype=np.int64)
    values = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32,
                         count=int(lengths.sum()))
    return values, lengths

  def _decode_tf(self, ids) -> tf.Tensor | tf.RaggedTensor:
    """int ids [..., n] (dense or ragged) -> strings [...], one per innermost row."""
    if isinstance(ids, tf.RaggedTensor):
      if ids.flat_values.shape.rank > 1:  # ragged outside, uniform rows inside
        return ids.with_flat_values(self._decode_tf(ids.flat_values))
      splits = ids.nested_row_splits
      text = self._decode_rows_tf(ids.flat_values, splits[-1])
      return tf.RaggedTensor.from_nested_row_splits(text, splits[:-1]) if len(splits) > 1 else text
    ids = tf.convert_to_tensor(ids)
    rank = ids.shape.rank
    if rank is None or rank == 0:
      raise ValueError(f"decode_tf needs ids of known rank >= 1, got shape {ids.shape}.")
    shape = tf.shape(ids, out_type=tf.int64)
    flat = tf.reshape(ids, [-1])
    rows = tf.reduce_prod(shape[:-1])
    splits = tf.range(rows + 1, dtype=tf.int64) * shape[-1]
    text = self._decode_rows_tf(flat, splits)
    return tf.reshape(text, shape[:-1])

  def _decode_rows_tf(self, values: tf.Tensor, splits: tf.Tensor) -> tf.Tensor:
    text = tf.numpy_function(self._decode_rows_np, [values, tf.cast(splits, tf.int64)],
                             tf.string, stateful=False)
    text.set_shape([None])
    return text

  def _decode_rows_np(self, values: np.ndarray, splits: np.ndarray) -> np.ndarray:
    out = []
    for start, end in zip(splits[:-1].tolist(), splits[1:].tolist()):
      row = values[start:end].tolist()
      # decode_tf's contract is "through the first EOS", which seqio implements by
      # overwriting what follows with pad_id. Here that may be an ordinary token (no
      # declared pad -> 0), so stop at EOS ourselves.
      if self.eos_id in row:
        row = row[:row.index(self.eos_id)]
      out.append(self._decode(row).encode("utf-8"))
    return np.asarray(out, dtype=object)

  def __eq__(self, other) -> bool:
    # Same tokenizer (by content, not path) and same special ids: finetuning relies on
    # this to check every task of a mixture tokenizes alike.
    if not isinstance(other, TokenizerJsonVocabulary):
      return False
    return (self._digest, self._ids, self._parse_special_tokens) == (
        other._digest, other._ids, other._parse_special_tokens)

  def __hash__(self) -> int:
    return hash((self._digest, tuple(self._ids.items()), self._parse_special_tokens))

  def __str__(self) -> str:
    return (f"TokenizerJsonVocabulary(file={self._path}, size={self._size}, "
            f"sha256={self._digest[:12]})")

  __repr__ = __str__


def _special_ids_from_configs(directory: str, tokenizer: tokenizers.Tokenizer,
                              tokenizer_path: str, wanted: Sequence[str]) -> dict[str, int]:
  """The `wanted` special ids the config files beside a tokenizer.json declare; first file wins."""
  ids: dict[str, int] = {}
  for filename in _TOKEN_FILES + _ID_FILES:
    if len(ids) == len(wanted):
      break
    config = _read_json(os.path.join(directory, filename))
    if not isinstance(config, dict):
      continue
    for name in wanted:
      if name in ids:
        continue
      if filename in _TOKEN_FILES:
        token = config.get(f"{name}_token")
        if isinstance(token, dict):
          token = token.get("content")
        if not isinstance(token, str):
          continue
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
          raise UserError(f"{os.path.join(directory, filename)} names {name}_token {token!r}, "
                          f"which is not a token of {tokenizer_path}.")
        ids[name] = token_id
      else:
        value = config.get(f"{name}_token_id")
        if isinstance(value, list):  # e.g. Llama 3 Instruct ends on either of two ids
          value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool):
          ids[name] = value
  return ids


def _read_json(path: str) -> Any:
  """The parsed file, or None where there is no such file."""
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path, "r") as f:
      return json.loads(f.read())
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON: {e}") from e


def vocabulary_from_path(path: str) -> seqio.Vocabulary:
  """A tokenizer file, or a model directory holding one, as a seqio vocabulary.

  `*.model` is SentencePiece, `*.json` a Hugging Face tokenizer.json; a directory uses
  its tokenizer.model, else its tokenizer.json (SentencePiece first: where a checkpoint
  ships both, the .model is the original the .json was converted from).
  """
  path = os.path.expanduser(path)
  if tf.io.gfile.isdir(path):
    for name in ("tokenizer.model", "tokenizer.json"):
      candidate = os.path.join(path, name)
      if tf.io.gfile.exists(candidate):
        return vocabulary_from_path(candidate)
    raise UserError(f"Directory {path!r} has neither tokenizer.model (SentencePiece) nor "
                    "tokenizer.json (Hugging Face tokenizers).")
  if not tf.io.gfile.exists(path):
    raise UserError(f"No tokenizer at {path!r}: expected a SentencePiece .model file, a "
                    "Hugging Face tokenizer.json, or a directory holding one.")
  if path.endswith(".model"):
    return sentencepiece_vocabulary(path)
  if path.endswith(".json"):
    return TokenizerJsonVocabulary(path)
  raise UserError(f"Unrecognized tokenizer file {path!r}: expected a SentencePiece .model "
                  "file, a Hugging Face tokenizer.json, or a directory holding one.")


def bos_id(vocabulary: seqio.Vocabulary) -> int | None:
  """The vocabulary's beginning-of-sequence id, or None where it has none (bytes)."""
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    # The SentencePiece processor reports a missing BOS as -1.
    value = vocabulary.tokenizer.bos_id()
  else:
    try:
      value = vocabulary.bos_id
    except NotImplementedError:  # seqio's base class: vocabularies that never had one
      return None
  return int(value) if value is not None and value >= 0 else None


_default: seqio.Vocabulary | None = None


def set_default_vocabulary(vocabulary: seqio.Vocabulary | None) -> None:
  """The vocabulary tasks registered from now on use when they name none."""
  global _default
  _default = vocabulary


def default_vocabulary() -> seqio.Vocabulary:
  return _default or byte_vocabulary()


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  # Inputs end in EOS too: in a prefix-LM it marks where the prompt stops and the
  # answer starts, the same token the model sees before generating.
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


def library_vocabulary(vocabulary_path: str | None, tokenizer_dir: str | None):
  """What the task library tokenizes with: `vocabulary_path` if given, else the
  checkpoint's own tokenizer (`tokenizer_dir`: a Hugging Face directory, or the hf_files/
  of an orbax checkpoint from `convert --to_orbax`), else None (bytes)."""
  path = vocabulary_path or tokenizer_dir
  return vocabulary_from_path(path) if path else None
