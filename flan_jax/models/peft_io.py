"""LoRA adapters <-> Hugging Face PEFT's adapter directories, and merging them into the base.

A PEFT LoRA directory holds `adapter_config.json` (rank "r", "lora_alpha",
"lora_dropout", "use_rslora", "target_modules", ...) and `adapter_model.safetensors`,
whose keys are the adapted module's name under the PEFT wrapper and the factor:
`base_model.model.<module>.lora_A.weight` [rank, in] and `...lora_B.weight`
[out, rank], so that the module computes x @ W^T + scaling * x @ A^T @ B^T.

Ours are the same factors in our layout (`lora`): A [*in, rank] and B [rank, *out],
the input and output axes those of the weight they adapt. Each adapted weight's
Hugging Face name comes from the family's own tensor table (`hf_llama`, `hf_t5`
`tensor_specs`), so the adapters follow the weights' names and never drift from them:
A is flattened to [in, rank] and transposed, B flattened to [rank, out] and
transposed, with an lm_head's padded vocabulary rows cut off (export) or zero-padded
(import).

An imported adapter may target fewer layers than our LoRA config gives adapters to
(PEFT's `layers_to_transform`, a regex): those get A = B = 0, an update of exactly 0.
What our LoRA cannot express is refused with one error: DoRA, per-layer ranks or
alphas, trained biases, `modules_to_save`, `fan_in_fan_out`.
"""

import json
import os

import jax
import numpy as np

from flan_jax.errors import UserError
from flan_jax.models import families, hf_llama, hf_t5, int8_base, lora
from flan_jax.models.config import ModelConfig
from flan_jax.models.safetensors_io import get_path, set_path
from flan_jax.models.t5 import T5Config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _tensor_table(config: ModelConfig):
  return (hf_t5 if isinstance(config, T5Config) else hf_llama).tensor_specs(config)


def _layer(path: tuple[str, ...]) -> str:
  """Our layer name of a weight's path: a Dense's kernel is named for its module."""
  return path[-2] if path[-1] == "kernel" else path[-1]


def _adapter_path(path: tuple[str, ...]) -> tuple[str, ...]:
  return (*path[:-1], path[-1] + lora.ADAPTER_SUFFIX)


def adapted_weights(config: ModelConfig) -> list[tuple[str, tuple[str, ...], int]]:
  """(PEFT module name, our adapter path, out rows in HF) of each adapted weight."""
  layers = config.lora_layers()
  return [(spec.hf_name.removesuffix(".weight"), _adapter_path(spec.path), spec.hf_shape[0])
          for spec in _tensor_table(config) if _layer(spec.path) in layers]


def hf_target_names(config: ModelConfig) -> list[str]:
  """PEFT's target_modules for our LoRA config: the Hugging Face names of its layers."""
  names = config.lora_names()
  return sorted(names[layer][-1] for layer in config.lora_layers())


def abstract_adapters(config: ModelConfig):
  """Shapes of every adapter leaf (unscanned), from the model itself."""
  config = _unscanned(config)
  network = families.family_for(config)
  shapes = jax.eval_shape(lambda: network.init(jax.random.key(0), {"inputs": 2, "targets": 2}))
  return lora.partition(jax.tree.map(lambda x: getattr(x, "value", x), shapes["params"],
                                     is_leaf=lambda x: hasattr(x, "value")), config)[0]


def _unscanned(config: ModelConfig) -> ModelConfig:
  import dataclasses
  return dataclasses.replace(config, scan_layers=False) if config.scan_layers else config


