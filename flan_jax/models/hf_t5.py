"""Hugging Face T5 checkpoints <-> our `T5` parameters.

Reads and writes the layout `transformers` uses for `T5ForConditionalGeneration`
(T5 v1.1, Flan-T5, original T5): a `config.json` plus safetensors, one
`model.safetensors` or shards listed in `model.safetensors.index.json`. Nothing
here imports torch or transformers.

The mapping is one table (`_tensor_specs`) read in both directions. Edge cases:

- HF `nn.Linear` weights are [out, in]; ours are [in, ...] split per head
  (query [E, H, D], out [H, D, E]), so each is transposed and reshaped.
- The relative position bias tables live in HF's `block.0` of each stack and at
  our stack level (`encoder/relpos_bias`); HF's decoder cross-attention in some
  old checkpoints also carries one, which nothing uses: it is ignored.
- The embedding is HF's `shared.weight`; `encoder.embed_tokens.weight` and
  `decoder.embed_tokens.weight` are aliases of it that files may or may not
  repeat. A repeated copy must equal it (untied input embeddings are not modelled).
- Output layer: original T5 reuses the embedding and scales the decoder output by
  d_model**-0.5; v1.1 has its own `lm_head.weight` and no scaling. transformers 5
  records the scaling as `scale_decoder_outputs` and always ties `lm_head` to
  `shared` unless the file holds a different `lm_head.weight`; transformers 4
  took both from `tie_word_embeddings` (default true). So: scaling decides our
  `tie_embeddings`; an untied model whose file lacks `lm_head.weight` gets a copy
  of the embedding (what transformers 5 computes); a scaled one must not have a
  different `lm_head.weight`. Export writes both config keys, and `lm_head.weight`
  exactly when untied.
- The embedding (and untied `lm_head`) is padded to `padded_vocab_size` on import
  and cut back on export.
"""

from typing import Any

import numpy as np

from flan_jax.errors import UserError
from flan_jax.models import layer_stack
from flan_jax.models.safetensors_io import (
    TensorReader, TensorSpec, check_tensor_names, export_tensors, read_config_json, read_tensor,
    same, set_path, tensor_files, transposed, write_checkpoint)
from flan_jax.models.t5 import FEED_FORWARDS, T5Config

SUPPORTED_ARCHITECTURES = ("T5ForConditionalGeneration",)
MODEL_TYPE = "t5"
# What config.json must say; everything else has a default.
REQUIRED_KEYS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
# Copies of the embedding a file may hold besides (or instead of) shared.weight.
_EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Present in some checkpoints, used by nothing (HF ignores it on load too).
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

Params = dict[str, Any]


def _scales_decoder_output(config_json: dict) -> bool:
  if "scale_decoder_outputs" in config_json:  # transformers 5
    return bool(config_json["scale_decoder_outputs"])
  return config_json.get("tie_word_embeddings", True) is not False  # transformers 4


