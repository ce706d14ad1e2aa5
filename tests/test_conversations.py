"""Conversation records: every format read into turns, OASST trees, validation messages."""

import gzip
import json
import os

import pytest

from flan_jax.data.conversations import detect_format, parse_record, read_conversations
from flan_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OASST_TREES = os.path.join(os.path.dirname(REPO), "shared", "data", "instruct", "oasst",
                           "en_100_tree.jsonl")


def _turns(*pairs):
  return [{"role": role, "content": content} for role, content in pairs]


def _only(record, **kwargs):
  """The one conversation a record holds."""
  conversations = parse_record(record, **kwargs).conversations
  assert len(conversations) == 1
  return conversations[0]


def test_openai_messages_read_as_they_are():
  record = {"messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Capital "},
                                   {"type": "text", "text": "of France?"}]},
      {"role": "assistant", "content": "Paris."}]}
  assert detect_format(record) == "messages"
  assert _only(record) == _turns(("system", "Be brief."), ("user", "Capital of France?"),
                                 ("assistant", "Paris."))


def test_tool_traffic_is_skipped_and_counted():
  record = {"messages": [
      {"role": "user", "content": "Weather in Oslo?"},
      {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {}}]},
      {"role": "tool", "content": "{\"temp\": 3}"},
      {"role": "assistant", "content": "3 degrees."}]}
  parsed = parse_record(record)
  assert parsed.conversations == [_turns(("user", "Weather in Oslo?"),
                                         ("assistant", "3 degrees."))]
  assert parsed.counts == {"tool_call_turn": 1, "tool_turn": 1}
  assert "1 tool_turn" in parsed.summary()


def test_sharegpt_speakers_map_to_roles():
  record = {"conversations": [
      {"from": "system", "value": "Be brief."},
      {"from": "human", "value": "Hi"},
      {"from": "gpt", "value": "Hello."},
      {"from": "Human", "value": "Time?"},
      {"from": "function_call", "value": "{\"name\": \"clock\"}"},
      {"from": "observation", "value": "12:00"},
      {"from": "chatgpt", "value": "Noon."}]}
  assert detect_format(record) == "sharegpt"
  parsed = parse_record(record)
  assert parsed.conversations == [_turns(
      ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Time?"),
      ("assistant", "Noon."))]
  assert parsed.counts == {"tool_call_turn": 1, "tool_turn": 1}


def test_alpaca_history_comes_before_the_instruction():
  record = {"system": "Be brief.", "instruction": "Translate.", "input": "Bonjour",
            "output": "Hello", "history": [["Hi", "Hello."]]}
  assert detect_format(record) == "alpaca"
  assert _only(record) == _turns(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."),
                                 ("user", "Translate.\n\nBonjour"), ("assistant", "Hello"))
  assert _only({"instruction": "Say hi.", "input": "", "output": "Hi!"}) == _turns(
      ("user", "Say hi."), ("assistant", "Hi!"))


def _message(role, text, replies=(), **fields):
  return {"role": role, "text": text, "replies": list(replies), **fields}


# Q is answered three times (ranks 1, 0, none) plus once by a deleted message; the
# best answer's follow-ups q01 (answered twice) and q02 (unanswered) are unranked.
TREE = {"message_tree_id": "t", "prompt": _message("prompter", "Q", [
    _message("assistant", "a1", [_message("prompter", "q11")], rank=1),
    _message("assistant", "a0", [
        _message("prompter", "q01", [_message("assistant", "a011"),
                                     _message("assistant", "a010", rank=0)]),
        _message("prompter", "q02")], rank=0),
    _message("assistant", "a2"),
    _message("assistant", "a3", deleted=True, rank=2)])}


def _dialog(*texts):
  return [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
          for i, text in enumerate(texts)]


def test_oasst_all_paths_end_at_every_answered_leaf():
  assert detect_format(TREE) == "oasst"
  parsed = parse_record(TREE, paths="all")
  # a1's only follow-up went unanswered, so the path ends at a1.
  assert parsed.conversations == [_dialog("Q", "a1"), _dialog("Q", "a0", "q01", "a011"),
                                  _dialog("Q", "a0", "q01", "a010"), _dialog("Q", "a2")]
  assert parsed.counts == {"unanswered_prompt": 2, "deleted_message": 1}


def test_oasst_top_follows_the_lowest_rank():
  # a0 (rank 0) beats a1 and unranked a2; q01 and q02 tie unranked, so the first
  # wins; a010 (rank 0) beats unranked a011.
  assert parse_record(TREE, paths="top").conversations == [_dialog("Q", "a0", "q01", "a010")]