def save_peft(adapters, config: ModelConfig, directory: str,
              base_model_name_or_path: str | None = None) -> None:
  """Writes our adapters (unscanned) as a PEFT LoRA directory."""
  from safetensors.numpy import save_file
  settings = config.lora
  tensors = {}
  for module, path, hf_rows in adapted_weights(config):
    adapter = get_path(adapters, path)
    a = np.asarray(adapter["a"], np.float32)
    b = np.asarray(adapter["b"], np.float32)
    tensors[f"{_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(
        a.reshape(-1, settings.rank).T)
    tensors[f"{_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(
        b.reshape(settings.rank, -1).T[:hf_rows])
  os.makedirs(directory, exist_ok=True)
  save_file(tensors, os.path.join(directory, ADAPTER_WEIGHTS), metadata={"format": "pt"})
  adapter_config = {
      "peft_type": "LORA",
      "task_type": "SEQ_2_SEQ_LM" if isinstance(config, T5Config) else "CAUSAL_LM",
      "base_model_name_or_path": base_model_name_or_path,
      "r": settings.rank,
      "lora_alpha": settings.alpha,
      "lora_dropout": settings.dropout,
      "use_rslora": settings.use_rslora,
      "target_modules": hf_target_names(config),
      "bias": "none",
      "fan_in_fan_out": False,
      "init_lora_weights": True,
      "inference_mode": True,
      "modules_to_save": None,
      "use_dora": False,
  }
  with open(os.path.join(directory, ADAPTER_CONFIG), "w") as f:
    json.dump(adapter_config, f, indent=2)


def read_lora_config(directory: str) -> tuple[dict, lora.LoraConfig]:
  """(adapter_config.json, our LoraConfig without targets resolved) of a PEFT directory;
  one error for what our LoRA cannot express."""
  path = os.path.join(directory, ADAPTER_CONFIG)
  if not os.path.exists(path):
    raise UserError(f"no {ADAPTER_CONFIG} in {directory}: is it a PEFT adapter directory?")
  with open(path) as f:
    fields = json.load(f)
  if fields.get("peft_type", "LORA") != "LORA":
    raise UserError(f"{path}: peft_type {fields['peft_type']!r}; only LORA adapters import.")
  # Each setting our LoRA can only have at PEFT's default (None or {}: also when empty).
  defaults = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
              "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}
  for key, default in defaults.items():
    value = fields.get(key, default)
    if value != default and not (default in (None, {}) and not value):
      raise UserError(f"{path}: {key}={value!r} is not supported (flan_jax's LoRA has one "
                      f"rank and alpha, no DoRA, no trained bias or extra modules).")
  settings = lora.LoraConfig(rank=int(fields["r"]), alpha=float(fields["lora_alpha"]),
                             dropout=float(fields.get("lora_dropout") or 0.0),
                             use_rslora=bool(fields.get("use_rslora", False)),
                             target_modules=("all-linear",))
  return fields, settings


def load_peft(directory: str, config: ModelConfig) -> tuple[ModelConfig, dict]:
  """(config with the adapter's LoRA settings, adapter parameters, unscanned) from a PEFT
  directory, for a model of `config`'s architecture (its base)."""
  import dataclasses
  _, settings = read_lora_config(directory)
  weights = os.path.join(directory, ADAPTER_WEIGHTS)
  if not os.path.exists(weights):
    raise UserError(f"no {ADAPTER_WEIGHTS} in {directory}.")
  from safetensors.numpy import load_file
  tensors = load_file(weights)
  # PEFT names the adapter inside the key in memory (".lora_A.default.weight"), not on disk.
  tensors = {k.replace(".default.weight", ".weight"): v for k, v in tensors.items()}
  every = dataclasses.replace(_unscanned(config), lora=settings)  # all-linear + lm_head below
  if not every.tie_embeddings:
    every = dataclasses.replace(every, lora=dataclasses.replace(
        settings, target_modules=("all-linear", lora.OUTPUT_LAYER)))
  present = {}
  for module, path, hf_rows in adapted_weights(every):
    key = f"{_PREFIX}{module}.lora_A.weight"
    if key in tensors:
      present[_layer(path[:-1] + (path[-1].removesuffix(lora.ADAPTER_SUFFIX),))] = True
  if not present:
    raise UserError(f"{weights} adapts none of the model's projections (its keys start "
                    f"{sorted(tensors)[:2]}).")
  names = config.lora_names()
  targets = tuple(sorted(names[layer][-1] for layer in present))
  config = dataclasses.replace(config, lora=dataclasses.replace(settings, target_modules=targets))
  shapes = abstract_adapters(config)
  adapters, used = {}, set()
  for module, path, hf_rows in adapted_weights(_unscanned(config)):
    a_shape, b_shape = get_path(shapes, path)["a"].shape, get_path(shapes, path)["b"].shape
    a_key, b_key = f"{_PREFIX}{module}.lora_A.weight", f"{_PREFIX}{module}.lora_B.weight"
    if a_key in tensors:  # a layer PEFT left out (layers_to_transform) keeps A = B = 0
      a_hf, b_hf = tensors[a_key], tensors[b_key]
      if a_hf.shape != (settings.rank, int(np.prod(a_shape[:-1]))) or b_hf.shape != (
          hf_rows, settings.rank):
        raise UserError(f"{weights}: {a_key} {a_hf.shape} / {b_key} {b_hf.shape} do not fit "
                        f"rank {settings.rank} on this model's {module}.")
      used |= {a_key, b_key}
      a = a_hf.T.reshape(a_shape)
      b_rows = int(np.prod(b_shape[1:]))
      b = np.pad(b_hf, ((0, b_rows - hf_rows), (0, 0))).T.reshape(b_shape)
    else:
      a, b = np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32)
    set_path(adapters, path, {"a": a.astype(np.float32), "b": b.astype(np.float32)})
  unused = sorted(set(tensors) - used)
  if unused:
    raise UserError(f"{weights} has tensors that are not LoRA factors of this model's "
                    f"projections: {unused[:3]}.")
  return config, adapters


