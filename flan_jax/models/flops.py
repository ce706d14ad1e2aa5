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

With LoRA (a config's `lora`) the step does less than 6 * N. A frozen base weight
costs 2 FLOPs per token forward and 2 backward: the gradient still flows through it
to the activations below (to reach the adapters there), but its own weight gradient
is never computed. Each adapter (A [in, rank], B [rank, out]: rank * (in + out)
weights, `adapter_matmul_weights`) is trained, so it costs the full 6. Per token:

    4 * N_base + 6 * N_adapters + 12 * layers * heads * head_dim * keys

Attention's score and value products have no weights; their backward is needed to
reach the adapters either way, so that term is unchanged. (The backward below the
lowest adapter is not needed at all, and XLA may drop it; it is counted, as a
run's adapters usually reach down to the first layer.)
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


def _projection_shapes(config: DecoderConfig | T5Config, kv_heads: int,
                       gated: bool) -> dict[str, tuple[int, int]]:
  """(inputs, outputs) of one layer's projections, by our layer names (`lora_names`)."""
  embed, mlp = config.embed_dim, config.mlp_dim
  heads, kv = config.num_heads * config.head_dim, kv_heads * config.head_dim
  shapes = {"query": (embed, heads), "key": (embed, kv), "value": (embed, kv),
            "out": (heads, embed), "up": (embed, mlp), "down": (mlp, embed)}
  return {**shapes, "gate": (embed, mlp)} if gated else shapes


def _adapters(config: DecoderConfig | T5Config, shapes: Mapping[str, tuple[int, int]],
              layers: frozenset[str] | set[str]) -> int:
  """Adapter weights, rank * (in + out) each, of the targeted ones among `layers`."""
  targeted = config.lora_layers()
  return sum(config.lora.rank * (inputs + outputs) for name, (inputs, outputs) in shapes.items()
             if name in targeted and name in layers)


def _output_adapter(config: DecoderConfig | T5Config) -> int:
  if config.tie_embeddings or "lm_head" not in config.lora_layers():
    return 0
  return config.lora.rank * (config.embed_dim + config.padded_vocab_size)


def adapter_matmul_weights(config: DecoderConfig | T5Config) -> dict[str, int]:
  """LoRA's adapter weights by the tokens they multiply, as `*_matmul_weights` splits
  the base's ({"decoder": 0} and so on without LoRA)."""
  if isinstance(config, T5Config):
    if config.lora is None:
      return {"encoder": 0, "decoder": 0}
    shapes = _projection_shapes(config, config.num_heads, FEED_FORWARDS[config.feed_forward][1])
    attention = _adapters(config, shapes, {"query", "key", "value", "out"})
    mlp = _adapters(config, shapes, {"gate", "up", "down"})
    cross_key_value = _adapters(config, shapes, {"key", "value"})  # read encoder tokens
    return {"encoder": config.num_encoder_layers * (attention + mlp)
                       + config.num_decoder_layers * cross_key_value,
            "decoder": config.num_decoder_layers * (2 * attention - cross_key_value + mlp)
                       + _output_adapter(config)}
  if config.lora is None:
    return {"decoder": 0}
  shapes = _projection_shapes(config, config.num_kv_heads, gated=True)
  return {"decoder": config.num_layers * _adapters(config, shapes, set(shapes))
                     + _output_adapter(config)}


def _weight_flops(config: DecoderConfig | T5Config, stack: str) -> float:
  """Per-token training FLOPs of a stack's weights: 6 each, or with LoRA 4 for each
  frozen base weight and 6 for each adapter's (see the module docstring)."""
  base = (encoder_decoder_matmul_weights(config) if isinstance(config, T5Config)
          else decoder_matmul_weights(config))[stack]
  if config.lora is None:
    return 6 * base
  return 4 * base + 6 * adapter_matmul_weights(config)[stack]


def decoder_flops_per_token(config: DecoderConfig,
                            seq_lengths: Mapping[str, int]) -> dict[str, float]:
  """Training FLOPs (forward and backward) per token of rows of `seq_lengths["decoder"]`."""
  width = config.num_heads * config.head_dim
  return {"decoder": _weight_flops(config, "decoder")
                     + 12 * config.num_layers * width * seq_lengths["decoder"]}


def encoder_decoder_flops_per_token(config: T5Config,
                                    seq_lengths: Mapping[str, int]) -> dict[str, float]:
  """Training FLOPs per token of each stack, for {"encoder": Le, "decoder": Ld}."""
  width = config.num_heads * config.head_dim
  encoder, decoder = seq_lengths["encoder"], seq_lengths["decoder"]
  return {"encoder": _weight_flops(config, "encoder")
                     + 12 * config.num_encoder_layers * width * encoder,
          "decoder": _weight_flops(config, "decoder")
                     + 12 * config.num_decoder_layers * width * (decoder + encoder)}


def per_sequence(flops_per_token: Mapping[str, float], seq_lengths: Mapping[str, int]) -> float:
  """Training FLOPs of one row of a batch: each stack's tokens times their FLOPs."""
  return sum(per_token * seq_lengths[stack] for stack, per_token in flops_per_token.items())