def test_oasst_top_refuses_a_rank_that_is_not_a_finite_number():
  tree = {"prompt": _message("prompter", "Q", [_message("assistant", "a", rank=0),
                                               _message("assistant", "b", rank=float("nan"))])}
  with pytest.raises(UserError, match=r"prompt\.replies\[1\]\.rank is nan"):
    parse_record(json.loads(json.dumps(tree)), paths="top")


def test_oasst_top_passes_over_an_unanswered_prompt():
  tree = {"prompt": _message("prompter", "Q", [
      _message("assistant", "a", [_message("prompter", "unanswered", rank=0),
                                  _message("prompter", "q", [_message("assistant", "b")],
                                           rank=1)])])}
  parsed = parse_record(tree, paths="top")
  assert parsed.conversations == [_dialog("Q", "a", "q", "b")]
  assert parsed.counts == {"unanswered_prompt": 1}


def _leaves(node, role=None):
  if not node["replies"]:
    return int(role is None or node["role"] == role)
  return sum(_leaves(reply, role) for reply in node["replies"])


def _answered_leaves(node):
  """Leaves of the tree once prompts nobody answered are pruned."""
  below = sum(_answered_leaves(reply) for reply in node["replies"])
  return below or int(node["role"] == "assistant")


@pytest.mark.skipif(not os.path.isfile(OASST_TREES), reason="../shared/data is not present")
def test_real_oasst_trees_give_one_conversation_per_answered_leaf():
  with open(OASST_TREES, encoding="utf-8") as f:
    trees = [json.loads(line) for line in f]
  everything = read_conversations(OASST_TREES, paths="all")
  assert len(everything.conversations) == sum(_answered_leaves(t["prompt"]) for t in trees)
  assert everything.counts["unanswered_prompt"] == sum(
      _leaves(t["prompt"], "prompter") for t in trees)
  assert all(c[-1]["role"] == "assistant" for c in everything.conversations)
  best = read_conversations(OASST_TREES, paths="top")
  assert len(best.conversations) == len(trees)


def test_format_overrides_detection():
  record = {"messages": "notes, not turns", "instruction": "Say hi.", "output": "Hi!"}
  with pytest.raises(UserError, match="messages is a str"):
    parse_record(record)
  assert _only(record, format="alpaca") == _turns(("user", "Say hi."), ("assistant", "Hi!"))
  with pytest.raises(UserError, match=r"cannot tell the conversation format.*\['text'\]"):
    detect_format({"text": "plain"})


def test_user_turns_after_the_last_answer_are_dropped_and_counted():
  parsed = parse_record({"messages": _turns(("user", "Hi"), ("assistant", "Hello."),
                                            ("user", "Bye"))})
  assert parsed.conversations == [_turns(("user", "Hi"), ("assistant", "Hello."))]
  assert parsed.counts == {"trailing_user_turn": 1}


def test_merge_consecutive_joins_turns_of_one_speaker():
  record = {"messages": _turns(("user", "Hi"), ("user", "Anyone?"), ("assistant", "Yes."))}
  with pytest.raises(UserError, match=r"messages\[1\] is a second user turn.*merge_consecutive"):
    parse_record(record)
  parsed = parse_record(record, merge_consecutive=True)
  assert parsed.conversations == [_turns(("user", "Hi\n\nAnyone?"), ("assistant", "Yes."))]
  assert parsed.counts == {"merged_turn": 1}


