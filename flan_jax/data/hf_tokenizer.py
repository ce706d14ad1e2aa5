"""The tokenizer a vocabulary is served with: conversations encoded as transformers
encodes them.

A chat model is trained once and served many times elsewhere: by transformers, by
vLLM, by anything that loads its tokenizer files and calls `apply_chat_template`.
Its training ids must be the ids those servers produce for the same rendered text,
or the model answers prompts it never saw. seqio's SentencePiece encoder is not
that tokenizer. It splits text at whitespace before merging and gives every piece
it is handed a dummy-prefix "▁"; transformers' Llama tokenizer (what `AutoTokenizer`
builds from a tokenizer.model) runs byte-fallback BPE over the whole text, puts the
prefix "▁" only at the very start, and matches special tokens (<s>, </s>, <unk>, the
model's control pieces) inside the text. Runs of spaces ("  two": '▁▁' 'two' against
'▁' '▁two') and the first piece after a special token ('</s>' '<0x0A>' against
'</s>' '▁' '<0x0A>') come out differently.

`served_tokenizer(vocabulary)` is that tokenizer, as a `tokenizers.Tokenizer`:
- a tokenizer.json vocabulary: its own tokenizer, special tokens matched in the text
  (transformers loads the same file);
- a SentencePiece BPE model (Llama, Mistral, stories260K): built the way transformers
  builds its Llama tokenizer from the .model: the pieces as the BPE vocabulary, the
  merges ranked by the merged piece's id (then by the left part's length), byte
  fallback, unknown pieces fused, "▁" for spaces with a prefix only at the start of
  the text, and the control and unknown pieces as special tokens, user-defined
  pieces as added ones;
- bytes: None. No outside tokenizer serves our byte vocabulary, so there is nothing
  to agree with.
SentencePiece Unigram models (T5's) are refused for conversations: transformers
normalizes their text with a character map this module does not reproduce.

`encode(tokenizer, text)` gives the ids and each id's [start, end) characters in
`text`, from which chat examples take their loss masks.
"""

import functools

import numpy as np
import seqio
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from flan_jax import paths
from flan_jax.errors import UserError
from flan_jax.data import vocabularies

# SentencePiece piece types (sentencepiece_model.proto).
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4
_BPE = 2


def _ranked_merges(vocab: dict[str, int]) -> list[tuple[str, str]]:
  """Every split of a piece into two pieces of the vocabulary, as a merge: ranked by
  the merged piece's id (SentencePiece's BPE scores fall with the id), ties by the
  left part's length, then the right's, then the parts' ids."""
  merges = []
  for piece, piece_id in vocab.items():
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in vocab and right in vocab:
        merges.append((piece_id, len(left), len(right), vocab[left], vocab[right], left, right))
  merges.sort()
  return [(left, right) for *_, left, right in merges]


def from_sentencepiece(model_proto: bytes, name: str = "the SentencePiece model"
                       ) -> tokenizers.Tokenizer:
  """transformers' Llama tokenizer for a SentencePiece BPE model (`legacy=False`)."""
  from sentencepiece import sentencepiece_model_pb2
  model = sentencepiece_model_pb2.ModelProto()
  model.ParseFromString(model_proto)
  if model.trainer_spec.model_type != _BPE:
    raise UserError(f"{name} is a SentencePiece Unigram model (as T5's): conversations are "
                    "encoded as transformers encodes them, which is supported for "
                    "SentencePiece BPE models (Llama-style) and tokenizer.json files. Train "
                    "conversations with such a tokenizer.")
  vocab = {piece.piece: index for index, piece in enumerate(model.pieces)}
  unknown = next((p.piece for p in model.pieces if p.type == _UNKNOWN), None)
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=_ranked_merges(vocab),
                                              unk_token=unknown, fuse_unk=True,
                                              byte_fallback=True))
  tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                     split=False)
  tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  tokenizer.add_special_tokens([tokenizers.AddedToken(p.piece, special=True, normalized=False)
                                for p in model.pieces if p.type in (_UNKNOWN, _CONTROL)])
  tokenizer.add_tokens([tokenizers.AddedToken(p.piece, special=False, normalized=False)
                        for p in model.pieces if p.type == _USER_DEFINED])
  return tokenizer


@functools.lru_cache(maxsize=8)
def _cached_sentencepiece(model_proto: bytes, name: str) -> tokenizers.Tokenizer:
  return from_sentencepiece(model_proto, name)


def served_tokenizer(vocabulary: seqio.Vocabulary) -> tokenizers.Tokenizer | None:
  """The tokenizer transformers serves `vocabulary`'s models with; None for bytes."""
  if isinstance(vocabulary, vocabularies.TokenizerJsonVocabulary):
    return vocabulary.served_tokenizer
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    return _cached_sentencepiece(vocabulary.sp_model, vocabulary.sentencepiece_model_file)
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return None
  raise UserError(f"conversations need a byte, SentencePiece or tokenizer.json vocabulary; "
                  f"got {type(vocabulary).__name__}.")


def encode(tokenizer: tokenizers.Tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
  """(ids [n], offsets [n, 2]): `text`'s ids, special tokens in it matched, nothing
  added around it, and the characters each id stands for."""
  encoding = tokenizer.encode(text, add_special_tokens=False)
  return (np.asarray(encoding.ids, np.int32),
          np.asarray(encoding.offsets, np.int64).reshape(-1, 2))


def token_id(tokenizer: tokenizers.Tokenizer, text: str) -> int | None:
  """The id of `text` when the tokenizer has it as one token (an added or special one,
  so that it is matched inside text), else None."""
  ids = tokenizer.encode(text, add_special_tokens=False).ids
  return ids[0] if len(ids) == 1 and tokenizer.id_to_token(ids[0]) == text else None


def adds_bos(tokenizer_dir: str, bos_id: int | None) -> bool:
  """Whether transformers' tokenizer for the files in `tokenizer_dir` puts the BOS in
  front of plain text by itself (`tokenizer(text)`), which is what lm-eval's Hugging
  Face backend scores and generates from.

  tokenizer_config.json's `add_bos_token` decides where it is set; else a tokenizer.json's
  post-processor (a Llama-3 style template adds it); a SentencePiece model alone adds
  nothing (transformers 5 reads it so; 4.x's LlamaTokenizer added one by default).
  """
  if bos_id is None:
    return False
  config_file = paths.join(tokenizer_dir, "tokenizer_config.json")
  if paths.exists(config_file):
    config = paths.read_json(config_file)
    if "add_bos_token" in config:
      return bool(config["add_bos_token"])
  tokenizer_file = paths.join(tokenizer_dir, "tokenizer.json")
  if paths.exists(tokenizer_file):
    tokenizer = tokenizers.Tokenizer.from_str(paths.read_text(tokenizer_file))
    with_special = tokenizer.encode("a", add_special_tokens=True).ids
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    return with_special[:1] == [bos_id] and plain[:1] != [bos_id]
  return False
