"""Conversation records in one form: a list of turns {"role", "content"}.

Chat data comes in four common shapes. Each is read into the same list of turns,
with roles "system", "user" and "assistant", ready for a chat template:

  messages  OpenAI style, {"messages": [{"role": "user", "content": "..."}, ...]}.
            "developer" (OpenAI's newer name for the system turn) reads as "system";
            content may be a string or a list of text parts.
  sharegpt  {"conversations": [{"from": "human", "value": "..."}, ...]}. "from" is
            human/user -> user; gpt/assistant/chatgpt/bing/bard/model -> assistant;
            system -> system (case ignored). Entries written {"role", "content"} and
            a top-level "system" string (LLaMA-Factory's variant) are read too.
  alpaca    {"instruction", "input", "output", "system"?, "history"?}: one user turn
            (the instruction, then the input as a second paragraph when there is
            one) answered by "output", after the [user, assistant] pairs of
            "history" (LIMA's files as LLaMA-Factory ships them).
  oasst     an OpenAssistant message tree: {"prompt": {"text", "role", "replies":
            [...]}, ...}, or the root message itself. See "Trees" below.

`detect_format` tells the shape from a record's keys; `format=` overrides it.

Tool traffic is skipped and counted, never trained: turns by "tool", "function",
"ipython" or "observation", and assistant turns that only call tools. An assistant
turn with both text and tool calls keeps its text. Half a tool exchange would teach
the model to call tools without ever seeing results.

Trees. `paths="all"` yields every root-to-leaf conversation; `paths="top"` the one
that follows the best-ranked reply at each step. A reply's `rank` decides (OASST's
human ranking: 0 is the best); replies without a rank come after every ranked one;
ties go to the reply that comes first in the file. Messages marked `deleted` or
with `review_result: false` are left out with their replies. A prompt nobody
answered ends no conversation (training on it teaches nothing): it is pruned and
counted, so every conversation ends with an answer and "all" yields one
conversation per leaf of the pruned tree.

Validation. Every conversation must have known roles, a system turn only first, a
user turn before the first answer (an assistant greeting that opens a conversation
answers no prompt, and a prompt at inference always ends with the user), no two user
or two assistant turns in a row (`merge_consecutive=True` joins them with a blank
line instead), no empty assistant turn and at least one assistant turn, and text
that is Unicode (no lone UTF-16 surrogate from a broken `\\u` escape). User turns
after the last answer are dropped: they train nothing. A bad record raises
`UserError` naming the place (file and 1-based line for JSONL, 0-based element for a
JSON list, as `sources.read_records` does), the field (`messages[3].role`) and the
fix; `on_error="skip"` drops it instead. A file broken as a whole (missing, a
directory, a corrupt `.gz`, not JSON, or holding no records) always raises.

Nothing is dropped silently: `Conversations.counts` says what was skipped or
merged, by kind (`tool_turn`, `tool_call_turn`, `tool_calls_dropped`,
`trailing_user_turn`, `merged_turn`, `unanswered_prompt`, `deleted_message`,
`failed_review`, `bad_record`), for the caller to report (`summary()`).

Files are read by the row readers `sources.read_records` uses (`record_formats`:
JSONL lines, a JSON list's elements), with the same places and the same on_error
policy (`record_files`); the fields are not `read_records`' flat strings, since a
conversation is a nested list.
"""

import collections
import dataclasses
import math
import os
from typing import Any, Literal, Mapping, NamedTuple

from flan_jax.data import record_files, record_formats
from flan_jax.errors import UserError

Turn = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Format = Literal["messages", "sharegpt", "alpaca", "oasst"]
Paths = Literal["all", "top"]

FORMATS: tuple[str, ...] = ("messages", "sharegpt", "alpaca", "oasst")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

_MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user",
                  "assistant": "assistant"}
_SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                   "assistant": "assistant", "chatgpt": "assistant", "bing": "assistant",
                   "bard": "assistant", "model": "assistant"}
