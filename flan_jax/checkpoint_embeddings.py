"""Text embeddings from a flan_jax checkpoint: its last hidden states, mean-pooled.

For curation's diversity selection (`flan_jax.data.diversity`), which takes any
vectors: the data library knows no models, so the model-reading half lives here.
A decoder reads "[BOS] text" causally and the hidden states the model would project
onto the vocabulary (after the final norm) are averaged over the text's tokens; an
encoder-decoder's encoder output is averaged the same way. Texts longer than
`max_length` tokens keep their beginning. Rows are padded to one shape, so the
forward pass compiles once.
"""

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax import checkpoint_eval, job, model_dir
from flan_jax.data import vocabularies


def checkpoint_embeddings(checkpoint_path: str, texts: list[str], *,
                          vocabulary_path: str | None = None, max_length: int = 256,
                          batch_size: int = 16) -> np.ndarray:
  """[len(texts), embed_dim] float32 mean-pooled hidden states."""
  checkpoint = model_dir.resolve(checkpoint_path)
  vocabulary = (vocabularies.library_vocabulary(vocabulary_path, checkpoint.tokenizer_dir)
                or vocabularies.byte_vocabulary())
  config, params = checkpoint_eval.load_checkpoint(checkpoint)
  job.check_vocabulary_fits(config, vocabulary, checkpoint_path)
  network = job.network_for(config, vocabulary)
  params = jax.device_put(params)
  prefix = [] if network.encoder_decoder else [network.bos_id]

  @jax.jit
  def pooled(params, tokens_BxL, mask_BxL):
    if network.encoder_decoder:
      hidden_BxLxE = network.encode(params, tokens_BxL, mask_BxL)
    else:
      hidden_BxLxE = network.hidden_states(params, {
          "decoder_input_tokens": tokens_BxL, "decoder_segment_ids": mask_BxL,
          "decoder_causal_attention": jnp.zeros_like(tokens_BxL)})
    weights_BxLx1 = mask_BxL[..., None].astype(jnp.float32)
    return (hidden_BxLxE.astype(jnp.float32) * weights_BxLx1).sum(1) / jnp.maximum(
        weights_BxLx1.sum(1), 1.0)

  rows = []
  for start in range(0, len(texts), batch_size):
    batch = texts[start:start + batch_size]
    tokens_BxL = np.zeros((batch_size, max_length), np.int32)
    mask_BxL = np.zeros((batch_size, max_length), np.int32)
    for row, text in enumerate(batch):
      ids = (prefix + list(vocabulary.encode(text)))[:max_length]
      tokens_BxL[row, :len(ids)], mask_BxL[row, :len(ids)] = ids, 1
    rows.append(np.asarray(pooled(params, tokens_BxL, mask_BxL))[:len(batch)])
  return np.concatenate(rows) if rows else np.zeros((0, config.embed_dim), np.float32)
