"""Model FLOPs of a training step: what MFU (model FLOPs utilisation) divides by time.

Counted from the config, as MaxText and PaLM (appendix B) count them: per token,

    6 * N + 12 * layers * heads * head_dim * keys

N is the matmul weights the token passes through (every projection and the output
layer, not the embedding lookup, norms or T5's relative position tables); a weight
costs 2 FLOPs per token forward and 4 backward. The second term is attention's
scores and weighted values (2 matmuls of heads * head_dim per key, forward and
backward), over all `keys` of the sequence: full, not causal, as usual. These are the
model's FLOPs, not the hardware's: recomputation (remat, the chunked loss) is not
counted, and padding is, as the device computes it.

An encoder-decoder's stacks are counted apart: an encoder token passes through the
encoder and, in each decoder layer, cross-attention's key and value projections; a
decoder token through the rest, attending over the decoder's keys and then the
encoder's.
"""

from typing import Mapping

from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.t5 import FEED_FORWARDS, T5Config


def _attention_projections(config: DecoderConfig | T5Config, kv_heads: int) -> int:
  """Query and output weights (heads), key and value weights (kv heads)."""
  width = config.embed_dim * config.head_dim
  return 2 * width * config.num_heads + 2 * width * kv_heads


def _mlp_weights(config: DecoderConfig | T5Config, gated: bool) -> int:
  return (3 if gated else 2) * config.embed_dim * config.mlp_dim


def _output_layer(config: DecoderConfig | T5Config) -> int:
  """The output layer counts its padded vocabulary: that is the matmul the device runs."""
  return config.embed_dim * config.padded_vocab_size


def decoder_matmul_weights(config: DecoderConfig) -> dict[str, int]:
  """{"decoder": N}: every token passes through all of a decoder-only model's weights."""
  layer = _attention_projections(config, config.num_kv_heads) + _mlp_weights(config, gated=True)
  return {"decoder": config.num_layers * layer + _output_layer(config)}


def encoder_decoder_matmul_weights(config: T5Config) -> dict[str, int]:
  """{"encoder": N_enc, "decoder": N_dec}: matmul weights by the tokens they multiply."""
  mlp = _mlp_weights(config, gated=FEED_FORWARDS[config.feed_forward][1])
  attention = _attention_projections(config, config.num_heads)  # T5: as many kv heads
  cross_key_value = attention // 2
  return {"encoder": config.num_encoder_layers * (attention + mlp)
                     + config.num_decoder_layers * cross_key_value,
          "decoder": config.num_decoder_layers * (2 * attention - cross_key_value + mlp)
                     + _output_layer(config)}


def decoder_flops_per_token(config: DecoderConfig,
                            seq_lengths: Mapping[str, int]) -> dict[str, float]:
  """Training FLOPs (forward and backward) per token of rows of `seq_lengths["decoder"]`."""
  width = config.num_heads * config.head_dim
  return {"decoder": 6 * decoder_matmul_weights(config)["decoder"]
                     + 12 * config.num_layers * width * seq_lengths["decoder"]}


def encoder_decoder_flops_per_token(config: T5Config,
                                    seq_lengths: Mapping[str, int]) -> dict[str, float]:
  """Training FLOPs per token of each stack, for {"encoder": Le, "decoder": Ld}."""
  weights = encoder_decoder_matmul_weights(config)
  width = config.num_heads * config.head_dim
  encoder, decoder = seq_lengths["encoder"], seq_lengths["decoder"]
  return {"encoder": 6 * weights["encoder"] + 12 * config.num_encoder_layers * width * encoder,
          "decoder": 6 * weights["decoder"]
                     + 12 * config.num_decoder_layers * width * (decoder + encoder)}


def per_sequence(flops_per_token: Mapping[str, float], seq_lengths: Mapping[str, int]) -> float:
  """Training FLOPs of one row of a batch: each stack's tokens times their FLOPs."""
  return sum(per_token * seq_lengths[stack] for stack, per_token in flops_per_token.items())
