"""What the trainer and evaluator need from a model, for each family.

The decoder-only family reads one row, prompt then answer (as a prefix-LM, or
causally for checkpoints imported from Hugging Face); the encoder-decoder family
(T5) reads the prompt with its encoder and writes the answer with its decoder.
Everything family-specific about turning a batch of seqio features into logits,
initialising parameters, laying out prompts for generation and packing training
rows lives here, so the train step, the trainer and the evaluator are written once.

Both families' batches share the target-side features (`decoder_target_tokens`,
`decoder_loss_weights`), so the loss is computed the same way for both.

Decoding and scoring talk to a family only (`ModelFamily`): `prefill` and `step` for
generation, `reorder_cache` for beam search, `encode`/`decode` where the prompt is
encoded apart (`encoder_decoder`). A family is registered for its config class
(`register_family`), and `family_for(config)` finds it: a new family is its model
module, its family class here and one registration.
"""

import dataclasses
from typing import Any, ClassVar, Mapping, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.errors import UserError
from flan_jax.models import flops, int8_base, lora
from flan_jax.models.config import ModelConfig
from flan_jax.models.decoder import Decoder, DecoderConfig
from flan_jax.models.decoder import init_cache as init_decoder_cache
from flan_jax.models.layer_stack import take_cache_rows
from flan_jax.models.layers import MASKED_SCORE, linear, output_logits
from flan_jax.models.t5 import T5, T5Config
from flan_jax.models.t5 import init_cache as init_t5_cache

Batch = Mapping[str, Any]
Lengths = Mapping[str, int]
Cache = dict[str, Any]


def mask_unused_ids(logits: jnp.ndarray, num_token_ids: int | None) -> jnp.ndarray:
  """logits [..., V] with ids >= num_token_ids set to a large negative value.

  Checkpoints pad their embedding tables beyond the tokenizer's ids (T5 32,100 ->
  32,128, Qwen2 151,665 -> 151,936); no text has those ids, so generation and scoring
  leave them out. The identity when num_token_ids is None or covers all V ids.
  """
  vocab = logits.shape[-1]
  if num_token_ids is None or num_token_ids >= vocab:
    return logits
  # MASKED_SCORE overflows float16 to -inf; its own minimum / 2 is still far below any logit.
  fill = max(MASKED_SCORE, float(jnp.finfo(logits.dtype).min) / 2)
  return jnp.where(jnp.arange(vocab) < num_token_ids, logits, jnp.asarray(fill, logits.dtype))


def target_log_probs(logits_BxLxV, targets_BxL, weights_BxL) -> jnp.ndarray:
  """Each target token's log-probability under the logits, times its weight ([B, L]
  float32: 0 where the weight is 0). Scoring ranks options by these; preference losses
  compare them."""
  log_probs = jax.nn.log_softmax(logits_BxLxV.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, targets_BxL[..., None], axis=-1)[..., 0]
  return picked * weights_BxL


def _prompt_ids(mask_BxP):
  """Segment ids and positions of left-padded prompts: padding is segment 0, and each
  row's positions count only its real tokens."""
  segment_ids = mask_BxP.astype(jnp.int32)
  return segment_ids, jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)


def _dropout_rngs(rng) -> dict:
  """The models drop out only when handed a "dropout" rng (`layer_stack.dropout`)."""
  return {} if rng is None else {"dropout": rng}


def _ones_if_missing(batch: Batch, key: str, like: jnp.ndarray) -> jnp.ndarray:
  value = batch.get(key)
  return jnp.ones_like(like) if value is None else value


def _arange_if_missing(batch: Batch, key: str, like: jnp.ndarray) -> jnp.ndarray:
  value = batch.get(key)
  return jnp.broadcast_to(jnp.arange(like.shape[1]), like.shape) if value is None else value