def config_from_hf(config_json: dict, **overrides) -> T5Config:
  """A `T5Config` for a Hugging Face `config.json`; `overrides` set e.g. dtype or scan_layers."""
  architectures = config_json.get("architectures") or []
  if not architectures and config_json.get("model_type") == MODEL_TYPE:
    architectures = list(SUPPORTED_ARCHITECTURES)  # older configs name only the model type
  unsupported = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
  if not architectures or unsupported:
    raise UserError(
        f"unsupported architectures {architectures}: supported are "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
  feed_forward = config_json.get("feed_forward_proj", "relu")  # HF's default
  if feed_forward not in FEED_FORWARDS:
    raise UserError(f"feed_forward_proj={feed_forward!r} is not supported; supported are "
                    f"{', '.join(sorted(FEED_FORWARDS))}.")
  missing = [k for k in REQUIRED_KEYS if k not in config_json]
  if missing:
    raise UserError(f"config.json lacks {missing}, which a T5 config must have.")
  fields = dict(
      vocab_size=config_json["vocab_size"],
      embed_dim=config_json["d_model"],
      num_heads=config_json["num_heads"],
      head_dim=config_json["d_kv"],
      mlp_dim=config_json["d_ff"],
      num_encoder_layers=config_json["num_layers"],
      num_decoder_layers=config_json.get("num_decoder_layers") or config_json["num_layers"],
      relative_attention_num_buckets=config_json.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=config_json.get("relative_attention_max_distance", 128),
      norm_eps=config_json.get("layer_norm_epsilon", 1e-6),
      feed_forward=feed_forward,
      tie_embeddings=_scales_decoder_output(config_json),
  )
  fields.update(overrides)
  return T5Config(**fields)


def config_to_hf(config: T5Config, dtype: str = "float32") -> dict:
  """The `config.json` transformers 4 and 5 need to rebuild `config`.

  Token ids are T5's fixed ones (0 pads and starts the decoder, as in our
  training data); eos and the tokenizer's other ids come from the original config.
  """
  gated = FEED_FORWARDS[config.feed_forward][1]
  activation = config.feed_forward.split("-")[-1]
  return {
      "architectures": list(SUPPORTED_ARCHITECTURES),
      "model_type": MODEL_TYPE,
      "vocab_size": config.vocab_size,
      "d_model": config.embed_dim,
      "d_kv": config.head_dim,
      "d_ff": config.mlp_dim,
      "num_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "layer_norm_epsilon": config.norm_eps,
      "feed_forward_proj": config.feed_forward,
      "dense_act_fn": "gelu_new" if activation == "gelu" else activation,
      "is_gated_act": gated,
      # transformers 4 reads both tying and scaling from the first, 5 scaling from the second.
      "tie_word_embeddings": config.tie_embeddings,
      "scale_decoder_outputs": config.tie_embeddings,
      "is_encoder_decoder": True,
      "pad_token_id": 0,
      "decoder_start_token_id": 0,
      "torch_dtype": dtype,
      "dtype": dtype,
  }


def _attention(hf: str, ours: tuple[str, ...], config: T5Config) -> list[TensorSpec]:
  """q/k/v [H*D, E] <-> [E, H, D]; o [E, H*D] <-> [H, D, E]."""
  E, H, D = config.embed_dim, config.num_heads, config.head_dim
  specs = [TensorSpec(f"{hf}.{proj}.weight", ours + (name,), (H * D, E),
                 lambda w: w.T.reshape(E, H, D), lambda w: w.reshape(E, H * D).T)
           for proj, name in (("q", "query"), ("k", "key"), ("v", "value"))]
  specs.append(TensorSpec(f"{hf}.o.weight", ours + ("out",), (E, H * D),
                     lambda w: w.T.reshape(H, D, E), lambda w: w.reshape(H * D, E).T))
  return specs


def _mlp(hf: str, ours: tuple[str, ...], config: T5Config) -> list[TensorSpec]:
  E, M = config.embed_dim, config.mlp_dim
  kernel = lambda name: ours + (name, "kernel")
  if FEED_FORWARDS[config.feed_forward][1]:
    inputs = [transposed(f"{hf}.wi_0.weight", kernel("gate"), M, E),
              transposed(f"{hf}.wi_1.weight", kernel("up"), M, E)]
  else:
    inputs = [transposed(f"{hf}.wi.weight", kernel("up"), M, E)]
  return inputs + [transposed(f"{hf}.wo.weight", kernel("down"), E, M)]


def _tensor_specs(config: T5Config) -> list[TensorSpec]:
  E, V, Vp = config.embed_dim, config.vocab_size, config.padded_vocab_size
  relpos_shape = (config.relative_attention_num_buckets, config.num_heads)
  pad_rows = lambda w: np.pad(w, ((0, Vp - V), (0, 0)))
  specs = [TensorSpec("shared.weight", ("embedding",), (V, E), pad_rows, lambda w: w[:V])]

  specs.append(same("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                     ("encoder", "relpos_bias"), relpos_shape))
  for i in range(config.num_encoder_layers):
    hf, ours = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
    specs += [same(f"{hf}.0.layer_norm.weight", ours + ("attention_norm", "scale"), (E,)),
              *_attention(f"{hf}.0.SelfAttention", ours + ("attention",), config),
              same(f"{hf}.1.layer_norm.weight", ours + ("mlp_norm", "scale"), (E,)),
              *_mlp(f"{hf}.1.DenseReluDense", ours + ("mlp",), config)]
  specs.append(same("encoder.final_layer_norm.weight", ("encoder", "final_norm", "scale"), (E,)))

  specs.append(same("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                     ("decoder", "relpos_bias"), relpos_shape))
  for i in range(config.num_decoder_layers):
    hf, ours = f"decoder.block.{i}.layer", ("decoder", f"layers_{i}")
    specs += [same(f"{hf}.0.layer_norm.weight", ours + ("self_attention_norm", "scale"), (E,)),
              *_attention(f"{hf}.0.SelfAttention", ours + ("self_attention",), config),
              same(f"{hf}.1.layer_norm.weight", ours + ("cross_attention_norm", "scale"), (E,)),
              *_attention(f"{hf}.1.EncDecAttention", ours + ("cross_attention",), config),
              same(f"{hf}.2.layer_norm.weight", ours + ("mlp_norm", "scale"), (E,)),
              *_mlp(f"{hf}.2.DenseReluDense", ours + ("mlp",), config)]
  specs.append(same("decoder.final_layer_norm.weight", ("decoder", "final_norm", "scale"), (E,)))

  if not config.tie_embeddings:
    specs.append(TensorSpec("lm_head.weight", ("lm_head", "kernel"), (V, E),
                       lambda w: pad_rows(w).T, lambda w: w[:, :V].T))
  return specs


def _embedding_copies(config: T5Config) -> tuple[str, ...]:
  """Names a file may hold that must then equal shared.weight."""
  return _EMBEDDING_ALIASES + (("lm_head.weight",) if config.tie_embeddings else ())


def tensor_specs(config) -> list[TensorSpec]:
  """Every tensor of the checkpoint with its place in our parameters (LoRA adapters are
  exported beside the weights they adapt: `peft_io`)."""
  return _tensor_specs(config)


def load_hf_checkpoint(directory: str, **config_overrides) -> tuple[T5Config, Params]:
  """(config, params) from a Hugging Face T5 checkpoint directory.

  Params are numpy arrays in `config.param_dtype` (float32 unless overridden), in
  the unscanned layout (`layers_{i}`) whatever `scan_layers` says.
  """
  config = config_from_hf(read_config_json(directory, REQUIRED_KEYS), **config_overrides)
  files = tensor_files(directory)
  specs = _tensor_specs(config)
  copies = _embedding_copies(config)

  # Where each tensor is read from: itself, or for the embedding and an untied
  # lm_head left out of the file, the copy of the embedding the file does have.
  fallbacks = {"shared.weight": copies,
               "lm_head.weight": ("shared.weight",) + _EMBEDDING_ALIASES}
  sources = {}
  for spec in specs:
    candidates = (spec.hf_name,) + fallbacks.get(spec.hf_name, ())
    sources[spec.hf_name] = next((name for name in candidates if name in files), None)
  check_tensor_names(directory,
                     missing=[name for name, source in sources.items() if source is None],
                     unused=sorted(set(files) - set(sources) - set(copies) - set(_IGNORED)))

  params: Params = {}
  with TensorReader(files) as reader:
    for spec in specs:
      set_path(params, spec.path,
               read_tensor(reader, spec, config.param_dtype, sources[spec.hf_name]))
    embedding = reader.get(sources["shared.weight"])
    for name in copies:
      if name in files and name != sources["shared.weight"]:
        if not np.array_equal(reader.get(name), embedding):
          why = " (config.json ties the output layer to it)" if name == "lm_head.weight" else ""
          raise UserError(
              f"{directory}: {name} differs from the embedding ({sources['shared.weight']}); "
              f"only T5 with one shared embedding is supported{why}.")
  return config, params


def save_hf_checkpoint(params: Params, config: T5Config, directory: str,
                       max_shard_bytes: int | None = None, hf_config: dict | None = None,
                       dtype: str | None = None) -> None:
  """Writes config.json and safetensors that `transformers` loads as T5ForConditionalGeneration.

  `hf_config` is the original config.json, if any: its keys that our config does
  not determine (eos_token_id, n_positions, task_specific_params, ...) are kept.
  `dtype` defaults to the params' own. With `max_shard_bytes`, the tensors are
  split into shards of at most that size. Scanned params are unstacked first.
  """
  if config.scan_layers:
    params = layer_stack.unstack_layers(params)
  tensors = export_tensors(params, _tensor_specs(config), dtype)
  derived = config_to_hf(config, dtype=str(next(iter(tensors.values())).dtype))
  config_json = {k: v for k, v in (hf_config or {}).items() if k not in derived}
  config_json.update(derived)
  write_checkpoint(tensors, config_json, directory, max_shard_bytes)
