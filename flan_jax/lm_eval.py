"""lm-evaluation-harness on a flan_jax checkpoint:

  python -m flan_jax.lm_eval --model_args checkpoint=DIR --tasks mmlu_anatomy --batch_size 16

The arguments are lm-eval's own (`lm-eval run --help`). lm-eval 0.4 finds models only
in its own registry, with no plugin discovery, so this registers the model `flan_jax`
(`--model flan_jax` is implied) and hands the command line to lm-eval's CLI. From
Python, `import flan_jax.lm_eval` registers it for `lm_eval.simple_evaluate(model=
"flan_jax", model_args=...)`, or pass `load(...)`'s model as `model=`.

model_args:
- checkpoint (required): a run's MODEL_DIR, an orbax checkpoint or a Hugging Face
  directory; step: a run's checkpoint step (default: its latest); vocabulary: a
  tokenizer file, for a checkpoint that keeps none; adapter: LoRA adapters on top of the
  checkpoint (then the base), a PEFT adapter directory or a LoRA run's MODEL_DIR, served
  merged into the weights as `infer` serves them.
- max_length: positions per row (default: the Hugging Face config's
  max_position_embeddings, where the checkpoint came from one).
- add_bos_token: true/false (default: what transformers' tokenizer does for the
  checkpoint, so the numbers equal lm-eval's `hf` model's; checkpoints with a vocabulary
  of our own: true, as they were trained).
- batch_size: rows of max_length tokens per forward pass (lm-eval's --batch_size;
  `auto` means 16); max_gen_toks: the default generation length (256).
- mesh_shape: the (data, fsdp, tensor) mesh, as `1x8x1` (default: all devices on data);
  parameters are placed as training places them, rows split over the data axes.
- seed: for sampled generation.

This module is named after the package it drives; its own imports are absolute, so
`import lm_eval` here is always the harness.
"""

import logging
import sys
from typing import Any, Mapping

import lm_eval
import lm_eval.api.registry
import lm_eval.models  # noqa: F401  (lm-eval's own models: registering first would hide them)
import lm_eval.utils

from flan_jax import checkpoint_eval, model_dir, paths
from flan_jax.data import hf_tokenizer, vocabularies
from flan_jax.errors import UserError
from flan_jax.evaluation import placement
from flan_jax.evaluation.harness import FlanJaxLM
from flan_jax.training import mesh as mesh_lib
from flan_jax.training import train_step as step_lib

MODEL_NAME = "flan_jax"
DEFAULT_BATCH_SIZE = 16
SETTINGS = ("checkpoint", "adapter", "step", "vocabulary", "max_length", "add_bos_token",
            "batch_size", "max_gen_toks", "mesh_shape", "seed")


def _mesh_shape(value) -> tuple[int, ...]:
  if isinstance(value, str):
    try:
      return tuple(int(part) for part in value.lower().split("x"))
    except ValueError:
      raise UserError(f"mesh_shape={value!r}: write the (data, fsdp, tensor) sizes as "
                      "DATAxFSDPxTENSOR, e.g. mesh_shape=1x8x1 (-1: the rest).") from None
  return tuple(int(v) for v in value)


def position_limit(checkpoint: model_dir.ResolvedCheckpoint) -> int | None:
  """max_position_embeddings of the Hugging Face config the checkpoint is or came from."""
  config_file = checkpoint.hf_config_file
  if config_file is None:
    return None
  value = paths.read_json(config_file).get("max_position_embeddings")
  return int(value) if value else None


