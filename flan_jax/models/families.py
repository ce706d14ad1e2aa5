"""What the trainer and evaluator need from a model, for each family.

The decoder-only family reads one row, prompt then answer (as a prefix-LM, or
causally for checkpoints imported from Hugging Face); the encoder-decoder family
(T5) reads the prompt with its encoder and writes the answer with its decoder.
Everything family-specific about turning a batch of seqio features into logits,
initialising parameters, laying out prompts for generation and packing training
rows lives here, so the train step, the trainer and the evaluator are written once.

Both families' batches share the target-side features (`decoder_target_tokens`,
`decoder_loss_weights`), so the loss is computed the same way for both.
"""

import dataclasses
from typing import Any, Mapping, Union

import jax.numpy as jnp
import numpy as np

from flan_jax.errors import UserError
from flan_jax.models.decoder import Decoder, DecoderConfig
from flan_jax.models.projection import project
from flan_jax.models.t5 import T5, T5Config

Batch = Mapping[str, Any]
Lengths = Mapping[str, int]

# Far below any real logit, yet finite: log_softmax over a row stays free of inf - inf.
_MASKED_LOGIT = -1e9


def mask_unused_ids(logits: jnp.ndarray, num_token_ids: int | None) -> jnp.ndarray:
  """logits [..., V] with ids >= num_token_ids set to a large negative value.

  Checkpoints pad their embedding tables beyond the tokenizer's ids (T5 32,100 ->
  32,128, Qwen2 151,665 -> 151,936); no text has those ids, so generation and scoring
  leave them out. The identity when num_token_ids is None or covers all V ids.
  """
  vocab = logits.shape[-1]
  if num_token_ids is None or num_token_ids >= vocab:
    return logits
  # -1e9 overflows float16 to -inf; its own minimum / 2 is still far below any logit.
  fill = max(_MASKED_LOGIT, float(jnp.finfo(logits.dtype).min) / 2)
  return jnp.where(jnp.arange(vocab) < num_token_ids, logits, jnp.asarray(fill, logits.dtype))


def _project(config, params, hidden_BxLxE) -> jnp.ndarray:
  """The output layer both model families end with (tied: the embedding; else lm_head),
  for losses that project a chunk of positions at a time."""
  if config.tie_embeddings:
    table = params["embedding"].astype(config.dtype)
    logits = jnp.einsum("ble,ve->blv", hidden_BxLxE, table)
  else:
    logits = project(hidden_BxLxE, params["lm_head"]["kernel"].astype(config.dtype))
  return logits.astype(jnp.float32)[..., :config.vocab_size]


def _dropout_rngs(rng) -> dict:
  """The models drop out only when handed a "dropout" rng (`layer_stack.dropout`)."""
  return {} if rng is None else {"dropout": rng}


def _ones_if_missing(batch: Batch, key: str, like: jnp.ndarray) -> jnp.ndarray:
  value = batch.get(key)
  return jnp.ones_like(like) if value is None else value


def _arange_if_missing(batch: Batch, key: str, like: jnp.ndarray) -> jnp.ndarray:
  value = batch.get(key)
  return jnp.broadcast_to(jnp.arange(like.shape[1]), like.shape) if value is None else value


@dataclasses.dataclass(frozen=True)
class DecoderOnly:
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
  encoder_decoder = False

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

  def project(self, params, hidden_BxLxE) -> jnp.ndarray:
    """Hidden states -> float32 logits [B, L, vocab_size], as the model's output layer."""
    return _project(self.config, params, hidden_BxLxE)

  def prompt_prefix(self) -> list[int]:
    return [self.bos_id]

  @property
  def inputs_eos(self) -> bool:
    """Whether prompts end with EOS: seqio's prefix-LM convention, never for causal
    checkpoints, which were pretrained to continue a prompt directly."""
    return self.config.prefix_lm

  def mask_unused_ids(self, logits: jnp.ndarray) -> jnp.ndarray:
    """logits [..., V] with ids >= num_token_ids pushed far below any real token's."""
    return mask_unused_ids(logits, self.num_token_ids)


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
  """T5: the encoder reads the inputs, the decoder starts from 0 and writes the targets.

  `num_token_ids` as for `DecoderOnly` (T5 pads its 32,100 ids to 32,128 rows).
  """
  config: T5Config
  num_token_ids: int | None = None
  encoder_decoder = True

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

  def project(self, params, hidden_BxLxE) -> jnp.ndarray:
    """Hidden states -> float32 logits [B, Ld, vocab_size], as T5's output layer: original
    T5 scales by embed_dim**-0.5 before reusing the embedding."""
    if self.config.tie_embeddings:
      hidden_BxLxE = hidden_BxLxE * (self.config.embed_dim ** -0.5)
    return _project(self.config, params, hidden_BxLxE)

  def prompt_prefix(self) -> list[int]:
    return []

  inputs_eos = True  # T5's encoder inputs end with EOS, as in its pretraining

  def mask_unused_ids(self, logits: jnp.ndarray) -> jnp.ndarray:
    """logits [..., V] with ids >= num_token_ids pushed far below any real token's."""
    return mask_unused_ids(logits, self.num_token_ids)


ModelFamily = Union[DecoderOnly, EncoderDecoder]


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


def family_for(config: DecoderConfig | T5Config, bos_id: int | None = None,
               num_token_ids: int | None = None) -> ModelFamily:
  """`num_token_ids`: the tokenizer's vocabulary size, if the model may have more rows."""
  if isinstance(config, T5Config):
    return EncoderDecoder(config, num_token_ids=num_token_ids)
  if isinstance(config, DecoderConfig):
    return DecoderOnly(config, bos_id=bos_id or 0, num_token_ids=num_token_ids)
  raise TypeError(f"no model family for {type(config).__name__}")