class ModelFamily(Protocol):
  """What the trainer, the evaluator, decoding and scoring need from a model family.

  Generation: `prefill(params, prompts [B, P] left-padded, mask [B, P], max_new_tokens)`
  -> (logits [B, V] for the first new token, cache, context); then per token
  `step(params, context, token [B], t, cache)` -> (logits [B, V], cache), t counting
  the new tokens from 0; `reorder_cache(cache, rows)` moves rows with their beams.
  An `encoder_decoder` family also has `encode` and `decode` (scoring encodes each
  prompt once for all its options).
  """
  config: ModelConfig
  bos_id: int  # the token every decoder row starts from
  num_token_ids: int | None
  encoder_decoder: bool
  inputs_eos: bool
  causal: bool  # every position attends only to earlier ones, the prompt's included

  def sequence_lengths(self, task_feature_lengths: Lengths) -> dict[str, int]: ...
  def init(self, rng, task_feature_lengths: Lengths): ...
  def logits(self, params, batch: Batch, dropout_rng=None) -> jnp.ndarray: ...
  def hidden_states(self, params, batch: Batch, dropout_rng=None) -> jnp.ndarray: ...
  def project(self, params, hidden_BxLxE) -> jnp.ndarray: ...
  def mask_unused_ids(self, logits: jnp.ndarray) -> jnp.ndarray: ...
  def prompt_prefix(self) -> list[int]: ...
  def prefill(self, params, prompts_BxP, mask_BxP, max_new_tokens: int) -> tuple: ...
  def step(self, params, context, token_B, t, cache: Cache) -> tuple: ...
  def reorder_cache(self, cache: Cache, rows) -> Cache: ...
  def matmul_weights(self) -> dict[str, int]: ...
  def flops_per_token(self, seq_lengths: Mapping[str, int]) -> dict[str, float]: ...
  def flops_per_sequence(self, seq_lengths: Mapping[str, int]) -> float: ...


class _Family:
  """What every family does alike, over its `config` and `num_token_ids`."""
  config: ModelConfig
  num_token_ids: int | None

  def project(self, params, hidden_BxLxE) -> jnp.ndarray:
    """Hidden states -> float32 logits [B, L, vocab_size]: the model's output layer
    (`layers.output_logits`), for losses that project a chunk of positions at a time."""
    config = self.config
    lm_head = None
    if not config.tie_embeddings:
      layer = params["lm_head"]
      w = layer["kernel"].astype(config.dtype)
      scale = layer.get("kernel" + int8_base.SCALE_SUFFIX)
      if scale is not None:  # an int8 base (`int8_base`), as `layers.linear` applies it
        w = int8_base.QuantizedWeight(layer["kernel"], scale.astype(config.dtype))
      adapter = layer.get("kernel" + lora.ADAPTER_SUFFIX)
      if adapter is not None:  # as `layers.LoraAdapter` applies it (no dropout there either)
        w = lora.AdaptedWeight(w, lambda x: lora.update(
            x, adapter["a"].astype(config.dtype), adapter["b"].astype(config.dtype),
            config.lora.scaling, linear))
      lm_head = lambda x: linear(x, w)
    return output_logits(config, hidden_BxLxE, params["embedding"], lm_head, constrained=False)

  def reorder_cache(self, cache: Cache, rows) -> Cache:
    """The cache of rows `rows` (beam search moves caches with their beams)."""
    return take_cache_rows(cache, rows, self.config.scan_layers)

  def mask_unused_ids(self, logits: jnp.ndarray) -> jnp.ndarray:
    """logits [..., V] with ids >= num_token_ids pushed far below any real token's."""
    return mask_unused_ids(logits, self.num_token_ids)

  def flops_per_sequence(self, seq_lengths: Mapping[str, int]) -> float:
    """Training FLOPs of one row of `seq_lengths` (`sequence_lengths`), for MFU."""
    return flops.per_sequence(self.flops_per_token(seq_lengths), seq_lengths)


