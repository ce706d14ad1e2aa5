"""Preference pairs: a prompt (a list of turns ending with the user's) and two answers
to it, the chosen one better than the rejected one.

Pairs come in four shapes, each read into `PreferencePair`s:

  prompt    {"prompt", "chosen", "rejected"}: strings (the prompt one user turn), or
            TRL's explicit-prompt conversational form: "prompt" a list of messages
            and "chosen"/"rejected" one assistant message each (a list of one, or a
            string). An optional "system" string opens the prompt.
  messages  {"chosen": messages, "rejected": messages}: two whole conversations
            (TRL's implicit-prompt form, as UltraFeedback-binarized ships) that must
            agree on every turn but the last, an assistant turn.
  hh        Anthropic HH-RLHF: "chosen" and "rejected" transcripts
            "\\n\\nHuman: ...\\n\\nAssistant: ..." that agree up to the last
            "\\n\\nAssistant: ".
  oasst     an OpenAssistant message tree (`conversations` reads the same files):
            at each prompt whose assistant replies carry different ranks, every
            better-ranked reply (rank 0 is best) is chosen over every worse one, the
            prompt being the conversation from the root down to it. Deleted and
            failed-review messages are left out with their replies; unranked
            replies are in no pair.

`detect_format` tells the shape from a record's keys; `format=` overrides it.

Bad pairs (a missing or non-text field, identical answers, the two sides of a
messages or HH pair disagreeing before their last turn, a turn out of order) raise
one `UserError` naming the file, the record (1-based line for JSONL, 0-based element
for a JSON list) and the field; `on_error="skip"` leaves such records out and counts
them ("bad_record"), keeping the first few problems. Nothing is dropped silently:
`PreferencePairs.counts` says what was left out, by kind.
"""

import collections
import dataclasses
import os
from typing import Any, Literal, Mapping, Sequence

from flan_jax.data import conversations, record_files
from flan_jax.errors import UserError

Turn = dict[str, str]
Format = Literal["prompt", "messages", "hh", "oasst"]
FORMATS: tuple[str, ...] = ("prompt", "messages", "hh", "oasst")
_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_preview = record_files.preview


@dataclasses.dataclass(frozen=True)
class PreferencePair:
  prompt: tuple[Mapping[str, str], ...]  # system?, user, assistant, ..., user
  chosen: str
  rejected: str
  record: int = 0  # the file's record it came from, counted from 0 (bad records too)

  def conversation(self, side: str) -> list[Turn]:
    """The prompt answered by the `side` ("chosen" or "rejected") answer."""
    return [*map(dict, self.prompt), {"role": "assistant", "content": getattr(self, side)}]


@dataclasses.dataclass
class PreferencePairs:
  pairs: list[PreferencePair]
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  problems: list[str] = dataclasses.field(default_factory=list)  # skipped records' errors

  def summary(self) -> str:
    line = f"{len(self.pairs)} preference pairs"
    if self.counts:
      line += "; " + ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
    return line


def detect_format(record: Any, where: str = "record") -> str:
  record = _object(record, "the record", where)
  if "prompt" in record and "chosen" in record:
    return "prompt"
  if isinstance(record.get("chosen"), list):
    return "messages"
  if isinstance(record.get("chosen"), str):
    return "hh"
  if isinstance(record.get("prompt"), Mapping) or ("replies" in record and "role" in record):
    return "oasst"
  raise UserError(f"{where}: cannot tell the preference format from the keys "
                  f"{record_files.keys(record)}; expected 'prompt'/'chosen'/'rejected', "
                  "'chosen'/'rejected' conversations or HH transcripts, or an OpenAssistant "
                  f"tree under 'prompt'. Pass format= one of {list(FORMATS)}.")


def parse_record(record: Any, *, format: Format | None = None, where: str = "record",
                 number: int = 0) -> PreferencePairs:
  """The pairs in one record (several for an OASST tree, none for a tree without ranks)."""
  _check_format(format)
  format = format or detect_format(record, where)
  record = _object(record, "the record", where)
  counts = collections.Counter()
  if format == "oasst":
    found = _oasst_pairs(record, where, counts)
  else:
    found = [{"prompt": _from_prompt, "messages": _from_messages, "hh": _from_hh}[format](
        record, where)]
  pairs = []
  for prompt, chosen, rejected in found:
    if chosen == rejected:
      if format == "oasst":  # two reviewers may write the same reply; no preference to learn
        counts["identical_answers"] += 1
        continue
      raise UserError(f"{where}: chosen and rejected are the same answer "
                      f"({_preview(chosen)}); a pair must prefer one answer to another. "
                      "Remove the record.")
    pairs.append(PreferencePair(tuple(prompt), chosen, rejected, number))
  return PreferencePairs(pairs, counts)


