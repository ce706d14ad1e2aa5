"""Vocabularies and the seqio output features every flan_jax task declares."""

import seqio


def byte_vocabulary() -> seqio.Vocabulary:
  """UTF-8 bytes plus pad/eos/unk: needs no download, so the default mixture runs offline."""
  return seqio.ByteVocabulary()


def sentencepiece_vocabulary(path: str) -> seqio.Vocabulary:
  """A SentencePiece `.model` file as a seqio vocabulary."""
  return seqio.SentencePieceVocabulary(path)


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