_OASST_ROLES = {"prompter": "user", "user": "user", "assistant": "assistant"}
_TOOL_ROLES = ("tool", "function", "ipython", "observation")
_TOOL_CALL_ROLES = ("function_call",)  # ShareGPT's assistant turn that calls a tool
_JOINER = "\n\n"  # between merged turns, and between an Alpaca instruction and input
_preview, _keys = record_files.preview, record_files.keys  # as every record reader shows them


@dataclasses.dataclass
class Conversations:
  conversations: list[list[Turn]]
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  problems: list[str] = dataclasses.field(default_factory=list)  # skipped records' errors
  # Per conversation, the number of the file's record it came from (from 0; bad records
  # count too): an OASST tree's paths share one, so a split by record never puts a
  # shared opening in both training and validation.
  records: list[int] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """One line for a log: how many conversations, and what was skipped or merged."""
    line = f"{len(self.conversations)} conversations"
    if self.counts:
      line += "; " + ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
    return line


class _Turn(NamedTuple):
  role: str
  content: str
  field: str  # where the turn is in the record, for messages: "messages[3]"


def detect_format(record: Any, where: str = "record") -> str:
  """The record's conversation format, from its keys."""
  record = _object(record, "the record", where)
  if "messages" in record:
    return "messages"
  if "conversations" in record:
    return "sharegpt"
  if "instruction" in record:
    return "alpaca"
  if isinstance(record.get("prompt"), Mapping) or ("replies" in record and "role" in record):
    return "oasst"
  raise UserError(
      f"{where}: cannot tell the conversation format from the keys {_keys(record)}; expected "
      "'messages' (OpenAI), 'conversations' (ShareGPT), 'instruction' (Alpaca) or 'prompt' "
      f"holding a message tree (OpenAssistant). Pass format= one of {list(FORMATS)} if the "
      "record is one of them under other keys.")


def parse_record(record: Any, *, format: Format | None = None, paths: Paths = "all",
                 merge_consecutive: bool = False, where: str = "record") -> Conversations:
  """The conversations in one record (several for an OASST tree with paths="all")."""
  _check_options(format, paths)
  format = format or detect_format(record, where)
  record = _object(record, "the record", where)
  counts = collections.Counter()
  if format == "oasst":
    drafts = _oasst_conversations(record, paths, where, counts)
  else:
    drafts = [_PARSERS[format](record, where, counts)]
  container = {"messages": "messages", "sharegpt": "conversations"}.get(format, "the record")
  return Conversations(
      [_finish(draft, container, merge_consecutive, where, counts) for draft in drafts], counts)


def read_conversations(path: str | os.PathLike, *, format: Format | None = None,
                       paths: Paths = "all", merge_consecutive: bool = False,
                       on_error: Literal["raise", "skip"] = "raise",
                       file_format: Literal["jsonl", "json"] | None = None) -> Conversations:
  """Every conversation in a JSONL or JSON-list file (`.gz` too), validated.

  `format` is the records' conversation format (None: detected per record);
  `file_format` the file's (None: from the extension).
  """
  path = os.fspath(path)
  _check_options(format, paths)
  record_files.check_on_error(on_error)
  result, records = Conversations([]), 0
  for where, raw in _rows(path, file_format):
    records += 1
    try:
      if isinstance(raw, record_files.RecordProblem):
        raise raw
      parsed = parse_record(raw, format=format, paths=paths,
                            merge_consecutive=merge_consecutive, where=where)
    except (UserError, record_files.RecordProblem) as problem:
      record_files.skip_or_raise(problem, on_error, result.problems)
      result.counts["bad_record"] += 1
      continue
    result.conversations.extend(parsed.conversations)
    result.records.extend([records - 1] * len(parsed.conversations))
    result.counts.update(parsed.counts)
  if not records:
    raise UserError(f"{path}: the file holds no records. Give a JSONL file with one "
                    "conversation per line, or a JSON list of them.")
  if result.counts["bad_record"] == records:
    # Every record bad points to a wrong format= rather than bad data.
    raise UserError(f"All {records} records in {path} were skipped. First problem: "
                    f"{result.problems[0]}")
  return result


def _check_options(format: str | None, paths: str) -> None:
  if format is not None and format not in FORMATS:
    raise UserError(f"format={format!r}; use one of {list(FORMATS)}, or None to detect it.")
  if paths not in ("all", "top"):
    raise UserError(f"paths={paths!r}; use 'all' (every root-to-leaf conversation of a tree) "
                    "or 'top' (the best-ranked one).")