def read_pairs(path: str | os.PathLike, *, format: Format | None = None,
               on_error: Literal["raise", "skip"] = "raise",
               file_format: Literal["jsonl", "json"] | None = None) -> PreferencePairs:
  """Every pair in a JSONL or JSON-list file (`.gz` too), validated."""
  path = os.fspath(path)
  _check_format(format)
  record_files.check_on_error(on_error)
  result, records = PreferencePairs([]), 0
  for where, raw in conversations._rows(path, file_format):
    records += 1
    try:
      if isinstance(raw, record_files.RecordProblem):
        raise raw
      parsed = parse_record(raw, format=format, where=where, number=records - 1)
    except (UserError, record_files.RecordProblem) as problem:
      record_files.skip_or_raise(problem, on_error, result.problems)
      result.counts["bad_record"] += 1
      continue
    result.pairs.extend(parsed.pairs)
    result.counts.update(parsed.counts)
  if not records:
    raise UserError(f"{path}: the file holds no records. Give a JSONL file with one pair (or "
                    "OpenAssistant tree) per line, or a JSON list of them.")
  if result.counts["bad_record"] == records:
    raise UserError(f"All {records} records in {path} were skipped. First problem: "
                    f"{result.problems[0]}")
  if not result.pairs:
    raise UserError(f"{path}: no preference pair in its {records} records ({result.summary()}). "
                    "OpenAssistant trees need replies with different ranks.")
  return result


def split_pairs(pairs: Sequence[PreferencePair], validation_records: int, name: str = ""
                ) -> dict[str, list[PreferencePair]]:
  """{"train", "validation"?}: the pairs of the file's last `validation_records` records
  held out (an OASST tree's pairs share a prompt, so a split by record keeps them on
  one side)."""
  if not validation_records:
    return {"train": list(pairs)}
  first_held_out = max((p.record for p in pairs), default=-1) + 1 - validation_records
  train = [p for p in pairs if p.record < first_held_out]
  validation = [p for p in pairs if p.record >= first_held_out]
  if not train or not validation:
    raise UserError(f"{name}: validation_records={validation_records} leaves "
                    f"{len(train)} pairs to train on and {len(validation)} to evaluate; both "
                    "need some. Choose another number of held-out records.")
  return {"train": train, "validation": validation}


def _check_format(format: str | None) -> None:
  if format is not None and format not in FORMATS:
    raise UserError(f"format={format!r}; use one of {list(FORMATS)}, or None to detect it.")


# Formats. Each returns (prompt turns, chosen, rejected) triples.

def _from_prompt(record: Mapping, where: str):
  prompt = record.get("prompt")
  system = _optional_text(record, "system", where)
  if isinstance(prompt, list):
    turns = _turns(prompt, "prompt", where)
    if not turns or turns[-1]["role"] != "user":
      raise UserError(f"{where}: prompt must end with a user turn (the one the answers "
                      "answer).")
  else:
    turns = [{"role": "user", "content": _text(prompt, "prompt", where)}]
  if system is not None:
    if turns[0]["role"] == "system":
      raise UserError(f"{where}: both 'system' and a system turn in prompt; keep one.")
    turns = [{"role": "system", "content": system}, *turns]
  _check_order(turns, "prompt", where)
  return turns, _answer(record, "chosen", where), _answer(record, "rejected", where)


def _answer(record: Mapping, field: str, where: str) -> str:
  value = record.get(field)
  if isinstance(value, list):  # TRL's conversational completion: one assistant message
    turns = _turns(value, field, where)
    if len(turns) != 1 or turns[0]["role"] != "assistant":
      raise UserError(f"{where}: {field} must be one assistant message, got roles "
                      f"{[t['role'] for t in turns]}.")
    value = turns[0]["content"]
  return _nonempty(_text(value, field, where), field, where)


def _from_messages(record: Mapping, where: str):
  sides = {}
  for field in ("chosen", "rejected"):
    value = record.get(field)
    if not isinstance(value, list):
      raise UserError(f"{where}: {field} is {_state(record, field)}; expected a list of "
                      "messages.")
    turns = _turns(value, field, where)
    if not turns or turns[-1]["role"] != "assistant":
      raise UserError(f"{where}: {field} must end with the assistant's answer; its last turn "
                      f"is {turns[-1]['role'] if turns else 'missing'}.")
    _check_order(turns, field, where)
    sides[field] = turns
  _same_prompt(sides["chosen"][:-1], sides["rejected"][:-1], where)
  return sides["chosen"][:-1], *(_nonempty(sides[f][-1]["content"], f"{f}[-1].content", where)
                                 for f in ("chosen", "rejected"))


def _from_hh(record: Mapping, where: str):
  sides = {}
  for field in ("chosen", "rejected"):
    sides[field] = _transcript(_text(record.get(field), field, where), field, where)
  _same_prompt(sides["chosen"][:-1], sides["rejected"][:-1], where)
  return sides["chosen"][:-1], *(_nonempty(sides[f][-1]["content"], f, where)
                                 for f in ("chosen", "rejected"))


