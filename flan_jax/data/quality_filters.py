"""Quality filters for instruction data: each names why a record is not worth training on.

LIMA's point is that a thousand careful examples beat fifty thousand noisy ones;
these are the cheap, explainable checks that remove the noise before any selection.
Each filter looks at one record and returns its reason or None:

- empty: no response (or only whitespace).
- truncated: a response of `min_truncation_words`+ words whose last line is prose
  (15+ words, not a list entry, table row, heading or verse) that stops on a lowercase word
  without an end (no closing punctuation, bracket, quote or digit), or that leaves a ``` code block
  open: the generator ran out of tokens. Short answers ("Paris") and lists are never
  called truncated.
- repeats_instruction: the response is the instruction again, or is mostly it
  (the instruction covers 80%+ of the response's words and appears in it whole).
- refusal: boilerplate of a model declining or talking about itself ("As an AI
  language model", "I'm sorry, but I cannot", ...) at the start of the response, or
  "as an AI language model" anywhere.
- too_short / too_long: response word count outside [min_words, max_words].
- non_text: control characters, U+FFFD (decoding damage), a 200+ character run
  without a space (base64, minified data), or under 10% letters in 20+ characters.
"""

import dataclasses
import re

from flan_jax.data.decontamination import normalize
from flan_jax.data.instruction_records import InstructionRecord

_ENDINGS = tuple('.!?)]}"\'`*:;>…。！？»”’') + tuple("0123456789")
_REFUSAL_START = re.compile(
    r"^\s*(as an ai\b|as a language model|as an ai language model|i'?m sorry,? but (i|as)|"
    r"i am sorry,? but (i|as)|i (cannot|can't|am unable to|am not able to) "
    r"(fulfill|comply|help with|assist with|provide|answer|do that|browse)|"
    r"sorry,? i (cannot|can't))", re.IGNORECASE)
_REFUSAL_ANYWHERE = re.compile(r"as an ai language model", re.IGNORECASE)
_PROSE_WORDS = 15  # shorter last lines: labels, list entries, verse; not cut prose
_NOT_PROSE = re.compile(r"^([-*+•|#>]|\d+[.)]|[a-zA-Z][.)]\s)")
_LOWERCASE_WORD = re.compile(r"^[a-z]+,?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_LONG_RUN = re.compile(r"\S{200,}")


@dataclasses.dataclass(frozen=True)
class QualitySettings:
  min_words: int = 1
  max_words: int = 4000
  min_truncation_words: int = 20


def _truncated(output: str, settings: QualitySettings) -> bool:
  if output.count("```") % 2:
    return True
  stripped = output.rstrip()
  if len(stripped.split()) < settings.min_truncation_words or stripped.endswith(_ENDINGS):
    return False
  # Lists, tables and headings end without punctuation by nature: only prose can be cut.
  # A cut sentence ends in a lowercase word ("...the importance of"); names, hashtags,
  # units and numbers end attributions, tags and tables.
  last_line = stripped.splitlines()[-1].strip()
  return (len(last_line.split()) >= _PROSE_WORDS and not _NOT_PROSE.match(last_line)
          and bool(_LOWERCASE_WORD.match(last_line.split()[-1])))


def _repeats_instruction(record: InstructionRecord) -> bool:
  instruction, output = normalize(record.instruction), normalize(record.output)
  if not instruction or not output:
    return False
  if instruction == output:
    return True
  joined_instruction, joined_output = " ".join(instruction), " ".join(output)
  return joined_instruction in joined_output and len(instruction) >= 0.8 * len(output)


def _non_text(output: str) -> bool:
  if _CONTROL.search(output) or _LONG_RUN.search(output):
    return True
  letters = sum(c.isalpha() for c in output)
  return len(output) >= 20 and letters < 0.1 * len(output)


def reason_to_drop(record: InstructionRecord, settings: QualitySettings = QualitySettings()
                   ) -> str | None:
  """The first filter the record fails, in the order of the module docstring; None: keep."""
  output = record.output
  if not output.strip():
    return "empty"
  if _truncated(output, settings):
    return "truncated"
  if _repeats_instruction(record):
    return "repeats_instruction"
  if _REFUSAL_START.search(output) or _REFUSAL_ANYWHERE.search(output):
    return "refusal"
  words = len(output.split())
  if words < settings.min_words:
    return "too_short"
  if words > settings.max_words:
    return "too_long"
  if _non_text(output):
    return "non_text"
  return None


REASONS = ("empty", "truncated", "repeats_instruction", "refusal", "too_short", "too_long",
           "non_text")
