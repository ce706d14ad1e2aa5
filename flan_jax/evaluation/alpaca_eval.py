"""AlpacaEval: the model's answers to AlpacaEval's 805 instructions, compared pairwise by a
judge with a reference system's answers (`<data_dir>/eval/alpaca_eval/<reference>_model_outputs.json`,
by default gpt4_1106_preview, AlpacaEval 2.0's baseline).

Each instruction is judged twice, once with the reference's answer shown first and once
with the model's, so that a judge's preference for a position cancels out. Our prompt
(`pairwise_request`) asks for a verdict written `[[a]]` or `[[b]]`; `parse_verdict` takes a
reply that contains exactly one of the two (repeats allowed) and calls anything else
unparsable: both, neither, another letter. Nothing is guessed.

The two orders make one preference on AlpacaEval's scale (1 = the reference wins, 2 = the
model wins): their mean, so agreeing orders give 1 or 2, disagreeing ones a tie, 1.5. An
instruction with an unparsable order (either or both) gets no preference (NaN): using the
remaining order alone would bring back the position bias for exactly those instructions.
It is left out of the win rate, and counted (`unparsable` instructions,
`unparsable_judgements` replies). This is how AlpacaEval treats annotations it cannot
parse (NaN, dropped from the win rate). The length-controlled fit, like AlpacaEval's,
is trained on the instructions with a preference and averaged over all of them.

The numbers (win rate, standard error, LC win rate) are `flan_jax.evaluation.win_rates`,
which computes them as the `alpaca_eval` package does.
"""

import json
import math
import os
import re
from typing import Callable, Sequence

from flan_jax.errors import UserError
from flan_jax.evaluation import win_rates
from flan_jax.evaluation.judge import Judge, write_judgements

DEFAULT_REFERENCE = "gpt4_1106_preview"

_SYSTEM = ("You are a fair and careful judge of answers written by AI assistants. You "
           "compare two answers to the same instruction and say which one is better.")
_TEMPLATE = """Here is an instruction, followed by two answers to it, Output (a) and Output (b).

# Instruction
{instruction}

# Output (a)
{output_a}

# Output (b)
{output_b}

# Your task
Decide which output answers the instruction better: the one that is more helpful, correct, \
relevant and complete, as a thoughtful expert would judge it. The order in which the \
outputs are shown says nothing about their quality, and a longer output is not better for \
being longer. Reply with your verdict only, written exactly as [[a]] if Output (a) is \
better or [[b]] if Output (b) is better."""
_VERDICT = re.compile(r"\[\[\s*\(?([A-Za-z])\)?\s*\]\]")


def pairwise_request(instruction: str, output_a: str, output_b: str) -> list[dict]:
  """The chat messages asking the judge which of two outputs is better."""
  return [{"role": "system", "content": _SYSTEM},
          {"role": "user", "content": _TEMPLATE.format(instruction=instruction,
                                                       output_a=output_a, output_b=output_b)}]


def parse_verdict(reply: str) -> str | None:
  """"a" or "b" when the reply gives exactly one of the verdicts [[a]] / [[b]] (either
  case); None otherwise."""
  letters = {letter.lower() for letter in _VERDICT.findall(reply or "")}
  return letters.pop() if len(letters) == 1 and letters <= {"a", "b"} else None


def combine_orders(reference_first: str | None, model_first: str | None) -> float:
  """AlpacaEval's preference (1 = reference wins, 2 = model wins, 1.5 = tie) from the
  verdicts of the two orders; NaN when either is unparsable."""
  if reference_first is None or model_first is None:
    return math.nan
  model_won_first = reference_first == "b"  # the model's output was (b)
  model_won_second = model_first == "a"  # the model's output was (a)
  return 1 + (model_won_first + model_won_second) / 2


def read_reference(data_dir: str, reference: str = DEFAULT_REFERENCE,
                   max_examples: int | None = None) -> list[dict]:
  """The reference system's records {instruction, output, dataset, generator} in
  AlpacaEval's order (the first `max_examples`)."""
  path = os.path.join(data_dir, "eval", "alpaca_eval", f"{reference}_model_outputs.json")
  if not os.path.isfile(path):
    folder = os.path.dirname(path)
    found = sorted(f[:-len("_model_outputs.json")] for f in os.listdir(folder)
                   if f.endswith("_model_outputs.json")) if os.path.isdir(folder) else []
    raise UserError(f"No AlpacaEval reference outputs at {path}; references there: "
                    f"{found or 'none (is the data directory right?)'}.")
  records = _read_outputs_file(path)
  return records if max_examples is None else records[:max_examples]


def _read_outputs_file(path: str) -> list[dict]:
  try:
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not JSON ({e.msg} at line {e.lineno}).") from None
  if not isinstance(records, list):
    raise UserError(f"{path}: expected a JSON list of {{instruction, output}} objects.")
  for i, record in enumerate(records):
    if (not isinstance(record, dict) or not isinstance(record.get("instruction"), str)
        or not isinstance(record.get("output"), str)):
      raise UserError(f"{path}: entry {i} needs string fields \"instruction\" and \"output\", "
                      f"got {str(record)[:80]!r}.")
  return records


