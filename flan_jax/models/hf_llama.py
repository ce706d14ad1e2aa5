"""Hugging Face Llama-family checkpoints <-> our `Decoder` parameters.

Reads and writes the layout `transformers` uses for `LlamaForCausalLM` (and the
architecturally identical `MistralForCausalLM` and `Qwen2ForCausalLM`): a
`config.json` plus safetensors, either one `model.safetensors` or shards listed in
`model.safetensors.index.json`. Nothing here imports torch or transformers.

The mapping is one table (`_tensor_specs`) read in both directions, so import and
export cannot drift apart. Edge cases:

- HF `nn.Linear` weights are [out, in]; ours are [in, ...] split per head
  (query [E, H, D], out [H, D, E]), so each is transposed and reshaped.
- HF's q/k projections are already in the rotate-half RoPE layout our `apply_rope`
  uses (the permutation happens in HF's own Meta->HF conversion), so no
  permutation is needed in either direction.
- Our embedding (and untied `lm_head`) is padded to `padded_vocab_size` so it
  splits evenly over a tensor-parallel axis; import pads with zero rows, export
  cuts them off again. The padded logits are never seen (the decoder cuts them).
- With tied embeddings HF usually omits `lm_head.weight`. If the file has one anyway
  we do what transformers does (`PreTrainedModel.tie_weights`): an exact copy of the
  embedding stays tied, a different one is loaded untied (`tie_embeddings=False`),
  since that lm_head is what transformers computes its logits with.
- RoPE may be plain, "linear" or Llama 3.1/3.2's "llama3" scaling; other types
  ("yarn", "dynamic", ...) are refused rather than silently giving different logits. Mistral's sliding window is not modelled: sequences up
  to `sliding_window` tokens match exactly, longer ones would not.
"""

import dataclasses
import sys
from typing import Any

import numpy as np

from flan_jax.errors import UserError
from flan_jax.models import layer_stack
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.safetensors_io import (  # noqa: F401  (file names re-exported)
    INDEX_FILE, SINGLE_FILE, TensorReader, TensorSpec, check_tensor_names, export_tensors,
    read_config_json, read_tensor, same, set_path, tensor_files, write_checkpoint)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
                "Qwen2ForCausalLM": "qwen2"}
# What config.json must say; everything else has a default.
REQUIRED_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                 "vocab_size")

Params = dict[str, Any]


def _rope_fields(config_json: dict) -> dict:
  """Our RoPE fields from either the v4 layout (top level) or v5's `rope_parameters`."""
  rope = config_json.get("rope_parameters") or config_json.get("rope_scaling") or {}
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  theta = float(rope.get("rope_theta", config_json.get("rope_theta", 10_000.0)))
  if rope_type == "default":
    return dict(rope_theta=theta)
  if rope_type == "linear":
    return dict(rope_theta=theta, rope_scaling="linear", rope_scaling_factor=float(rope["factor"]))
  if rope_type == "llama3":
    return dict(rope_theta=theta, rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
                rope_low_freq_factor=float(rope["low_freq_factor"]),
                rope_high_freq_factor=float(rope["high_freq_factor"]),
                rope_original_max_position=int(rope["original_max_position_embeddings"]))
  raise UserError(
      f"config.json: RoPE scaling of type {rope_type!r} is not supported; supported are "
      "'default', 'linear' and 'llama3'.")