# Formats. Each parser turns one record into drafts (_Turn lists) for _finish.

def _from_messages(record: Mapping, where: str, counts: collections.Counter) -> list[_Turn]:
  turns = []
  for i, entry in enumerate(_list(record, "messages", where)):
    field = f"messages[{i}]"
    entry = _object(entry, field, where)
    role = _role(entry.get("role"), f"{field}.role", _MESSAGE_ROLES, where)
    if role is None:
      counts["tool_turn"] += 1
      continue
    content = _content(entry.get("content"), f"{field}.content", where)
    if role == "assistant" and (entry.get("tool_calls") or entry.get("function_call")):
      if not (content and content.strip()):
        counts["tool_call_turn"] += 1
        continue
      counts["tool_calls_dropped"] += 1
    turns.append(_Turn(role, _required(content, f"{field}.content", where), field))
  return turns


def _from_sharegpt(record: Mapping, where: str, counts: collections.Counter) -> list[_Turn]:
  turns = []
  if system := _text(record.get("system"), "system", where):
    turns.append(_Turn("system", system, "system"))
  for i, entry in enumerate(_list(record, "conversations", where)):
    field = f"conversations[{i}]"
    entry = _object(entry, field, where)
    speaker, text = ("from", "value") if "from" in entry else ("role", "content")
    if str(entry.get(speaker)).lower() in _TOOL_CALL_ROLES:
      counts["tool_call_turn"] += 1
      continue
    role = _role(entry.get(speaker), f"{field}.{speaker}", _SHAREGPT_ROLES, where)
    if role is None:
      counts["tool_turn"] += 1
      continue
    content = _content(entry.get(text), f"{field}.{text}", where)
    turns.append(_Turn(role, _required(content, f"{field}.{text}", where), field))
  return turns


def _from_alpaca(record: Mapping, where: str, counts: collections.Counter) -> list[_Turn]:
  del counts  # nothing to skip in Alpaca records
  turns = []
  if system := _text(record.get("system"), "system", where):
    turns.append(_Turn("system", system, "system"))
  history = record.get("history")
  for i, pair in enumerate(_list(record, "history", where) if history is not None else []):
    field = f"history[{i}]"
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
      raise UserError(f"{where}: {field} is {_preview(pair)}; each history entry must be a "
                      "[user, assistant] pair of strings. Fix or remove it.")
    turns.append(_Turn("user", _required(_text(pair[0], f"{field}[0]", where), f"{field}[0]",
                                         where), f"{field}[0]"))
    turns.append(_Turn("assistant", _required(_text(pair[1], f"{field}[1]", where),
                                              f"{field}[1]", where), f"{field}[1]"))
  instruction = _required(_text(record.get("instruction"), "instruction", where), "instruction",
                          where)
  extra = _text(record.get("input"), "input", where)
  prompt = instruction + _JOINER + extra if extra and extra.strip() else instruction
  turns.append(_Turn("user", prompt, "instruction"))
  turns.append(_Turn("assistant", _required(_text(record.get("output"), "output", where),
                                            "output", where), "output"))
  return turns


_PARSERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}


def _oasst_conversations(record: Mapping, paths: str, where: str,
                         counts: collections.Counter) -> list[list[_Turn]]:
  root, field = (record["prompt"], "prompt") if "prompt" in record else (record, "message")
  root = _object(root, field, where)
  if not _usable(root, counts):
    return []
  if paths == "all":
    return _all_paths(root, field, where, counts)
  top = _top_path(root, field, where, counts)
  return [top] if top else []


def _all_paths(node: Mapping, field: str, where: str,
               counts: collections.Counter) -> list[list[_Turn]]:
  turn = _oasst_turn(node, field, where)
  ends = [path for child, child_field in _replies(node, field, where, counts)
          for path in _all_paths(child, child_field, where, counts)]
  if ends:
    return [[turn] + path for path in ends]
  if turn.role == "user":
    counts["unanswered_prompt"] += 1
    return []
  return [[turn]]


