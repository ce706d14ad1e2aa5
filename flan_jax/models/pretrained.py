"""Starting weights from a pretrained checkpoint: a Hugging Face directory or our orbax one.

`load_pretrained(path)` looks at what the directory holds: `config.json` and
safetensors (Hugging Face; `hf_llama`) or `flan_jax_config.json` and `params/` (the
orbax layout `python -m flan_jax.models.convert --to_orbax` writes). Either way the
checkpoint decides the architecture; the caller checks that its tasks' vocabulary is
the one the model was trained with.
"""

import os

from flan_jax.errors import UserError
from flan_jax.models import convert, hf_llama
from flan_jax.models.decoder import DecoderConfig


def load_pretrained(path: str) -> tuple[DecoderConfig, dict]:
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(path, "config.json")):
    return hf_llama.load_hf_checkpoint(path)
  if os.path.isfile(os.path.join(path, convert.CONFIG_FILE)):
    config, params, _ = convert.load_orbax(path)
    return config, params
  raise UserError(
      f"INITIAL_CHECKPOINT_PATH {path!r} is neither a Hugging Face checkpoint (config.json + "
      f"*.safetensors) nor an orbax one from `python -m flan_jax.models.convert --to_orbax` "
      f"({convert.CONFIG_FILE} + params/).")