@dataclasses.dataclass(frozen=True)
class DecoderOnly(_Family):
  """[BOS] + inputs + targets in one row; with `config.prefix_lm` the prompt is read bidirectionally.

  `bos_id` starts every row: 0 for our own vocabularies (as seqio's PrefixLM
  converter does), the tokenizer's BOS for pretrained checkpoints (1 for Llama's
  SentencePiece, where 0 is <unk>).

  `num_token_ids` is the tokenizer's vocabulary size when the checkpoint has more
  embedding rows than that (Qwen2: 151,936 rows for 151,665 ids); the extra ids are
  masked out of generation and scoring. None: every row is a token.
  """
  config: DecoderConfig
  bos_id: int = 0
  num_token_ids: int | None = None
  encoder_decoder: ClassVar[bool] = False
  name: ClassVar[str] = "decoder"  # the "family" MODEL_DIR's config records

  @classmethod
  def from_config(cls, config: DecoderConfig, bos_id: int | None,
                  num_token_ids: int | None) -> "DecoderOnly":
    return cls(config, bos_id=bos_id or 0, num_token_ids=num_token_ids)

  @property
  def module(self) -> Decoder:
    return Decoder(self.config)

  def sequence_lengths(self, task_feature_lengths: Lengths) -> dict[str, int]:
    return {"decoder": task_feature_lengths["inputs"] + task_feature_lengths["targets"]}

  def example_batch(self, task_feature_lengths: Lengths) -> dict[str, np.ndarray]:
    zeros = np.zeros((1, self.sequence_lengths(task_feature_lengths)["decoder"]), np.int32)
    return {"decoder_input_tokens": zeros, "decoder_segment_ids": zeros,
            "decoder_positions": zeros, "decoder_causal_attention": zeros}

  def init(self, rng, task_feature_lengths: Lengths):
    return self.module.init(rng, *self.inputs(self.example_batch(task_feature_lengths)))

  def inputs(self, batch: Batch) -> tuple:
    """(tokens, positions, segment_ids, prefix); unpacked batches are one example per row."""
    tokens = batch["decoder_input_tokens"]
    return (tokens, _arange_if_missing(batch, "decoder_positions", tokens),
            _ones_if_missing(batch, "decoder_segment_ids", tokens),
            batch["decoder_causal_attention"])

  def logits(self, params, batch: Batch, dropout_rng=None) -> jnp.ndarray:
    """[B, L, V]; with `dropout_rng`, as in training (dropout applied)."""
    return self.module.apply({"params": params}, *self.inputs(batch),
                             rngs=_dropout_rngs(dropout_rng))[0]

  def hidden_states(self, params, batch: Batch, dropout_rng=None) -> jnp.ndarray:
    """[B, L, E]: what `logits` projects onto the vocabulary (`project`)."""
    return self.module.apply({"params": params}, *self.inputs(batch), return_hidden=True,
                             rngs=_dropout_rngs(dropout_rng))[0]

  def prefill(self, params, prompts_BxP, mask_BxP, max_new_tokens: int):
    """The prompts read into a cache with room for `max_new_tokens` more; the context is
    each row's next position."""
    batch, prompt_length = prompts_BxP.shape
    cache = init_decoder_cache(self.config, batch, prompt_length + max_new_tokens)
    segment_ids, positions = _prompt_ids(mask_BxP)
    logits, cache = self.module.apply({"params": params}, prompts_BxP, positions, segment_ids,
                                      segment_ids, cache=cache)
    return logits[:, -1], cache, positions[:, -1] + 1

  def step(self, params, next_position_B, token_B, t, cache: Cache):
    ones = jnp.ones((token_B.shape[0], 1), jnp.int32)
    logits, cache = self.module.apply({"params": params}, token_B[:, None],
                                      (next_position_B + t)[:, None], ones, 0 * ones,
                                      cache=cache)
    return logits[:, -1], cache

  def prompt_prefix(self) -> list[int]:
    return [self.bos_id]

  @property
  def inputs_eos(self) -> bool:
    """Whether prompts end with EOS: seqio's prefix-LM convention, never for causal
    checkpoints, which were pretrained to continue a prompt directly."""
    return self.config.prefix_lm

  @property
  def causal(self) -> bool:
    return not self.config.prefix_lm

  def matmul_weights(self) -> dict[str, int]:
    return flops.decoder_matmul_weights(self.config)

  def flops_per_token(self, seq_lengths: Mapping[str, int]) -> dict[str, float]:
    return flops.decoder_flops_per_token(self.config, seq_lengths)


