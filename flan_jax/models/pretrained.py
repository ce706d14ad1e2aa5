"""Starting weights from a pretrained checkpoint: a Hugging Face directory or our orbax one.

`load_pretrained(path)` looks at what the directory holds: `config.json` and
safetensors (Hugging Face; `hf_llama` for Llama/Mistral/Qwen2, `hf_t5` for T5,
chosen by config.json's "architectures") or `flan_jax_config.json` and `params/`
(the orbax layout `python -m flan_jax.models.convert --to_orbax` writes, whose
"family" says which). Either way the checkpoint decides the architecture, and
with it the config class (`DecoderConfig`, `T5Config`). Params come unscanned.
The caller checks that its tasks' vocabulary is the one the model was trained with.
"""

import os

from flan_jax.errors import UserError
from flan_jax.models import convert
from flan_jax.models.config import ModelConfig


def load_pretrained(path: str) -> tuple[ModelConfig, dict]:
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isfile(os.path.join(path, "config.json")):
    return convert.load_hf(path)
  if os.path.isfile(os.path.join(path, convert.CONFIG_FILE)):
    config, params, _ = convert.load_orbax(path)
    return config, params
  raise UserError(
      f"INITIAL_CHECKPOINT_PATH {path!r} is neither a Hugging Face checkpoint (config.json + "
      f"*.safetensors) nor an orbax one from `python -m flan_jax.models.convert --to_orbax` "
      f"({convert.CONFIG_FILE} + params/).")