def _top_path(node: Mapping, field: str, where: str,
              counts: collections.Counter) -> list[_Turn] | None:
  turn = _oasst_turn(node, field, where)
  replies = _replies(node, field, where, counts)
  # sorted() is stable, so equal ranks keep file order: the first reply wins a tie.
  for child, child_field in sorted(replies, key=lambda reply: _rank(*reply, where)):
    path = _top_path(child, child_field, where, counts)
    if path:  # else an unanswered prompt: the next-best reply takes its place
      return [turn] + path
  if turn.role == "user":
    counts["unanswered_prompt"] += 1
    return None
  return [turn]


def _oasst_turn(node: Mapping, field: str, where: str) -> _Turn:
  role = _role(node.get("role"), f"{field}.role", _OASST_ROLES, where, tools=False)
  text = _required(_text(node.get("text"), f"{field}.text", where), f"{field}.text", where)
  return _Turn(role, text, field)


def _replies(node: Mapping, field: str, where: str,
             counts: collections.Counter) -> list[tuple[Mapping, str]]:
  replies = node.get("replies")
  if replies is None:
    return []
  usable = []
  for i, child in enumerate(_list(node, "replies", where, f"{field}.replies")):
    child_field = f"{field}.replies[{i}]"
    child = _object(child, child_field, where)
    if _usable(child, counts):
      usable.append((child, child_field))
  return usable


def _usable(node: Mapping, counts: collections.Counter) -> bool:
  """False for messages OASST's own exports leave out; their replies go with them."""
  if node.get("deleted") is True:
    counts["deleted_message"] += 1
    return False
  if node.get("review_result") is False:
    counts["failed_review"] += 1
    return False
  return True


def _rank(node: Mapping, field: str, where: str) -> tuple[int, float]:
  rank = node.get("rank")
  if rank is None:
    return (1, 0)  # unranked replies after every ranked one
  if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not math.isfinite(rank):
    raise UserError(f"{where}: {field}.rank is {_preview(rank)}; a rank must be a finite number "
                    "(0 is the best) or null. Fix the tree, or read it with paths='all'.")
  return (0, rank)


# Validation shared by every format.

def _finish(turns: list[_Turn], container: str, merge_consecutive: bool, where: str,
            counts: collections.Counter) -> list[Turn]:
  if merge_consecutive:
    turns = _merge(turns, counts)
  opening = next((turn for turn in turns if turn.role != "system"), None)
  if opening and opening.role == "assistant":
    raise UserError(
        f"{where}: {opening.field} is an assistant turn before any user turn; a conversation "
        "opens with the user's turn (after an optional system turn), as every prompt at "
        "inference does. Add the user turn it answers, move a greeting into the system turn, "
        "or remove the record.")
  for i, turn in enumerate(turns):
    if turn.role == "system" and i > 0:
      raise UserError(
          f"{where}: {turn.field} is a system turn at position {i}; a system turn may only open "
          "the conversation. Move its text into the first turn, or remove it.")
    if i and turn.role == turns[i - 1].role:
      raise UserError(
          f"{where}: {turn.field} is a second {turn.role} turn in a row (after "
          f"{turns[i - 1].field}); user and assistant turns must alternate. Join or remove "
          "them, or pass merge_consecutive=True to join such turns with a blank line.")
    if turn.role == "assistant" and not turn.content.strip():
      raise UserError(
          f"{where}: {turn.field} is an empty assistant turn; training on it would teach the "
          "model to answer with nothing. Fill it in or remove the record.")
  if not any(turn.role == "assistant" for turn in turns):
    roles = ", ".join(turn.role for turn in turns) or "none"
    raise UserError(f"{where}: {container} has no assistant turn (roles: {roles}), so it trains "
                    "nothing. Add the answer or remove the record.")
  while turns[-1].role == "user":
    counts["trailing_user_turn"] += 1
    turns = turns[:-1]
  return [{"role": turn.role, "content": turn.content} for turn in turns]


def _merge(turns: list[_Turn], counts: collections.Counter) -> list[_Turn]:
  merged = []
  for turn in turns:
    if merged and merged[-1].role == turn.role:
      previous = merged[-1]
      merged[-1] = previous._replace(content=previous.content + _JOINER + turn.content)
      counts["merged_turn"] += 1
    else:
      merged.append(turn)
  return merged


