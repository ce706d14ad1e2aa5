"""Convert checkpoints between Hugging Face safetensors and orbax, for both model families.

    python -m flan_jax.models.convert --from_hf=HF_DIR --to_orbax=OUT_DIR
    python -m flan_jax.models.convert --from_orbax=OUT_DIR --to_hf=HF_DIR2
    python -m flan_jax.models.convert --from_orbax=MODEL_DIR --to_hf=HF_DIR3  # a finetuning run

LoRA runs (`peft_io`): their adapters go to a PEFT directory, or are folded into the
base for a plain Hugging Face checkpoint; a PEFT adapter comes in on top of its base:

    python -m flan_jax.models.convert --from_orbax=MODEL_DIR --to_peft=ADAPTER_DIR
    python -m flan_jax.models.convert --from_orbax=MODEL_DIR --merge_lora --to_hf=HF_DIR
    python -m flan_jax.models.convert --from_hf=BASE --from_peft=ADAPTER_DIR --to_orbax=OUT

The family follows the checkpoint: Llama/Mistral/Qwen2 go to our decoder
(`hf_llama`), T5ForConditionalGeneration to our T5 (`hf_t5`).

An orbax directory holds `params/` (a StandardCheckpointer save of
{"params": params}) and `flan_jax_config.json` (our `DecoderConfig` or `T5Config`
plus a "family" key, "decoder" when absent as in older checkpoints), since the
tree alone does not say e.g. the vocab size hidden behind the padded embedding.
Params are stored unscanned (`layers_{i}`); a run with scanned layers stacks them.
When it came from Hugging Face it also keeps the original `hf_config.json` and the
other files beside the weights (tokenizer, generation config) under `hf_files/`, so
the way back restores what we do not model (token ids, max_position_embeddings, the
architecture, the tokenizer) and the round trip gives the same tensors.

A LoRA run's checkpoints hold only adapters: its base is loaded again from the path
MODEL_DIR records (`lora_base`), and refused if its content is no longer that base.

A finetuning run's MODEL_DIR converts the same way: training writes the same
`flan_jax_config.json` (and, when it started from a Hugging Face checkpoint, its
`hf_config.json` and `hf_files/`) beside `checkpoints/`, and the parameters come
from the newest checkpoint that restores (or `--step`): a damaged newer one is named in
a warning and left as it is.
"""

import dataclasses
import os
import shutil
import sys

from absl import app, flags
import jax
import numpy as np

from flan_jax import model_dir as model_dir_lib
from flan_jax import paths
from flan_jax.errors import UserError, exit_on_user_error
from flan_jax.models import (families, hf_llama, hf_t5, int8_base, layer_stack, lora, lora_base,
                             peft_io, safetensors_io)
from flan_jax.models.config import ModelConfig
from flan_jax.models.decoder import DecoderConfig
from flan_jax.models.t5 import T5Config

# MODEL_DIR's names, here too: tests and older code reach them through `convert`.
CONFIG_FILE = model_dir_lib.CONFIG_FILE
HF_CONFIG_FILE = model_dir_lib.HF_CONFIG_FILE
HF_FILES_DIR = model_dir_lib.HF_FILES_DIR
PARAMS_DIR = model_dir_lib.PARAMS_DIR

FAMILIES = families.config_classes()  # CONFIG_FILE's "family" -> its config class
SUPPORTED_ARCHITECTURES = hf_llama.SUPPORTED_ARCHITECTURES + hf_t5.SUPPORTED_ARCHITECTURES