def merge(params, config: ModelConfig, *, in_place: bool = False) -> tuple[ModelConfig, dict]:
  """(config without LoRA, unscanned parameters with each adapter folded into its
  weight: W + scaling * A @ B, computed in float32 and stored in W's dtype). An int8
  base (`int8_base`) is dequantized first: the merged weights are q * scale + the
  update, float32, the weights the int8 run computed with.

  `in_place`: fold into `params` itself (nested dicts of host arrays), weight by weight,
  dropping each adapter and each unmerged weight as soon as its merged one exists: the
  merge then needs room for about one float32 weight more than the model, not a second
  model (serving a LoRA run, `checkpoint_eval.load_for_serving`). `params` is then the
  merged tree; without it, the caller's tree is left as it was.
  """
  import dataclasses
  scaling = config.lora.scaling
  if int8_base.is_quantized(params):
    params = int8_base.dequantize(params)

  def fold(tree: dict) -> None:
    for adapter_key in [k for k in tree if k.endswith(lora.ADAPTER_SUFFIX)]:
      adapter = tree.pop(adapter_key)
      key = adapter_key.removesuffix(lora.ADAPTER_SUFFIX)
      if key not in tree:
        raise ValueError(f"adapter {adapter_key} has no weight {key} beside it")
      # Assigning drops the tree's reference to the unmerged weight; the adapter went above.
      tree[key] = _folded(tree[key], adapter, scaling, key)
    for value in tree.values():
      if isinstance(value, dict):
        fold(value)

  if not in_place:
    params = _dict_copy(params)  # new dicts, the same arrays: merged weights replace entries
  elif not isinstance(params, dict):
    raise ValueError(f"merging in place needs nested dicts, got {type(params).__name__}")
  fold(params)
  return dataclasses.replace(config, lora=None), params


def _folded(weight, adapter, scaling: float, name: str) -> np.ndarray:
  """W + scaling * A @ B in W's dtype, with one float32 temporary of W's size."""
  w = np.asarray(weight)
  a, b = np.asarray(adapter["a"], np.float32), np.asarray(adapter["b"], np.float32)
  if a.ndim - 1 + b.ndim - 1 != w.ndim:
    raise ValueError(f"adapter of {name} does not fit its weight {w.shape}")
  rank = a.shape[-1]
  merged = (a.reshape(-1, rank) @ b.reshape(rank, -1)).reshape(w.shape)
  merged *= np.float32(scaling)
  merged += w  # W widened to float32 element by element, not copied whole
  return merged if w.dtype == merged.dtype else merged.astype(w.dtype)


def _dict_copy(tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {key: _dict_copy(value) for key, value in tree.items()}
  return tree
