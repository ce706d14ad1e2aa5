"""Vocabularies and the seqio output features every flan_jax task declares."""

import seqio


def byte_vocabulary() -> seqio.Vocabulary:
  """UTF-8 bytes plus pad/eos/unk: needs no download, so the default mixture runs offline."""
  return seqio.ByteVocabulary()


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  # Inputs end in EOS too: in a prefix-LM it marks where the prompt stops and the
  # answer starts, the same token the model sees before generating.
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
