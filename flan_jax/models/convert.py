"""Convert decoder checkpoints between Hugging Face safetensors and orbax.

    python -m flan_jax.models.convert --from_hf=HF_DIR --to_orbax=OUT_DIR
    python -m flan_jax.models.convert --from_orbax=OUT_DIR --to_hf=HF_DIR2

An orbax directory holds `params/` (a StandardCheckpointer save of
{"params": params}) and `flan_jax_config.json` (our `DecoderConfig`), since the
tree alone does not say e.g. the vocab size hidden behind the padded embedding.
When it came from Hugging Face it also keeps the original `hf_config.json` and the
other files beside the weights (tokenizer, generation config) under `hf_files/`, so
the way back restores what we do not model (token ids, max_position_embeddings, the
architecture, the tokenizer) and the round trip gives the same tensors.
"""

import dataclasses
import json
import os
import shutil

from absl import app, flags

from flan_jax.errors import UserError, exit_on_user_error
from flan_jax.models import hf_llama
from flan_jax.models.decoder import DecoderConfig

CONFIG_FILE = "flan_jax_config.json"
HF_CONFIG_FILE = "hf_config.json"
HF_FILES_DIR = "hf_files"
PARAMS_DIR = "params"

# Keys of the HF config that are ours to write on export; everything else is kept.
_DERIVED_HF_KEYS = set(hf_llama.config_to_hf(DecoderConfig(vocab_size=1))) - {"architectures",
                                                                                "model_type"}

flags.DEFINE_string("from_hf", None, "Hugging Face checkpoint directory to read.")
flags.DEFINE_string("to_orbax", None, "Directory to write the orbax checkpoint to.")
flags.DEFINE_string("from_orbax", None, "Orbax directory written by --to_orbax (or training).")
flags.DEFINE_string("to_hf", None, "Directory to write the Hugging Face checkpoint to.")
flags.DEFINE_integer("max_shard_bytes", None, "Split the safetensors into shards of this size.")
FLAGS = flags.FLAGS


def save_orbax(params, config: DecoderConfig, directory: str,
               hf_config: dict | None = None) -> None:
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, PARAMS_DIR)):
    raise UserError(f"{directory}/{PARAMS_DIR} already exists; pick a new --to_orbax directory.")
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, PARAMS_DIR), {"params": params})
  checkpointer.wait_until_finished()
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  if hf_config is not None:
    with open(os.path.join(directory, HF_CONFIG_FILE), "w") as f:
      json.dump(hf_config, f, indent=2)


def load_orbax(directory: str):
  """(config, params, original HF config or None) from a `save_orbax` directory."""
  import orbax.checkpoint as ocp
  directory = os.path.abspath(directory)
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise UserError(f"no {CONFIG_FILE} in {directory}: was it written by --to_orbax?")
  with open(config_path) as f:
    config = DecoderConfig(**json.load(f))
  params = ocp.StandardCheckpointer().restore(os.path.join(directory, PARAMS_DIR))["params"]
  hf_config = None
  if os.path.exists(os.path.join(directory, HF_CONFIG_FILE)):
    with open(os.path.join(directory, HF_CONFIG_FILE)) as f:
      hf_config = json.load(f)
  return config, params, hf_config


def hf_to_orbax(hf_dir: str, orbax_dir: str) -> None:
  config, params = hf_llama.load_hf_checkpoint(hf_dir)
  with open(os.path.join(hf_dir, "config.json")) as f:
    hf_config = json.load(f)
  save_orbax(params, config, orbax_dir, hf_config)
  weights = {"config.json", hf_llama.SINGLE_FILE, hf_llama.INDEX_FILE}
  for name in sorted(os.listdir(hf_dir)):
    path = os.path.join(hf_dir, name)
    if os.path.isfile(path) and name not in weights and not name.endswith(".safetensors"):
      os.makedirs(os.path.join(orbax_dir, HF_FILES_DIR), exist_ok=True)
      shutil.copy(path, os.path.join(orbax_dir, HF_FILES_DIR, name))


def orbax_to_hf(orbax_dir: str, hf_dir: str, max_shard_bytes: int | None = None) -> None:
  config, params, hf_config = load_orbax(orbax_dir)
  extra = {k: v for k, v in (hf_config or {}).items() if k not in _DERIVED_HF_KEYS}
  hf_llama.save_hf_checkpoint(params, config, hf_dir, max_shard_bytes=max_shard_bytes,
                              extra_config=extra)
  source = os.path.join(orbax_dir, HF_FILES_DIR)
  if os.path.isdir(source):
    shutil.copytree(source, hf_dir, dirs_exist_ok=True)


def main(argv) -> None:
  del argv
  if FLAGS.from_hf and FLAGS.to_orbax and not (FLAGS.from_orbax or FLAGS.to_hf):
    hf_to_orbax(FLAGS.from_hf, FLAGS.to_orbax)
  elif FLAGS.from_orbax and FLAGS.to_hf and not (FLAGS.from_hf or FLAGS.to_orbax):
    orbax_to_hf(FLAGS.from_orbax, FLAGS.to_hf, FLAGS.max_shard_bytes)
  else:
    raise UserError("give either --from_hf with --to_orbax, or --from_orbax with --to_hf.")


if __name__ == "__main__":
  app.run(exit_on_user_error(main))