@dataclasses.dataclass(frozen=True)
class EncoderDecoder(_Family):
  """T5: the encoder reads the inputs, the decoder starts from 0 and writes the targets.

  `num_token_ids` as for `DecoderOnly` (T5 pads its 32,100 ids to 32,128 rows).
  """
  config: T5Config
  num_token_ids: int | None = None
  encoder_decoder: ClassVar[bool] = True
  name: ClassVar[str] = "t5"
  # The decoder's start token, whatever the tokenizer's BOS: T5 was pretrained so.
  bos_id: ClassVar[int] = 0

  @classmethod
  def from_config(cls, config: T5Config, bos_id: int | None,
                  num_token_ids: int | None) -> "EncoderDecoder":
    del bos_id  # see `bos_id` above
    return cls(config, num_token_ids=num_token_ids)

  @property
  def module(self) -> T5:
    return T5(self.config)

  def sequence_lengths(self, task_feature_lengths: Lengths) -> dict[str, int]:
    return {"encoder": task_feature_lengths["inputs"], "decoder": task_feature_lengths["targets"]}

  def example_batch(self, task_feature_lengths: Lengths) -> dict[str, np.ndarray]:
    lengths = self.sequence_lengths(task_feature_lengths)
    return {"encoder_input_tokens": np.zeros((1, lengths["encoder"]), np.int32),
            "decoder_input_tokens": np.zeros((1, lengths["decoder"]), np.int32)}

  def init(self, rng, task_feature_lengths: Lengths):
    batch = self.example_batch(task_feature_lengths)
    return self.module.init(rng, batch["encoder_input_tokens"], batch["decoder_input_tokens"])

  def _apply(self, params, batch: Batch, dropout_rng, return_hidden: bool) -> jnp.ndarray:
    return self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        encoder_segment_ids=batch.get("encoder_segment_ids"),
        decoder_segment_ids=batch.get("decoder_segment_ids"),
        encoder_positions=batch.get("encoder_positions"),
        decoder_positions=batch.get("decoder_positions"), return_hidden=return_hidden,
        rngs=_dropout_rngs(dropout_rng))

  def logits(self, params, batch: Batch, dropout_rng=None) -> jnp.ndarray:
    """[B, Ld, V]; with `dropout_rng`, as in training (dropout applied)."""
    return self._apply(params, batch, dropout_rng, return_hidden=False)

  def hidden_states(self, params, batch: Batch, dropout_rng=None) -> jnp.ndarray:
    """[B, Ld, E]: what `logits` projects onto the vocabulary (`project`)."""
    return self._apply(params, batch, dropout_rng, return_hidden=True)

  def encode(self, params, tokens_BxL, segment_ids_BxL, positions_BxL=None) -> jnp.ndarray:
    """Encoded inputs [B, L, E] (`T5.encode`)."""
    return self.module.apply({"params": params}, tokens_BxL, segment_ids_BxL, positions_BxL,
                             method=T5.encode)

  def decode(self, params, encoded, encoder_segment_ids, tokens_BxL, segment_ids_BxL=None,
             positions_BxL=None, cache: Cache | None = None):
    """(logits [B, L, V], new cache or None) of decoder rows reading `encoded` (`T5.decode`)."""
    return self.module.apply({"params": params}, encoded, encoder_segment_ids, tokens_BxL,
                             segment_ids_BxL, positions_BxL, cache=cache, method=T5.decode)

  def prefill(self, params, prompts_BxP, mask_BxP, max_new_tokens: int):
    """The prompts encoded, then the decoder's start token 0 (slot 0) read: its logits
    give the first new token, and this first call adds the cross-attention keys and
    values to the cache. The context is the encoding and its segment ids."""
    batch = prompts_BxP.shape[0]
    segment_ids, positions = _prompt_ids(mask_BxP)
    context = (self.encode(params, prompts_BxP, segment_ids, positions), segment_ids)
    cache = init_t5_cache(self.config, batch, max_new_tokens + 1)
    logits, cache = self._decode_slot(params, context, jnp.zeros((batch,), jnp.int32),
                                      jnp.zeros((), jnp.int32), cache)
    return logits, cache, context

  def step(self, params, context, token_B, t, cache: Cache):
    return self._decode_slot(params, context, token_B, t + 1, cache)

  def _decode_slot(self, params, context, token_B, slot, cache: Cache):
    encoded, segment_ids = context
    batch = token_B.shape[0]
    logits, cache = self.decode(params, encoded, segment_ids, token_B[:, None],
                                jnp.ones((batch, 1), jnp.int32),
                                jnp.broadcast_to(slot, (batch, 1)), cache=cache)
    return logits[:, -1], cache

  def prompt_prefix(self) -> list[int]:
    return []

  inputs_eos = True  # T5's encoder inputs end with EOS, as in its pretraining
  causal = False  # the encoder reads the prompt bidirectionally

  def matmul_weights(self) -> dict[str, int]:
    return flops.encoder_decoder_matmul_weights(self.config)

  def flops_per_token(self, seq_lengths: Mapping[str, int]) -> dict[str, float]:
    return flops.encoder_decoder_flops_per_token(self.config, seq_lengths)


