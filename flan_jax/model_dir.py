"""What MODEL_DIR holds, and what a checkpoint path points at: the one place that knows.

A finetuning run writes into MODEL_DIR:

  checkpoints/<step>/        orbax train states; a step counts once COMMIT_MARKER is in it
  data_state/<step>/         each host's position in the data stream at that step
  flan_jax_config.json       the model config, with a "family" key (what `convert` reads)
  hf_config.json, hf_files/  from a Hugging Face start: its config and tokenizer files
  config.gin                 the entry point's resolved gin configuration
  chat_template.json         the template conversations were rendered with
  chat_held_out.json         per conversation task, the records training never read
  lora_base.json             a LoRA run's frozen base: its path and content fingerprint
  eval/heldout.json          the evaluation before and after training
  decontamination.json       what decontamination removed, per training task (if asked)
  metrics.jsonl, tensorboard/train/   training and evaluation curves
  .run_lock                  held while a run writes here

A checkpoint path (eval's CHECKPOINT_PATH, infer's --checkpoint, convert's --from_orbax,
train's INITIAL_CHECKPOINT_PATH) is one of three kinds: a run's MODEL_DIR ("run"), an
orbax directory from `convert --to_orbax` (flan_jax_config.json and params/: "orbax"),
or a Hugging Face directory (config.json and safetensors: "hf"). `resolve` says which,
once, and where its config, parameters, tokenizer and chat template are; loading them
is the models' and data's business. Resolving never fails: a loader says what it
expected where the kind is not one it reads.

A checkpoint may come with an adapter beside it (eval's `adapter_path`, infer's
--adapter, lm-eval's `adapter=`): LoRA factors to apply on top of it, from a PEFT
adapter directory (PEFT_ADAPTER_CONFIG + safetensors) or a LoRA run's MODEL_DIR.
The checkpoint is then the base; `models.adapters` loads the two together. A LoRA
run given as the adapter also brings what the run recorded (its chat template, the
conversations it held out): they describe how the adapted model was trained.
"""

import dataclasses
import logging
from typing import Any, Callable, Literal, TypeVar

from flan_jax import orbax_messages, paths
from flan_jax.errors import UserError

CHECKPOINTS_DIR = "checkpoints"
COMMIT_MARKER = "commit_success.txt"  # orbax writes it last into a finished step
STEP_ITEM = "default"  # the item a step directory holds (one item per step)
DATA_STATE_DIR = "data_state"
CONFIG_FILE = "flan_jax_config.json"
HF_CONFIG_FILE = "hf_config.json"
HF_FILES_DIR = "hf_files"
PARAMS_DIR = "params"
CONFIG_GIN = "config.gin"
TEMPLATE_FILE = "chat_template.json"
HELD_OUT_FILE = "chat_held_out.json"
LORA_BASE_FILE = "lora_base.json"
EVAL_DIR = "eval"
RESULTS_FILE = f"{EVAL_DIR}/heldout.json"
DECONTAMINATION_FILE = "decontamination.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard/train"
LOCK_FILE = ".run_lock"
PEFT_ADAPTER_CONFIG = "adapter_config.json"  # Hugging Face PEFT's adapter directory

# A Hugging Face checkpoint's files that say what it is and how it tokenizes.
HF_CONFIG_JSON = "config.json"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # SentencePiece first
TOKENIZER_CONFIG = "tokenizer_config.json"

Kind = Literal["run", "orbax", "hf"]
T = TypeVar("T")


def read_json_or(path: str, default: Any) -> Any:
  """The JSON in `path`, or `default` where there is no such file."""
  return paths.read_json(path) if paths.exists(path) else default


def finished_steps(checkpoints: str) -> list[int]:
  """The steps under a run's checkpoints/ whose save finished, oldest first."""
  return sorted(int(d) for d in paths.listdir(checkpoints) if d.isdigit()
                and paths.exists(paths.join(checkpoints, d, COMMIT_MARKER)))