# Keys of a Llama-family HF config that are ours to write on export; everything else is
# kept (hf_t5 makes the same split itself).
_DERIVED_HF_KEYS = set(hf_llama.config_to_hf(DecoderConfig(vocab_size=1))) - {"architectures",
                                                                                "model_type"}

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags, defined only when run as a program: importing the
  library must not claim flag names (such as --step) that other entry points use."""
  flags.DEFINE_string("from_hf", None, "Hugging Face checkpoint directory to read.")
  flags.DEFINE_string("to_orbax", None, "Directory to write the orbax checkpoint to.")
  flags.DEFINE_string("from_orbax", None, "Orbax directory written by --to_orbax (or training).")
  flags.DEFINE_string("to_hf", None, "Directory to write the Hugging Face checkpoint to.")
  flags.DEFINE_integer("max_shard_bytes", None, "Split the safetensors into shards of this size.")
  flags.DEFINE_integer("step", None, "With --from_orbax=MODEL_DIR of a run: the checkpoint step "
                       "to export (default: the latest).")
  flags.DEFINE_string("to_peft", None, "Directory to write a LoRA run's adapters to, as PEFT "
                      "reads them (adapter_config.json, adapter_model.safetensors).")
  flags.DEFINE_string("from_peft", None, "A PEFT LoRA adapter directory to read on top of the "
                      "--from_hf base.")
  flags.DEFINE_bool("merge_lora", False, "With --to_hf: fold the LoRA adapters into the base "
                    "weights (W + scaling * A @ B).")


def hf_module(config_json: dict):
  """The importer (`hf_llama` or `hf_t5`) for a Hugging Face config.json."""
  architectures = config_json.get("architectures") or []
  for module in (hf_llama, hf_t5):
    if architectures and all(a in module.SUPPORTED_ARCHITECTURES for a in architectures):
      return module
  if not architectures and config_json.get("model_type") == hf_t5.MODEL_TYPE:
    return hf_t5  # older T5 configs name only the model type
  found = architectures or f"none (model_type {config_json.get('model_type')!r})"
  raise UserError(f"unsupported architectures {found}: supported are "
                  f"{', '.join(SUPPORTED_ARCHITECTURES)}.")


def load_hf(directory: str, **config_overrides) -> tuple[ModelConfig, dict]:
  """(config, params) from a Hugging Face checkpoint of either family."""
  module = hf_module(safetensors_io.read_config_json(directory))
  return module.load_hf_checkpoint(directory, **config_overrides)


def family(config: ModelConfig) -> str:
  return families.family_name(config)


def _write_config(directory: str, config: ModelConfig, hf_config: dict | None) -> None:
  fields = dataclasses.asdict(config)
  if fields["lora"] is None:  # a model without adapters is written as before LoRA existed
    del fields["lora"]
  elif fields["lora"]["base_dtype"] is None:  # and a float base as before int8 bases existed
    del fields["lora"]["base_dtype"]
  paths.write_json(paths.join(directory, CONFIG_FILE), {"family": family(config), **fields},
                   indent=2)
  if hf_config is not None:
    paths.write_json(paths.join(directory, HF_CONFIG_FILE), hf_config, indent=2)


def _copy_hf_files(hf_dir: str, directory: str) -> None:
  """Everything beside the weights (tokenizer, generation config) into directory/hf_files."""
  weights = {"config.json", safetensors_io.SINGLE_FILE, safetensors_io.INDEX_FILE}
  for name in sorted(os.listdir(hf_dir)):
    path = os.path.join(hf_dir, name)
    if os.path.isfile(path) and name not in weights and not name.endswith(".safetensors"):
      paths.copy(path, paths.join(directory, HF_FILES_DIR, name))


def save_run_config(model_dir: str, config: ModelConfig,
                    initial_checkpoint_path: str | model_dir_lib.ResolvedCheckpoint | None = None
                    ) -> None:
  """What a finetuning run's MODEL_DIR needs beside its checkpoints to export to HF."""
  hf_config = None
  if initial_checkpoint_path:
    source = model_dir_lib.resolve(initial_checkpoint_path)
    if source.hf_config_file:
      hf_config = paths.read_json(source.hf_config_file)
    if source.kind == "hf":
      _copy_hf_files(source.directory, model_dir)
    else:  # one of ours, which may carry its own HF extras
      extras = source.file(HF_FILES_DIR)
      for name in paths.listdir(extras) if paths.isdir(extras) else []:
        paths.copy(paths.join(extras, name), paths.join(model_dir, HF_FILES_DIR, name))
  _write_config(model_dir, config, hf_config)


def save_orbax(params, config: ModelConfig, directory: str,
               hf_config: dict | None = None) -> None:
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, PARAMS_DIR)):
    raise UserError(f"{directory}/{PARAMS_DIR} already exists; pick a new --to_orbax directory.")
  if getattr(config, "scan_layers", False):  # stored unscanned, whatever the run used
    params = layer_stack.unstack_layers(params)
    config = dataclasses.replace(config, scan_layers=False)
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, PARAMS_DIR), {"params": params})
  checkpointer.wait_until_finished()
  _write_config(directory, config, hf_config)


def read_params(path: str):
  """The parameters saved at `path` (a step's "default" item) as host arrays."""
  import orbax.checkpoint as ocp
  # Only the parameters are read (not the optimizer state, twice their size for Adam),
  # straight into host arrays, whatever devices and processes saved them: a run on 2
  # hosts is evaluated or exported by one.
  metadata = ocp.StandardCheckpointer().metadata(path).item_metadata
  if metadata is None:  # orbax returns None where the metadata file is missing or unreadable
    raise ValueError(f"no readable metadata in {path}")
  saved = metadata.tree["params"]
  args = ocp.args.PyTreeRestore(
      item={"params": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)},
      restore_args={"params": jax.tree.map(
          lambda m: ocp.RestoreArgs(restore_type=np.ndarray), saved)},
      partial_restore=True)
  return ocp.PyTreeCheckpointer().restore(path, args=args)["params"]