def conversation_reader(network: ModelFamily) -> ModelFamily:
  """The family that reads a conversation as training reads it: one causal sequence,
  the prompt included (a prefix-LM would read a chat prompt bidirectionally, which its
  conversations never were). The parameters are the same. Encoder-decoder models
  train on conversations only in their decoder, so they cannot be prompted with one."""
  if network.encoder_decoder:
    raise UserError("Conversations are trained as one causal sequence in a decoder-only "
                    "model; an encoder-decoder model (T5) cannot be evaluated on or answer "
                    "them. Use a decoder-only model for chat.")
  if not network.config.prefix_lm:
    return network
  return dataclasses.replace(network, config=dataclasses.replace(network.config, prefix_lm=False))


_FAMILIES: dict[type, type] = {}  # config class -> family class


def register_family(config_class: type, family_class: type) -> None:
  """`family_for` builds `family_class.from_config(config, bos_id, num_token_ids)` for a
  config of `config_class`; `family_class.name` is what MODEL_DIR's config records."""
  _FAMILIES[config_class] = family_class


register_family(DecoderConfig, DecoderOnly)
register_family(T5Config, EncoderDecoder)


def config_classes() -> dict[str, type]:
  """Each registered family's name -> its config class."""
  return {family.name: config_class for config_class, family in _FAMILIES.items()}


def _family_class(config: ModelConfig) -> type:
  for config_class in type(config).__mro__:
    if config_class in _FAMILIES:
      return _FAMILIES[config_class]
  raise TypeError(f"no model family for {type(config).__name__}")


def family_name(config: ModelConfig) -> str:
  """The name MODEL_DIR's config records for the family of `config` ("decoder", "t5")."""
  return _family_class(config).name


def family_for(config: ModelConfig, bos_id: int | None = None,
               num_token_ids: int | None = None) -> ModelFamily:
  """`num_token_ids`: the tokenizer's vocabulary size, if the model may have more rows."""
  return _family_class(config).from_config(config, bos_id=bos_id, num_token_ids=num_token_ids)