GOOD = {"messages": _turns(("user", "Hi"), ("assistant", "Hello."))}
BAD_RECORDS = {
    "unknown role": ({"messages": [{"role": "user", "content": "Hi"},
                                   {"role": "bot", "content": "Hello."}]}, "messages[1].role"),
    "empty assistant turn": ({"messages": _turns(("user", "Hi"), ("assistant", " "))},
                             "messages[1]"),
    "no assistant turn": ({"messages": _turns(("system", "Be brief."), ("user", "Hi"))},
                          "messages has no assistant turn"),
    "two assistant turns": ({"messages": _turns(("user", "Hi"), ("assistant", "Hello."),
                                                ("assistant", "Hello?"))}, "messages[2]"),
    "system turn later": ({"messages": _turns(("user", "Hi"), ("system", "Be brief."),
                                              ("assistant", "Hello."))}, "messages[1]"),
    "missing content": ({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
                        "messages[0].content"),
    "sharegpt speaker": ({"conversations": [{"from": "robot", "value": "Hi"}]},
                         "conversations[0].from"),
    "alpaca output": ({"instruction": "Say hi.", "input": ""}, "output"),
    "alpaca history": ({"instruction": "a", "output": "b", "history": [["only one"]]},
                       "history[0]"),
    "oasst role": ({"prompt": _message("prompter", "Q", [_message("bot", "A")])},
                   "prompt.replies[0].role"),
    # json.dumps writes a lone surrogate as the escape "\\udc00", as a broken file has it.
    "lone surrogate": ({"messages": _turns(("user", "Hi \udc00"), ("assistant", "Hello."))},
                       "messages[0].content holds a lone UTF-16 surrogate"),
    "nan content": ({"messages": _turns(("user", "Hi"), ("assistant", float("nan")))},
                    "messages[1].content is a float (nan)"),
    "assistant first": ({"messages": _turns(("system", "Be kind."), ("assistant", "Hello!"),
                                            ("user", "Hi"), ("assistant", "Hi."))},
                        "messages[1] is an assistant turn before any user turn"),
    "sharegpt assistant first": ({"conversations": [{"from": "gpt", "value": "Hello!"},
                                                    {"from": "human", "value": "Hi"},
                                                    {"from": "gpt", "value": "Hi."}]},
                                 "conversations[0] is an assistant turn before any user turn"),
}


@pytest.mark.parametrize("record,field", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_jsonl_record_names_file_line_and_field(tmp_path, record, field):
  path = tmp_path / "chats.jsonl"
  # Line 2 is blank: places are the editor's line numbers, not record counts.
  path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(record) + "\n", encoding="utf-8")
  with pytest.raises(UserError) as error:
    read_conversations(path)
  message = str(error.value)
  assert f"{path}, line 3:" in message
  assert field in message


def test_a_bad_json_list_record_names_its_element(tmp_path):
  path = tmp_path / "chats.json"
  path.write_text(json.dumps([GOOD, BAD_RECORDS["unknown role"][0]]), encoding="utf-8")
  with pytest.raises(UserError, match=r"chats\.json, element 1: messages\[1\]\.role is 'bot'"):
    read_conversations(path)


def test_a_line_that_is_not_json_names_its_line(tmp_path):
  path = tmp_path / "chats.jsonl"
  path.write_text(json.dumps(GOOD) + "\n{\"messages\": [\n", encoding="utf-8")
  with pytest.raises(UserError, match=r"chats\.jsonl, line 2: not valid JSON"):
    read_conversations(path)


def test_skip_drops_bad_records_and_counts_them(tmp_path):
  path = tmp_path / "chats.jsonl"
  rows = [GOOD, BAD_RECORDS["unknown role"][0], GOOD]
  path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
  result = read_conversations(path, on_error="skip")
  assert len(result.conversations) == 2
  assert result.counts == {"bad_record": 1}
  assert "line 2" in result.problems[0]
  with pytest.raises(UserError, match="All 1 records"):
    path.write_text(json.dumps(rows[1]) + "\n", encoding="utf-8")
    read_conversations(path, on_error="skip")


def test_a_line_nested_too_deeply_is_a_bad_record_not_a_recursion_error(tmp_path):
  path = tmp_path / "chats.jsonl"
  deep = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
  path.write_text(json.dumps(GOOD) + "\n" + deep + "\n", encoding="utf-8")
  with pytest.raises(UserError, match=r"chats\.jsonl, line 2: .*nested too deeply"):
    read_conversations(path)
  result = read_conversations(path, on_error="skip")
  assert len(result.conversations) == 1 and result.counts == {"bad_record": 1}


def _broken(tmp_path, case):
  lines = (json.dumps(GOOD) + "\n").encode() * 50
  if case == "not_gzip":
    path = tmp_path / "chats.jsonl.gz"
    path.write_bytes(lines)
  elif case == "truncated_gzip":
    path = tmp_path / "chats.jsonl.gz"
    path.write_bytes(gzip.compress(lines)[:-30])
  elif case == "directory":
    path = tmp_path / "chats.jsonl"
    path.mkdir()
  elif case == "deeply_nested_json":
    path = tmp_path / "chats.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
  elif case in ("empty_jsonl", "empty_json"):
    path = tmp_path / ("chats.jsonl" if case == "empty_jsonl" else "chats.json")
    path.write_text("\n\n" if case == "empty_jsonl" else "[]", encoding="utf-8")
  return str(path)


@pytest.mark.parametrize("case, phrase", [
    ("not_gzip", "not a readable gzip file"), ("truncated_gzip", "not a readable gzip file"),
    ("directory", "is a directory"), ("deeply_nested_json", "nested too deeply"),
    ("empty_jsonl", "holds no records"), ("empty_json", "holds no records")])
def test_a_file_broken_as_a_whole_is_one_error_whatever_the_policy(tmp_path, case, phrase):
  path = _broken(tmp_path, case)
  with pytest.raises(UserError) as error:
    read_conversations(path, on_error="skip")
  assert str(error.value).startswith(path) and phrase in str(error.value)
