"""The row readers every record file goes through: places per format, and one JSONL reader
shared by task records, conversations and text corpora."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flan_jax.data import record_files, record_formats, sources, text_examples
from flan_jax.data.conversations import read_conversations
from flan_jax.errors import UserError

REQUIRED = {"q": "q"}


def _rows(path, layout=record_formats.Layout()):
  return list(layout.rows(record_files.read_bytes(str(path)), str(path), REQUIRED))


def test_each_format_names_records_by_line_element_or_row(tmp_path):
  jsonl = tmp_path / "a.jsonl"
  jsonl.write_text('{"q": "1"}\n\n{"q": "2"}\n')
  assert _rows(jsonl) == [(f"{jsonl}, line 1", {"q": "1"}), (f"{jsonl}, line 3", {"q": "2"})]
  listed = tmp_path / "a.json"
  listed.write_text('[{"q": "1"}, {"q": "2"}]')
  assert [where for where, _ in _rows(listed)] == [f"{listed}, element 0", f"{listed}, element 1"]
  keyed = tmp_path / "k.json"
  keyed.write_text('{"examples": {"a": {"q": "1"}}}')
  assert _rows(keyed, record_formats.Layout(json_records_key="examples")) == [
      (f"{keyed} examples['a']", {"q": "1"})]
  table = tmp_path / "a.tsv"
  table.write_text("q\tr\n1\tx\n\n2\ty\n")  # the header is line 1
  assert _rows(table) == [(f"{table}, line 2", {"q": "1", "r": "x"}),
                          (f"{table}, line 4", {"q": "2", "r": "y"})]
  parquet = tmp_path / "a.parquet"
  pq.write_table(pa.Table.from_pylist([{"q": "1"}, {"q": "2"}]), str(parquet))
  assert [where for where, _ in _rows(parquet)] == [f"{parquet}, row 0", f"{parquet}, row 1"]


def test_a_row_that_cannot_be_read_comes_as_a_problem_in_its_place(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("q,r\n1,x\n2\n")
  (_, first), (where, second) = _rows(path)
  assert first == {"q": "1", "r": "x"} and where == f"{path}, line 3"
  assert isinstance(second, record_files.RecordProblem) and "1 columns, expected 2" in str(second)


def test_the_format_is_checked_from_the_name_without_reading(tmp_path):
  assert record_formats.Layout().format_of("gs://bucket/a.TSV.gz") == "tsv"
  assert record_formats.Layout(format="jsonl").format_of("a.txt") == "jsonl"
  with pytest.raises(UserError, match="column_names"):
    record_formats.Layout(has_header=False).format_of("a.csv")


def test_records_and_conversations_name_a_bad_jsonl_line_alike(tmp_path):
  path = tmp_path / "chats.jsonl"
  good = {"note": "greeting", "messages": [{"role": "user", "content": "Hi"},
                                           {"role": "assistant", "content": "Hello"}]}
  path.write_text(json.dumps(good) + '\n{"messages": [\n')
  with pytest.raises(UserError) as as_records:
    sources.read_records(path, fields="note")
  with pytest.raises(UserError) as as_conversations:
    read_conversations(path)
  assert str(as_conversations.value) == str(as_records.value)
  assert str(as_records.value).startswith(f"{path}, line 2: not valid JSON")


def test_text_documents_are_the_text_fields_read_records_reads(tmp_path):
  path = tmp_path / "corpus.jsonl"
  lines = ["\ufeff" + json.dumps({"text": "one"}), "", json.dumps({"text": "two\u2028lines"},
                                                                  ensure_ascii=False),
           json.dumps({"text": "three", "extra": [1]}) + "\r"]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  assert text_examples.read_documents(str(path)) == [
      record["text"] for record in sources.read_records(path, fields="text").records]
  assert text_examples.read_documents(str(path)) == ["one", "two\u2028lines", "three"]


def test_skipping_keeps_the_first_problems_and_raising_offers_the_way_out():
  problems = []
  for i in range(record_files.MAX_PROBLEMS + 5):
    record_files.skip_or_raise(record_files.RecordProblem(f"p{i}"), "skip", problems)
  assert problems == [f"p{i}" for i in range(record_files.MAX_PROBLEMS)]
  with pytest.raises(UserError, match=r"^p0 \(Or pass on_error='skip'"):
    record_files.skip_or_raise(record_files.RecordProblem("p0"), "raise", [])
