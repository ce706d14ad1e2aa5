"""Starting weights from a pretrained checkpoint: a Hugging Face directory or our orbax one.

`load_pretrained(path)` looks at what the directory holds: `config.json` and
safetensors (Hugging Face; `hf_llama` for Llama/Mistral/Qwen2, `hf_t5` for T5,
chosen by config.json's "architectures") or `flan_jax_config.json` and `params/`
(the orbax layout `python -m flan_jax.models.convert --to_orbax` writes, whose
"family" says which). Either way the checkpoint decides the architecture, and
with it the config class (`DecoderConfig`, `T5Config`). Params come unscanned.
The caller checks that its tasks' vocabulary is the one the model was trained with.

A checkpoint resolved with an adapter (`model_dir.resolve(path, adapter=DIR)`) is
the base; the adapter comes on top (`adapters.attach`), and `step` picks the adapter
run's checkpoint where the adapter is a run, else the base run's.
"""

import dataclasses

from flan_jax import model_dir
from flan_jax.errors import UserError
from flan_jax.models import adapters, convert
from flan_jax.models.config import ModelConfig


def load_pretrained(path: str | model_dir.ResolvedCheckpoint, step: int | None = None,
                    setting: str = "INITIAL_CHECKPOINT_PATH",
                    ) -> tuple[ModelConfig, dict]:
  """(config, params) of any checkpoint path; `step` picks a run's checkpoint (default:
  the newest that restores); `setting` names the path in the error for none."""
  checkpoint = model_dir.resolve(path)
  if checkpoint.adapter:
    adapter_is_run = adapters.check_adapter(checkpoint.adapter) == "run"
    base_step, adapter_step = (None, step) if adapter_is_run else (step, None)
    config, base = load_pretrained(dataclasses.replace(checkpoint, adapter=None), base_step,
                                   setting)
    return adapters.attach(checkpoint, config, base, adapter_step)
  if checkpoint.kind == "hf":
    return convert.load_hf(checkpoint.directory)
  if checkpoint.kind is not None:
    config, params, _ = convert.load_orbax(checkpoint, step)
    return config, params
  raise UserError(
      f"{setting} {checkpoint.directory!r} is neither a Hugging Face checkpoint (config.json + "
      f"*.safetensors) nor an orbax one from `python -m flan_jax.models.convert --to_orbax` "
      f"({model_dir.CONFIG_FILE} + params/).")