@dataclasses.dataclass(frozen=True)
class ResolvedCheckpoint:
  """Where a checkpoint path's parts are. `path` is the path as given (for messages),
  `directory` the same made absolute; `kind` None: none of the three kinds."""
  path: str
  directory: str
  kind: Kind | None
  adapter: str | None = None  # an adapter directory (absolute) to apply on top of it

  def file(self, name: str) -> str:
    return paths.join(self.directory, name)

  @property
  def name(self) -> str:
    """The path as given, with its adapter: for titles and messages."""
    return f"{self.path} + adapter {self.adapter}" if self.adapter else self.path

  @property
  def adapter_run(self) -> str | None:
    """The adapter's directory where it is a run's MODEL_DIR (it records how it was
    trained), else None."""
    if self.adapter and paths.isdir(paths.join(self.adapter, CHECKPOINTS_DIR)):
      return self.adapter
    return None

  @property
  def config_file(self) -> str:
    """The model config: ours (run, orbax), or a Hugging Face config.json."""
    return self.file(HF_CONFIG_JSON if self.kind == "hf" else CONFIG_FILE)

  @property
  def hf_config_file(self) -> str | None:
    """The Hugging Face config the checkpoint came from, where it has one."""
    path = self.file(HF_CONFIG_JSON if self.kind == "hf" else HF_CONFIG_FILE)
    return path if paths.exists(path) else None

  @property
  def checkpoints(self) -> str:
    return self.file(CHECKPOINTS_DIR)

  @property
  def tokenizer_dir(self) -> str | None:
    """Where its own tokenizer is: beside the weights (Hugging Face), or in hf_files/
    (a run or orbax checkpoint that started from one); None where it keeps none."""
    for directory in (self.directory, self.file(HF_FILES_DIR),
                      *self._adapter_run_dirs(HF_FILES_DIR)):
      if any(paths.exists(paths.join(directory, name)) for name in TOKENIZER_FILES):
        return directory
    return None

  def chat_template_file(self) -> str | None:
    """The chat template it was trained with: a run's record, else a Hugging Face
    model's own (a tokenizer_config.json with a chat_template); None where neither.
    An adapter run's record comes first: the adapted model was trained with it."""
    for recorded in (*self._adapter_run_dirs(TEMPLATE_FILE), self.file(TEMPLATE_FILE)):
      if paths.exists(recorded):
        return recorded
    config = self.file(TOKENIZER_CONFIG)
    if paths.exists(config) and "chat_template" in paths.read_json(config):
      return config
    return None

  def held_out(self) -> dict[str, dict]:
    """What a run recorded it held out of its conversation files ({}: nothing); with an
    adapter run, what that run held out."""
    run = self.adapter_run
    return read_json_or(paths.join(run, HELD_OUT_FILE) if run else self.file(HELD_OUT_FILE), {})

  def _adapter_run_dirs(self, name: str) -> list[str]:
    run = self.adapter_run
    return [paths.join(run, name)] if run else []

  def read_step(self, step: int | None, read: Callable[[str], T]) -> T:
    """`read(item path)` of a run's checkpoint `step`, by default of the newest that
    reads: each newer one that does not is named in a warning and left as it is
    (reading a run never changes it)."""
    checkpoints = self.checkpoints
    steps = finished_steps(checkpoints)
    if not steps or (step is not None and step not in steps):
      raise UserError(f"{checkpoints} has no finished checkpoint"
                      f"{'' if step is None else f' for step {step}'} (found: {steps or 'none'}).")
    orbax_messages.quiet()  # a damaged step's failed read leaves tracebacks behind
    failures = []
    for candidate in [step] if step is not None else reversed(steps):
      try:
        value = read(paths.join(checkpoints, str(candidate), STEP_ITEM))
      except Exception as e:  # orbax and tensorstore raise many kinds for damaged files
        first_line = (str(e).splitlines() or [""])[0][:200]
        failures.append((candidate, f"{type(e).__name__}: {first_line}"))
        continue
      for damaged, reason in failures:
        logging.warning("Checkpoint %d in %s does not restore (%s); reading checkpoint %d "
                        "instead.", damaged, checkpoints, reason, candidate)
      return value
    if step is not None:
      others = [s for s in steps if s != step]
      raise UserError(f"checkpoint {step} in {checkpoints} does not restore ({failures[0][1]}): "
                      f"pass the step of an intact one ({', '.join(map(str, others)) or 'none'}).")
    raise UserError(f"no checkpoint in {checkpoints} restores: "
                    f"{'; '.join(f'step {s} ({reason})' for s, reason in failures)}.")


def resolve(path: "str | ResolvedCheckpoint", adapter: str | None = None) -> ResolvedCheckpoint:
  """What `path` is: a run's MODEL_DIR (it has checkpoints/), a Hugging Face directory
  (config.json), an orbax one (flan_jax_config.json), or none of them; with `adapter`,
  the base of that adapter directory. A path resolved already is passed on as it is
  (with `adapter`, as the base of that one)."""
  adapter = paths.absolute(adapter) if adapter else None
  if isinstance(path, ResolvedCheckpoint):
    return dataclasses.replace(path, adapter=adapter) if adapter else path
  directory = paths.absolute(path)
  kind: Kind | None = None
  if paths.isdir(paths.join(directory, CHECKPOINTS_DIR)):
    kind = "run"
  elif paths.exists(paths.join(directory, HF_CONFIG_JSON)):
    kind = "hf"
  elif paths.exists(paths.join(directory, CONFIG_FILE)):
    kind = "orbax"
  return ResolvedCheckpoint(path, directory, kind, adapter)