def read_model_outputs(path: str, instructions: Sequence[str]) -> list[str]:
  """A model's outputs from an AlpacaEval-format file (a JSON list of {instruction,
  output}), in the order of `instructions`; an instruction it lacks is an error."""
  by_instruction = {r["instruction"]: r["output"] for r in _read_outputs_file(path)}
  missing = [i for i, text in enumerate(instructions) if text not in by_instruction]
  if missing:
    raise UserError(f"{path} has no output for {len(missing)} of the {len(instructions)} "
                    f"instructions (the first: {instructions[missing[0]][:60]!r}).")
  return [by_instruction[text] for text in instructions]


def evaluate(judge: Judge, model_outputs: Sequence[str] | Callable[[list[str]], list[str]],
             data_dir: str, *, reference: str = DEFAULT_REFERENCE,
             max_examples: int | None = None, judgements_path: str | None = None,
             gamed_annotations_path: str | None = None) -> dict:
  """Judges the model against the reference; returns the headline numbers.

  `model_outputs`: the model's answers in AlpacaEval's order (a list, at least as long as
  the instructions judged), or a function from instructions to answers.
  `judgements_path`: where to write one JSON line per instruction (both answers, both
  replies, the verdicts and the preference). `gamed_annotations_path`: AlpacaEval's
  df_gamed.csv, for its leaderboard's LC model (see `win_rates`).
  """
  records = read_reference(data_dir, reference, max_examples)
  instructions = [r["instruction"] for r in records]
  outputs = list(model_outputs(instructions) if callable(model_outputs) else model_outputs)
  if len(outputs) < len(instructions):
    raise UserError(f"{len(outputs)} model outputs for {len(instructions)} AlpacaEval "
                    "instructions: give one per instruction, in AlpacaEval's order.")
  outputs = outputs[:len(instructions)]
  for i, output in enumerate(outputs):
    if not isinstance(output, str):
      raise UserError(f"Model output {i} (for {instructions[i][:60]!r}) is "
                      f"{type(output).__name__}, not a string.")
  requests = []
  for record, output in zip(records, outputs):
    requests.append(pairwise_request(record["instruction"], record["output"], output))
    requests.append(pairwise_request(record["instruction"], output, record["output"]))
  replies = judge.complete(requests)
  rows, preferences = [], []
  for i, (record, output) in enumerate(zip(records, outputs)):
    reply_reference_first, reply_model_first = replies[2 * i], replies[2 * i + 1]
    verdicts = parse_verdict(reply_reference_first), parse_verdict(reply_model_first)
    preference = combine_orders(*verdicts)
    preferences.append(preference)
    rows.append({"index": i, "dataset": record.get("dataset"), "instruction": record["instruction"],
                 "reference_output": record["output"], "model_output": output,
                 "reply_reference_first": reply_reference_first,
                 "reply_model_first": reply_model_first,
                 "verdict_reference_first": verdicts[0], "verdict_model_first": verdicts[1],
                 "preference": None if math.isnan(preference) else preference})
  unparsable_replies = sum(v is None for row in rows
                           for v in (row["verdict_reference_first"], row["verdict_model_first"]))
  counts = win_rates.win_rate(preferences)
  result = {"win_rate": counts["win_rate"], "standard_error": counts["standard_error"],
            "n": len(records), "n_judged": counts["n_total"], "n_wins": counts["n_wins"],
            "n_wins_base": counts["n_wins_base"], "n_draws": counts["n_draws"],
            "unparsable": len(records) - counts["n_total"],
            "unparsable_judgements": unparsable_replies, "reference": reference,
            "judge": judge.identity, "judge_requests": judge.requests_made}
  result.update(_length_controlled(preferences, outputs, records, gamed_annotations_path))
  if judgements_path:
    write_judgements(judgements_path, rows)
  return result


def _length_controlled(preferences, outputs, records, gamed_annotations_path) -> dict:
  # The fit's 5-fold cross-validation needs instructions to split; with fewer than 10
  # preferences the LC win rate would say nothing anyway.
  if sum(not math.isnan(p) for p in preferences) < 10:
    return {"length_controlled_win_rate": math.nan, "lc_standard_error": math.nan,
            "lc_glm": None}
  gamed = None
  if gamed_annotations_path:
    try:
      gamed = win_rates.read_gamed_annotations(gamed_annotations_path)
    except (OSError, ValueError) as e:
      raise UserError(f"AlpacaEval's gamed annotations could not be read: {e}") from None
  lc = win_rates.length_controlled_win_rate(
      preferences, [len(o) for o in outputs], [len(r["output"]) for r in records],
      gamed_annotations=gamed)
  return {"length_controlled_win_rate": lc["length_controlled_win_rate"],
          "lc_standard_error": lc["lc_standard_error"], "lc_glm": lc["glm"]}
