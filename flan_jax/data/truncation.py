"""One rule for fitting an example into the run's feature lengths, in training and evaluation.

FLAN prompts put the instruction and context first and the question last, so a
prompt that is too long loses its *front*: the last `input_length` tokens are kept,
which keeps the question and the inputs' EOS. A target that is too long keeps its
start and its final EOS, so the model still learns to stop. The decoder-only BOS is
never part of the inputs (the packer shifts it in, the evaluator prepends it), so no
cut can remove it.

Few-shot prompts are fitted before this rule applies: `flan_task` drops exemplars,
last first, until the prompt fits the run's input length, so a few-shot prompt is only
ever cut here when even its zero-shot form is too long.

`inputs_eos=False` removes the EOS that seqio appends to the inputs. Checkpoints
pretrained causally continue a prompt directly with its answer; an EOS between them
would teach a finetune to expect one, which no Hugging Face pipeline or chat template
produces. Our own prefix-LM and T5 keep seqio's EOS.

Every cut is counted (`TruncationCounts`), per task where the caller knows the task.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class TruncationCounts:
  examples: int = 0
  inputs_cut: int = 0
  targets_cut: int = 0
  # Rank classification: answer options longer than the target length (their end cut),
  # and (prompt, option) rows longer than the model's maximum length (their prompt's
  # front cut, the option kept whole).
  options: int = 0
  options_cut: int = 0
  rows_cut: int = 0

  @property
  def any_cut(self) -> bool:
    return bool(self.inputs_cut or self.targets_cut or self.options_cut or self.rows_cut)

  def add(self, inputs_cut: bool, targets_cut: bool) -> None:
    self.examples += 1
    self.inputs_cut += int(inputs_cut)
    self.targets_cut += int(targets_cut)

  def __str__(self) -> str:
    text = (f"{self.inputs_cut} of {self.examples} prompts cut from the front, "
            f"{self.targets_cut} targets cut at the end")
    if self.options_cut:
      text += f", {self.options_cut} of {self.options} answer options cut at the end"
    if self.rows_cut:
      text += (f", {self.rows_cut} of {self.options} option rows longer than the model's "
               "maximum length cut from the left (the option kept whole)")
    return text


def fit_inputs(tokens, length: int, *, eos_id: int, inputs_eos: bool = True
               ) -> tuple[np.ndarray, bool]:
  """(the last `length` tokens of the inputs, whether any were cut)."""
  tokens = np.asarray(tokens, np.int32)
  if not inputs_eos and len(tokens) and tokens[-1] == eos_id:
    tokens = tokens[:-1]
  if len(tokens) <= length:
    return tokens, False
  return tokens[len(tokens) - length:], True


def fit_row(prompt, option, max_length: int) -> tuple[np.ndarray, bool]:
  """The prompt's last tokens that fit before the whole `option` in `max_length` positions.

  lm-eval cuts a too-long context + continuation from the left, so the continuation
  is scored whole; the decoder's BOS is shifted in ahead of the prompt, and stays.
  """
  prompt = np.asarray(prompt, np.int32)
  room = max(max_length - len(option), 0)
  if len(prompt) <= room:
    return prompt, False
  return prompt[len(prompt) - room:], True


def fit_targets(tokens, length: int) -> tuple[np.ndarray, bool]:
  """(the first `length` - 1 target tokens and the final one (EOS), whether any were cut)."""
  tokens = np.asarray(tokens, np.int32)
  if len(tokens) <= length:
    return tokens, False
  return np.concatenate([tokens[:length - 1], tokens[-1:]]), True