def read_model_config(checkpoint: model_dir_lib.ResolvedCheckpoint) -> ModelConfig:
  """The model config an orbax directory or a run records, as it trained (scanned or not)."""
  config_path = checkpoint.file(CONFIG_FILE)
  if not paths.exists(config_path):
    raise UserError(f"no {CONFIG_FILE} in {checkpoint.directory}: was it written by --to_orbax?")
  fields = paths.read_json(config_path)
  name = fields.pop("family", "decoder")  # checkpoints from before T5 have no family
  if name not in FAMILIES:
    raise UserError(f"{config_path}: unknown model family {name!r}; known are "
                    f"{', '.join(FAMILIES)}.")
  return FAMILIES[name](**fields)


def load_orbax(directory: str | model_dir_lib.ResolvedCheckpoint, step: int | None = None,
               with_base: bool = True):
  """(config, params, original HF config or None) from a `save_orbax` directory or a run
  (its checkpoint `step`, by default the newest that restores).

  Params come back unscanned, whatever layout the run trained in. A LoRA run's come
  with its recorded base (`with_base`), or as its adapters alone.
  """
  import orbax.checkpoint as ocp
  checkpoint = model_dir_lib.resolve(directory)
  directory = checkpoint.directory
  config = read_model_config(checkpoint)
  if paths.isdir(checkpoint.file(PARAMS_DIR)):
    params = ocp.StandardCheckpointer().restore(checkpoint.file(PARAMS_DIR))["params"]
  elif checkpoint.kind == "run":
    params = checkpoint.read_step(step, read_params)
    if config.lora is not None and with_base:
      params = lora.combine(params, _recorded_base(checkpoint, config))
  else:
    raise UserError(f"{directory} has {CONFIG_FILE} but neither {PARAMS_DIR}/ nor "
                    f"{model_dir_lib.CHECKPOINTS_DIR}/.")
  if config.scan_layers:
    params = layer_stack.unstack_layers(params)
    config = dataclasses.replace(config, scan_layers=False)
  hf_file = checkpoint.file(HF_CONFIG_FILE)
  hf_config = paths.read_json(hf_file) if paths.exists(hf_file) else None
  return config, params, hf_config


def _recorded_base(checkpoint: model_dir_lib.ResolvedCheckpoint, config: ModelConfig):
  """The base a LoRA run's adapters were trained on, in the run's layout and dtype, loaded
  from the path it recorded and checked against the recorded fingerprint."""
  recorded = lora_base.read(checkpoint.directory)
  source = recorded.get("path")
  if not source:
    raise UserError(f"{checkpoint.directory} trained LoRA adapters on a random base, which is "
                    "not saved anywhere: export the adapters alone (--to_peft).")
  base_checkpoint = model_dir_lib.resolve(source)
  if base_checkpoint.kind == "hf":
    _, base = load_hf(base_checkpoint.directory)
  else:
    _, base, _ = load_orbax(base_checkpoint)
  if config.scan_layers:
    base = layer_stack.stack_layers(base)
  base = in_param_dtype(base, config)
  if int8_base.enabled(config):  # quantized as training quantized it, then fingerprinted
    base = quantized_base(base, config)
  lora_base.check_same(checkpoint.directory, recorded, source, base)
  return base


def quantized_base(base, config: ModelConfig):
  """A float base as the int8 model holds it (`int8_base`), on the host."""
  import flax.linen as nn
  network = families.family_for(config)
  like = jax.eval_shape(lambda: nn.meta.unbox(
      network.init(jax.random.key(0), {"inputs": 1, "targets": 1})["params"]))
  quantized = jax.jit(lambda tree: int8_base.quantize(tree, like))(base)
  return jax.tree.map(np.asarray, quantized)


def in_param_dtype(params, config: ModelConfig):
  """`params` as host arrays in the model's parameter dtype, converted only where they
  differ (a LoRA run's base as it trained)."""
  dtype = np.dtype(jax.numpy.dtype(config.param_dtype))
  return jax.tree.map(lambda x: np.asarray(x).astype(dtype, copy=False), params)


def hf_to_orbax(hf_dir: str, orbax_dir: str) -> None:
  config, params = load_hf(hf_dir)
  hf_config = paths.read_json(os.path.join(hf_dir, model_dir_lib.HF_CONFIG_JSON))
  save_orbax(params, config, orbax_dir, hf_config)
  _copy_hf_files(hf_dir, orbax_dir)


