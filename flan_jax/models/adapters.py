"""A base checkpoint with LoRA adapters from elsewhere on top: eval's `adapter_path`,
infer's --adapter, lm-eval's `adapter=`.

The adapter directory is one of two kinds:
- a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`, from
  `convert --to_peft` or from PEFT itself): its LoRA settings go onto the base's model
  config, its factors are read in our layout (`peft_io.load_peft`);
- a LoRA run's MODEL_DIR: its adapters (checkpoint `step`, by default the newest that
  restores) and its model config, which says how the adapted model ran in training
  (`prefix_lm`, the parameter dtype, ...). The run recorded the base it trained on
  (`lora_base.json`); when the record has a fingerprint, the given base must have it.

Either way every adapter must fit the base: its targets exist in the base's family and
its factors have the shapes the base's weights give them, or one error says which does
not. The result is the model config with `lora` set and the whole parameter tree
(unscanned), as `convert.load_orbax` gives for a LoRA run's MODEL_DIR itself.
"""

import dataclasses

import jax

from flan_jax import model_dir, paths
from flan_jax.errors import UserError
from flan_jax.models import convert, int8_base, layer_stack, lora, lora_base, peft_io
from flan_jax.models.config import ModelConfig


def kind(directory: str) -> str | None:
  """"peft", "run" (a LoRA run's MODEL_DIR) or None: what an adapter directory holds."""
  if paths.exists(paths.join(directory, model_dir.PEFT_ADAPTER_CONFIG)):
    return "peft"
  checkpoint = model_dir.resolve(directory)
  if checkpoint.kind == "run" and paths.exists(checkpoint.file(model_dir.CONFIG_FILE)):
    if convert.read_model_config(checkpoint).lora is not None:
      return "run"
  return None


def check_adapter(directory: str) -> str:
  """The adapter directory's kind; one clear error where it holds no adapter."""
  if not paths.isdir(directory):
    raise UserError(f"adapter {directory!r} is not a directory.")
  found = kind(directory)
  if found is None:
    raise UserError(f"adapter {directory} is neither a PEFT adapter directory "
                    f"({model_dir.PEFT_ADAPTER_CONFIG} + {peft_io.ADAPTER_WEIGHTS}, e.g. from "
                    "`convert --to_peft`) nor a LoRA run's MODEL_DIR (checkpoints/ and a "
                    f"{model_dir.CONFIG_FILE} with lora): point it at one of those.")
  return found


def attach(checkpoint: model_dir.ResolvedCheckpoint, base_config: ModelConfig, base,
           step: int | None = None) -> tuple[ModelConfig, dict]:
  """(model config with LoRA, base and adapters in one unscanned tree) for the base
  loaded from `checkpoint` (`base_config`, unscanned `base`) and `checkpoint.adapter`.
  `step` picks the adapter run's checkpoint."""
  directory = checkpoint.adapter
  found = check_adapter(directory)
  if base_config.lora is not None:
    raise UserError(f"{checkpoint.path} already holds LoRA adapters: give it alone, or merge "
                    "them first (`convert --merge_lora --to_hf`) to use it as a base.")
  if found == "peft":
    config, adapters = peft_io.load_peft(directory, base_config)
    return config, lora.combine(adapters, base)
  return _attach_run(checkpoint, base_config, base, step)


def _attach_run(checkpoint: model_dir.ResolvedCheckpoint, base_config: ModelConfig, base,
                step: int | None) -> tuple[ModelConfig, dict]:
  run = model_dir.resolve(checkpoint.adapter)
  trained = convert.read_model_config(run)  # as it trained: scanned or not, its dtype
  # No record (or none with a fingerprint): the shapes below are all there is to check.
  recorded = model_dir.read_json_or(run.file(model_dir.LORA_BASE_FILE), {})
  # Sizes first: casting, quantizing or fingerprinting another architecture fails unclearly.
  _check_same_architecture(trained, base_config, checkpoint)
  base = convert.in_param_dtype(base, trained)
  # The base as the run held it (its layout; an int8 base quantized as it quantized it):
  # what it fingerprinted.
  in_run_layout = layer_stack.stack_layers(base) if trained.scan_layers else base
  if int8_base.enabled(trained):
    in_run_layout = convert.quantized_base(in_run_layout, trained)
    base = layer_stack.unstack_layers(in_run_layout) if trained.scan_layers else in_run_layout
  if recorded.get("fingerprint"):
    lora_base.check_same(run.directory, recorded, checkpoint.path, in_run_layout)
  del in_run_layout
  config, adapters, _ = convert.load_orbax(run, step, with_base=False)
  _check_fits(adapters, dataclasses.replace(base_config, lora=config.lora), checkpoint)
  return config, lora.combine(adapters, base)


def _check_fits(adapters, config: ModelConfig, checkpoint: model_dir.ResolvedCheckpoint) -> None:
  """One error naming the first adapter that the base model (with the adapter's LoRA
  settings) would not give the same shape, or does not have."""
  expected = {_name(path): leaf.shape for path, leaf in
              jax.tree_util.tree_flatten_with_path(peft_io.abstract_adapters(config))[0]}
  given = {_name(path): leaf.shape for path, leaf in
           jax.tree_util.tree_flatten_with_path(adapters)[0]}
  for name in sorted(set(expected) | set(given)):
    if expected.get(name) != given.get(name):
      raise UserError(f"adapter {checkpoint.adapter} does not fit base {checkpoint.path}: "
                      f"{name} is {given.get(name, 'missing')} in the adapter, "
                      f"{expected.get(name, 'absent')} in the base model. Give the base the "
                      "adapter was trained on.")


def _check_same_architecture(trained: ModelConfig, base_config: ModelConfig,
                             checkpoint: model_dir.ResolvedCheckpoint) -> None:
  """The adapter run's model must be the base's architecture: same family, same sizes."""
  if type(trained) is not type(base_config):
    raise UserError(f"adapter {checkpoint.adapter} was trained on a "
                    f"{type(trained).__name__} model, base {checkpoint.path} is a "
                    f"{type(base_config).__name__}.")
  for field in ("vocab_size", "embed_dim", "num_layers", "num_encoder_layers",
                "num_decoder_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
                "feed_forward", "tie_embeddings"):
    if getattr(trained, field, None) != getattr(base_config, field, None):
      raise UserError(f"adapter {checkpoint.adapter} was trained on a model with {field}="
                      f"{getattr(trained, field, None)}, base {checkpoint.path} has "
                      f"{getattr(base_config, field, None)}. Give the base it was trained on.")


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)