def _rope_to_hf(config: DecoderConfig) -> dict:
  """HF's `rope_parameters` for our RoPE fields."""
  if config.rope_scaling == "none":
    return {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling == "linear":
    return {"rope_type": "linear", "rope_theta": config.rope_theta,
            "factor": config.rope_scaling_factor}
  return {"rope_type": "llama3", "rope_theta": config.rope_theta,
          "factor": config.rope_scaling_factor, "low_freq_factor": config.rope_low_freq_factor,
          "high_freq_factor": config.rope_high_freq_factor,
          "original_max_position_embeddings": config.rope_original_max_position}


def config_from_hf(config_json: dict, **overrides) -> DecoderConfig:
  """A `DecoderConfig` for a Hugging Face `config.json`; `overrides` set e.g. dtype."""
  architectures = config_json.get("architectures") or []
  unsupported = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
  if not architectures or unsupported:
    raise UserError(
        f"unsupported architectures {architectures}: supported are "
        f"{', '.join(SUPPORTED_ARCHITECTURES)}.")
  if config_json.get("hidden_act", "silu") != "silu":
    raise UserError(f"hidden_act={config_json['hidden_act']!r} is not supported; only 'silu' is.")
  if config_json.get("mlp_bias", False):
    raise UserError("mlp_bias=true is not supported.")
  heads = config_json["num_attention_heads"]
  # Qwen2 always has q/k/v biases. Llama/Mistral's attention_bias=true would also put
  # one on o_proj, which our decoder does not have.
  attention_bias = architectures[0] == "Qwen2ForCausalLM"
  if not attention_bias and config_json.get("attention_bias", False):
    raise UserError("attention_bias=true is supported for Qwen2ForCausalLM only.")
  fields = dict(
      vocab_size=config_json["vocab_size"],
      num_layers=config_json["num_hidden_layers"],
      embed_dim=config_json["hidden_size"],
      num_heads=heads,
      num_kv_heads=config_json.get("num_key_value_heads") or heads,
      head_dim=config_json.get("head_dim") or config_json["hidden_size"] // heads,
      mlp_dim=config_json["intermediate_size"],
      **_rope_fields(config_json),
      norm_eps=config_json.get("rms_norm_eps", 1e-6),
      tie_embeddings=config_json.get("tie_word_embeddings", False),
      attention_bias=bool(attention_bias),
      prefix_lm=False,  # pretrained causally; keep it that way unless asked
  )
  fields.update(overrides)
  return DecoderConfig(**fields)


def config_to_hf(config: DecoderConfig, architecture: str = "LlamaForCausalLM",
                 dtype: str = "float32") -> dict:
  """The `config.json` transformers needs to rebuild `config` (no tokenizer ids)."""
  if config.attention_bias and architecture == "LlamaForCausalLM":
    architecture = "Qwen2ForCausalLM"  # the Llama class would need attention_bias on o_proj too
  return {
      "architectures": [architecture],
      "model_type": _MODEL_TYPES[architecture],
      "vocab_size": config.vocab_size,
      "hidden_size": config.embed_dim,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": config.norm_eps,
      # Both spellings: transformers 4 reads the first two, 5 the third.
      "rope_theta": config.rope_theta,
      "rope_scaling": None if config.rope_scaling == "none" else _rope_to_hf(config),
      "rope_parameters": _rope_to_hf(config),
      "tie_word_embeddings": config.tie_embeddings,
      "attention_bias": False,
      "mlp_bias": False,
      "torch_dtype": dtype,
      "dtype": dtype,
  }


def _linear(hf_name: str, path: tuple[str, ...], in_dim: int, heads: int, head_dim: int) -> TensorSpec:
  """A q/k/v projection: HF [heads * head_dim, in_dim] <-> ours [in_dim, heads, head_dim]."""
  return TensorSpec(hf_name, path, (heads * head_dim, in_dim),
               lambda w: w.T.reshape(in_dim, heads, head_dim),
               lambda w: w.reshape(in_dim, heads * head_dim).T)


def _tensor_specs(config: DecoderConfig) -> list[TensorSpec]:
  E, H, K, D, M = (config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                   config.mlp_dim)
  V, Vp = config.vocab_size, config.padded_vocab_size
  pad_rows = lambda w: np.pad(w, ((0, Vp - V), (0, 0)))
  specs = [TensorSpec("model.embed_tokens.weight", ("embedding",), (V, E), pad_rows, lambda w: w[:V])]
  for i in range(config.num_layers):
    hf, ours = f"model.layers.{i}.", (f"layers_{i}",)
    attention = ours + ("attention",)
    specs += [
        same(hf + "input_layernorm.weight", ours + ("attention_norm", "scale"), (E,)),
        same(hf + "post_attention_layernorm.weight", ours + ("mlp_norm", "scale"), (E,)),
        _linear(hf + "self_attn.q_proj.weight", attention + ("query",), E, H, D),
        _linear(hf + "self_attn.k_proj.weight", attention + ("key",), E, K, D),
        _linear(hf + "self_attn.v_proj.weight", attention + ("value",), E, K, D),
        # o_proj is [E, H*D]: its transpose [H*D, E] reshapes to our [H, D, E].
        TensorSpec(hf + "self_attn.o_proj.weight", attention + ("out",), (E, H * D),
              lambda w: w.T.reshape(H, D, E), lambda w: w.reshape(H * D, E).T),
        TensorSpec(hf + "mlp.gate_proj.weight", ours + ("mlp", "gate", "kernel"), (M, E),
              lambda w: w.T, lambda w: w.T),
        TensorSpec(hf + "mlp.up_proj.weight", ours + ("mlp", "up", "kernel"), (M, E),
              lambda w: w.T, lambda w: w.T),
        TensorSpec(hf + "mlp.down_proj.weight", ours + ("mlp", "down", "kernel"), (E, M),
              lambda w: w.T, lambda w: w.T),
    ]
    if config.attention_bias:
      for proj, name, heads in (("q", "query", H), ("k", "key", K), ("v", "value", K)):
        specs.append(TensorSpec(hf + f"self_attn.{proj}_proj.bias", attention + (f"{name}_bias",),
                           (heads * D,), lambda b, h=heads: b.reshape(h, D),
                           lambda b: b.reshape(-1)))
  specs.append(same("model.norm.weight", ("final_norm", "scale"), (E,)))
  if not config.tie_embeddings:
    specs.append(TensorSpec("lm_head.weight", ("lm_head", "kernel"), (V, E),
                       lambda w: pad_rows(w).T, lambda w: w[:, :V].T))
  return specs


def tensor_specs(config) -> list[TensorSpec]:
  """Every tensor of the checkpoint with its place in our parameters (LoRA adapters are
  exported beside the weights they adapt: `peft_io`)."""
  return _tensor_specs(config)


def load_hf_checkpoint(directory: str, **config_overrides) -> tuple[DecoderConfig, Params]:
  """(config, params) from a Hugging Face checkpoint directory.

  Params are numpy arrays in `config.param_dtype` (float32 unless overridden).
  """
  config = config_from_hf(read_config_json(directory, REQUIRED_KEYS), **config_overrides)
  files = tensor_files(directory)
  with TensorReader(files) as reader:
    if config.tie_embeddings and _stores_a_different_lm_head(reader, files):
      print(f"note: {directory} says tie_word_embeddings=true but its lm_head.weight differs "
            "from model.embed_tokens.weight; loading it untied, as transformers does.",
            file=sys.stderr)
      config = dataclasses.replace(config, tie_embeddings=False)
    specs = _tensor_specs(config)
    expected = {s.hf_name for s in specs} | {"lm_head.weight"}  # tied: an equal copy, unused
    check_tensor_names(
        directory, missing=[s.hf_name for s in specs if s.hf_name not in files],
        unused=sorted(n for n in files
                      if n not in expected and not n.endswith("rotary_emb.inv_freq")))

    params: Params = {}
    for spec in specs:
      set_path(params, spec.path, read_tensor(reader, spec, config.param_dtype))
  return config, params


def _stores_a_different_lm_head(reader: TensorReader, files: dict[str, str]) -> bool:
  """Whether the files hold an lm_head.weight that is not an exact copy of the embedding."""
  if "lm_head.weight" not in files or "model.embed_tokens.weight" not in files:
    return False
  return not np.array_equal(reader.get("lm_head.weight"), reader.get("model.embed_tokens.weight"))


def save_hf_checkpoint(params: Params, config: DecoderConfig, directory: str,
                       max_shard_bytes: int | None = None, dtype: str | None = None,
                       extra_config: dict | None = None) -> None:
  """Writes config.json and safetensors that `transformers` loads as a CausalLM.

  `dtype` defaults to the params' own; `extra_config` adds or overrides config.json
  keys (e.g. bos/eos token ids, max_position_embeddings) since our config lacks them.
  With `max_shard_bytes`, tensors are split into shards of at most that size (a
  single larger tensor gets a shard of its own) plus the index transformers reads.
  Scanned params are unstacked first.
  """
  if config.scan_layers:
    params = layer_stack.unstack_layers(params)
  tensors = export_tensors(params, _tensor_specs(config), dtype)
  hf_config = config_to_hf(config, dtype=str(next(iter(tensors.values())).dtype))
  hf_config.update(extra_config or {})
  write_checkpoint(tensors, hf_config, directory, max_shard_bytes)