def orbax_to_hf(orbax_dir: str, hf_dir: str, max_shard_bytes: int | None = None,
                step: int | None = None, merge_lora: bool = False) -> None:
  config, params, hf_config = load_orbax(orbax_dir, step)
  if config.lora is not None:
    if not merge_lora:
      raise UserError(f"{orbax_dir} holds LoRA adapters: add --merge_lora to fold them into the "
                      "weights, or export them for PEFT with --to_peft.")
    config, params = peft_io.merge(params, config)
  _write_hf(config, params, hf_config, hf_dir, max_shard_bytes)
  source = os.path.join(orbax_dir, HF_FILES_DIR)
  if os.path.isdir(source):
    shutil.copytree(source, hf_dir, dirs_exist_ok=True)


def _write_hf(config: ModelConfig, params, hf_config: dict | None, hf_dir: str,
              max_shard_bytes: int | None) -> None:
  if isinstance(config, T5Config):
    hf_t5.save_hf_checkpoint(params, config, hf_dir, max_shard_bytes=max_shard_bytes,
                             hf_config=hf_config)
  else:
    if config.prefix_lm:
      print("note: this model read its prompts bidirectionally (DecoderConfig.prefix_lm=True); "
            "transformers runs it causally, so its outputs on prompts will differ from ours. "
            "Finetune with --gin.DecoderConfig.prefix_lm=False for an export that behaves "
            "identically.", file=sys.stderr)
    extra = {k: v for k, v in (hf_config or {}).items() if k not in _DERIVED_HF_KEYS}
    hf_llama.save_hf_checkpoint(params, config, hf_dir, max_shard_bytes=max_shard_bytes,
                                extra_config=extra)


def orbax_to_peft(orbax_dir: str, peft_dir: str, step: int | None = None) -> None:
  """A LoRA run's (or adapted orbax directory's) adapters as a PEFT adapter directory."""
  checkpoint = model_dir_lib.resolve(orbax_dir)
  config, params, _ = load_orbax(checkpoint, step, with_base=False)
  if config.lora is None:
    raise UserError(f"{orbax_dir} has no LoRA adapters (its model config has no lora): "
                    "export it whole with --to_hf.")
  base_path = None
  if paths.exists(checkpoint.file(model_dir_lib.LORA_BASE_FILE)):
    base_path = lora_base.read(checkpoint.directory).get("path")
  peft_io.save_peft(lora.partition(params, config)[0], config, peft_dir, base_path)
  if int8_base.enabled(config):
    print(f"note: {orbax_dir}'s adapters were trained on its base quantized to int8; PEFT applies "
          "them to the float base, whose logits differ from the int8 model's by the "
          "quantization error.", file=sys.stderr)


def peft_to_orbax(hf_dir: str, peft_dir: str, orbax_dir: str) -> None:
  """A Hugging Face base with a PEFT adapter on top, as one orbax checkpoint whose model
  config has the adapter's LoRA settings."""
  config, base = load_hf(hf_dir)
  config, adapters = peft_io.load_peft(peft_dir, config)
  hf_config = paths.read_json(os.path.join(hf_dir, model_dir_lib.HF_CONFIG_JSON))
  save_orbax(lora.combine(adapters, base), config, orbax_dir, hf_config)
  _copy_hf_files(hf_dir, orbax_dir)


def main(argv) -> None:
  del argv
  given = {name for name in ("from_hf", "to_orbax", "from_orbax", "to_hf", "to_peft", "from_peft")
           if getattr(FLAGS, name)}
  if FLAGS.merge_lora and "to_hf" not in given:
    raise UserError("--merge_lora goes with --to_hf (a Hugging Face checkpoint of the merged "
                    "weights).")
  if given == {"from_hf", "to_orbax"}:
    hf_to_orbax(FLAGS.from_hf, FLAGS.to_orbax)
  elif given == {"from_orbax", "to_hf"}:
    orbax_to_hf(FLAGS.from_orbax, FLAGS.to_hf, FLAGS.max_shard_bytes, FLAGS.step,
                FLAGS.merge_lora)
  elif given == {"from_orbax", "to_peft"}:
    orbax_to_peft(FLAGS.from_orbax, FLAGS.to_peft, FLAGS.step)
  elif given == {"from_hf", "from_peft", "to_orbax"}:
    peft_to_orbax(FLAGS.from_hf, FLAGS.from_peft, FLAGS.to_orbax)
  else:
    raise UserError("give either --from_hf with --to_orbax, or --from_orbax with --to_hf "
                    "(--merge_lora for LoRA adapters); for PEFT, --from_orbax with --to_peft, "
                    "or --from_hf with --from_peft and --to_orbax.")


if __name__ == "__main__":
  _define_flags()
  app.run(exit_on_user_error(main))