# Field access with messages that name the place, the field and the fix.

def _role(value: Any, field: str, roles: Mapping[str, str], where: str,
          tools: bool = True) -> str | None:
  """The turn's role in our terms; None for a tool turn (to skip and count)."""
  name = value.lower() if isinstance(value, str) else value
  if tools and name in _TOOL_ROLES:
    return None
  if name in roles:
    return roles[name]
  skipped = f"; {', '.join(_TOOL_ROLES)} turns are skipped" if tools else ""
  raise UserError(f"{where}: {field} is {_preview(value)}; a role must be one of "
                  f"{', '.join(roles)}{skipped}. Fix the role, or pass format= if the record "
                  "is in another format.")


def _content(value: Any, field: str, where: str) -> str | None:
  """A turn's text: a string, or a list of text parts (OpenAI's multi-part content)."""
  if value is None or isinstance(value, str):
    return _unicode(value, field, where)
  if isinstance(value, list):
    texts = []
    for i, part in enumerate(value):
      if isinstance(part, str):
        texts.append(part)
      elif isinstance(part, Mapping) and part.get("type") == "text" and isinstance(
          part.get("text"), str):
        texts.append(part["text"])
      else:
        raise UserError(f"{where}: {field}[{i}] is {_preview(part)}; only text parts "
                        "({'type': 'text', 'text': ...}) can be trained on. Drop the part or "
                        "the record.")
    return _unicode("".join(texts), field, where)
  raise UserError(f"{where}: {field} is a {type(value).__name__} ({_preview(value)}); expected "
                  "a string or a list of text parts.")


def _text(value: Any, field: str, where: str) -> str | None:
  if value is None or isinstance(value, str):
    return _unicode(value, field, where)
  raise UserError(f"{where}: {field} is a {type(value).__name__} ({_preview(value)}); expected "
                  "a string.")


def _unicode(value: str | None, field: str, where: str) -> str | None:
  if problem := record_files.value_problem(value):
    raise UserError(f"{where}: {field} {problem}.")
  return value


def _required(value: str | None, field: str, where: str) -> str:
  if value is None:
    raise UserError(f"{where}: {field} is missing or null; every turn needs its text. Add it "
                    "or remove the record.")
  return value


def _list(record: Mapping, key: str, where: str, field: str | None = None) -> list:
  value = record.get(key)
  if not isinstance(value, list):
    state = "missing" if key not in record else f"a {type(value).__name__} ({_preview(value)})"
    raise UserError(f"{where}: {field or key} is {state}; expected a list. Fix the record, or "
                    "pass format= if it is in another format.")
  return value


def _object(value: Any, field: str, where: str) -> Mapping:
  if not isinstance(value, Mapping):
    raise UserError(f"{where}: {field} is a {type(value).__name__} ({_preview(value)}); "
                    "expected a JSON object.")
  return value


# Files.

def _rows(path: str, file_format: str | None) -> record_formats.Rows:
  """(place, record) pairs; a line that is not JSON comes as a RecordProblem to raise or skip."""
  file_format = file_format or _file_format(path)
  if file_format not in ("jsonl", "json"):
    raise UserError(f"file_format={file_format!r}; use 'jsonl' or 'json'.")
  data = record_files.read_bytes(path)
  if file_format == "jsonl":
    return record_formats.jsonl_rows(data, path)
  document = record_formats.json_document(data, path, format_argument="file_format")
  if not isinstance(document, list):
    raise UserError(f"{path}: expected a JSON list of records at the top level, found a "
                    f"{type(document).__name__}. Pass file_format='jsonl' for one object "
                    "per line.")
  return record_formats.json_elements(document, path)


def _file_format(path: str) -> str:
  extension = record_formats.extension(path)
  if record_formats.EXTENSIONS.get(extension) not in ("jsonl", "json"):
    raise UserError(f"{path}: cannot tell the file format from the extension "
                    f"{extension or '(none)'!r}. Pass file_format='jsonl' or 'json'.")
  return record_formats.EXTENSIONS[extension]