def _transcript(text: str, field: str, where: str) -> list[Turn]:
  """HH's "\\n\\nHuman: ...\\n\\nAssistant: ..." as turns; it must end with an answer."""
  turns, at = [], 0
  markers = {_HUMAN: "user", _ASSISTANT: "assistant"}
  if not text.startswith(_HUMAN):
    raise UserError(f"{where}: {field} does not start with {_HUMAN!r} "
                    f"({_preview(text)}); an HH transcript alternates Human and Assistant.")
  while at < len(text):
    marker = _HUMAN if text.startswith(_HUMAN, at) else _ASSISTANT
    start = at + len(marker)
    ends = [i for i in (text.find(_HUMAN, start), text.find(_ASSISTANT, start)) if i >= 0]
    end = min(ends, default=len(text))
    turns.append({"role": markers[marker], "content": text[start:end].strip()})
    at = end
  if turns[-1]["role"] != "assistant":
    raise UserError(f"{where}: {field} ends with a Human turn; the transcript must end with "
                    "the Assistant's answer.")
  _check_order(turns, field, where)
  return turns


def _oasst_pairs(record: Mapping, where: str, counts: collections.Counter):
  root, field = (record["prompt"], "prompt") if "prompt" in record else (record, "message")
  found = []

  def visit(node, node_field, history):
    if not conversations._usable(node, counts):
      return
    turn = conversations._oasst_turn(node, node_field, where)
    turns = [*history, {"role": turn.role, "content": turn.content}]
    replies = conversations._replies(node, node_field, where, counts)
    if turn.role == "user":
      ranked = [(conversations._rank(child, child_field, where)[1], i, child, child_field)
                for i, (child, child_field) in enumerate(replies)
                if child.get("rank") is not None]
      ranked.sort()
      if len({rank for rank, *_ in ranked}) > 1:
        counts["ranked_groups"] += 1
      for better in range(len(ranked)):
        for worse in range(better + 1, len(ranked)):
          if ranked[better][0] < ranked[worse][0]:
            found.append((turns, *(conversations._oasst_turn(
                ranked[k][2], ranked[k][3], where).content for k in (better, worse))))
    for child, child_field in replies:
      visit(child, child_field, turns)

  visit(_object(root, field, where), field, [])
  return found


# Field access with messages that name the place, the field and the fix.

def _turns(value: list, field: str, where: str) -> list[Turn]:
  turns = []
  for i, entry in enumerate(value):
    entry = _object(entry, f"{field}[{i}]", where)
    role = entry.get("role")
    if role not in conversations.ROLES:
      raise UserError(f"{where}: {field}[{i}].role is {_preview(role)}; a role must be one of "
                      f"{', '.join(conversations.ROLES)}.")
    turns.append({"role": role, "content": _text(entry.get("content"), f"{field}[{i}].content",
                                                 where)})
  return turns


def _check_order(turns: Sequence[Turn], field: str, where: str) -> None:
  for i, turn in enumerate(turns):
    if turn["role"] == "system" and i:
      raise UserError(f"{where}: {field}[{i}] is a system turn after the first; only the first "
                      "turn may be the system's.")
    if i and turn["role"] == turns[i - 1]["role"]:
      raise UserError(f"{where}: {field}[{i}] is a second {turn['role']} turn in a row; user "
                      "and assistant turns must alternate.")
  opening = next((t for t in turns if t["role"] != "system"), None)
  if opening is None or opening["role"] != "user":
    raise UserError(f"{where}: {field} must open with a user turn (after an optional system "
                    "turn).")


def _same_prompt(chosen: Sequence[Turn], rejected: Sequence[Turn], where: str) -> None:
  for i in range(max(len(chosen), len(rejected))):
    if i >= len(chosen) or i >= len(rejected) or chosen[i] != rejected[i]:
      raise UserError(f"{where}: chosen[{i}] and rejected[{i}] differ, but both sides of a pair "
                      "must answer the same prompt (every turn before the last). Fix the "
                      "record or remove it.")


def _text(value: Any, field: str, where: str) -> str:
  if not isinstance(value, str):
    state = "missing or null" if value is None else f"a {type(value).__name__} ({_preview(value)})"
    raise UserError(f"{where}: {field} is {state}; expected a string.")
  if problem := record_files.value_problem(value):
    raise UserError(f"{where}: {field} {problem}.")
  return value


def _optional_text(record: Mapping, field: str, where: str) -> str | None:
  return None if record.get(field) is None else _text(record[field], field, where)


def _nonempty(text: str, field: str, where: str) -> str:
  if not text.strip():
    raise UserError(f"{where}: {field} is an empty answer; a pair needs two real answers.")
  return text


def _state(record: Mapping, field: str) -> str:
  return "missing" if field not in record else f"a {type(record[field]).__name__}"


def _object(value: Any, field: str, where: str) -> Mapping:
  if not isinstance(value, Mapping):
    raise UserError(f"{where}: {field} is a {type(value).__name__} ({_preview(value)}); "
                    "expected a JSON object.")
  return value