def load(checkpoint: str, *, step: int | None = None, vocabulary: str | None = None,
         max_length: int | None = None, add_bos_token: bool | None = None,
         batch_size: int = DEFAULT_BATCH_SIZE, max_gen_toks: int = 256,
         mesh_shape=(-1, 1, 1), seed: int = 0, adapter: str | None = None) -> FlanJaxLM:
  """The checkpoint (with `adapter` on top, if given) as an lm-eval model, its parameters
  on the mesh as eval places them."""
  resolved = model_dir.resolve(checkpoint, adapter=adapter and str(adapter))
  if resolved.kind is None:
    raise UserError(f"checkpoint={checkpoint!r} is not a run's MODEL_DIR, an orbax checkpoint "
                    "or a Hugging Face directory (no checkpoints/, flan_jax_config.json or "
                    "config.json there).")
  mesh_shape = _mesh_shape(mesh_shape)
  if max_length is None:
    max_length = position_limit(resolved)
    if max_length is None:
      raise UserError(f"{checkpoint} records no position limit (no Hugging Face config with "
                      "max_position_embeddings): set it, e.g. --model_args "
                      f"checkpoint={checkpoint},max_length=2048.")
  network, params, vocab = checkpoint_eval.load_for_serving(resolved, step, vocabulary)
  if add_bos_token is None:
    tokenizer_dir = None if vocabulary else resolved.tokenizer_dir
    add_bos_token = (hf_tokenizer.adds_bos(tokenizer_dir, vocabularies.bos_id(vocab))
                     if tokenizer_dir else True)
  mesh = mesh_lib.make_mesh(mesh_shape)
  # Shapes for the layout only: parameters do not depend on the row length.
  params = step_lib.place_params(network, mesh, {"inputs": 8, "targets": 8}, params)
  return FlanJaxLM(network, params, vocab, max_length=int(max_length),
                   add_bos_token=bool(add_bos_token), batch_size=int(batch_size),
                   max_gen_toks=int(max_gen_toks), seed=int(seed),
                   placement=placement.sharded_rows(mesh_lib.batch_sharding(mesh)),
                   context=lambda: mesh_lib.on_mesh(mesh), checkpoint_name=resolved.name)


def from_model_args(model_args: Mapping[str, Any],
                    harness_settings: Mapping[str, Any] | None = None) -> FlanJaxLM:
  """`load` from lm-eval's model_args, with the --batch_size lm-eval passes beside them
  (model_args win); --device is lm-eval's torch device, unused: JAX places the rows."""
  unknown = sorted(set(model_args) - set(SETTINGS))
  if unknown:
    raise UserError(f"model_args {unknown} are not flan_jax settings; use {list(SETTINGS)}.")
  if "checkpoint" not in model_args:
    raise UserError("model_args needs checkpoint=DIR (a run's MODEL_DIR, an orbax "
                    "checkpoint or a Hugging Face directory).")
  settings = dict(model_args)
  harness_batch = (harness_settings or {}).get("batch_size")
  if "batch_size" not in settings and harness_batch is not None:
    settings["batch_size"] = harness_batch
  if isinstance(settings.get("batch_size"), str):
    value = settings["batch_size"]
    if value.startswith("auto"):
      settings["batch_size"] = DEFAULT_BATCH_SIZE
    elif value.isdigit():
      settings["batch_size"] = int(value)
    else:
      raise UserError(f"batch_size={value!r}: give a whole number of rows (or auto).")
  device = (harness_settings or {}).get("device")
  if device:
    logging.info("--device %s is ignored: flan_jax runs on JAX's devices.", device)
  checkpoint = str(settings.pop("checkpoint"))
  return load(checkpoint, **settings)


class CheckpointLM(FlanJaxLM):
  """The registered `flan_jax` model: lm-eval builds it from model_args."""

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    return from_model_args(lm_eval.utils.simple_parse_args_string(arg_string),
                           additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    return from_model_args(arg_dict, additional_config)


def register() -> None:
  """Registers `flan_jax` beside lm-eval's own models (idempotent)."""
  registry = lm_eval.api.registry.model_registry
  if MODEL_NAME not in registry.keys():
    lm_eval.api.registry.register_model(MODEL_NAME)(CheckpointLM)


register()


def main(argv: list[str] | None = None) -> None:
  """lm-eval's CLI with the `flan_jax` model registered and chosen."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if (argv and argv[0] not in ("ls", "validate") and "--model" not in argv
      and "-M" not in argv and not any(a.startswith("--model=") for a in argv)):
    argv += ["--model", MODEL_NAME]
  from lm_eval.__main__ import cli_evaluate
  sys.argv = [sys.argv[0], *argv]
  try:
    cli_evaluate()
  except UserError as e:
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
