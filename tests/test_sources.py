"""Record sources: every format, validation messages, the skip policy, seqio plumbing."""

import gzip
import json
import logging
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flan_jax.data import sources
from flan_jax.data.templates import Template, apply_templates
from flan_jax.data.vocabularies import byte_vocabulary, output_features
from flan_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")

QA = [{"question": "What is 2+2?", "answer": "4"},
      {"question": "Capital of France?", "answer": "Paris"},
      {"question": "Opposite of hot?", "answer": "cold"}]
QA_FIELDS = {"fields": ("inputs", "targets"),
             "field_map": {"inputs": "question", "targets": "answer"}}
EXPECTED = [{"inputs": r["question"], "targets": r["answer"]} for r in QA]


def _write(path, text: str) -> str:
  path.write_text(text, encoding="utf-8")
  return str(path)


def _jsonl(path, rows) -> str:
  return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _write_format(tmp_path, format: str) -> tuple[str, dict]:
  """QA written as `format`; returns the path and any extra read_records arguments."""
  if format == "jsonl":
    return _jsonl(tmp_path / "qa.jsonl", QA), {}
  if format == "json":
    return _write(tmp_path / "qa.json", json.dumps(QA, indent=2)), {}
  if format == "tsv":
    lines = ["question\tanswer"] + [f"{r['question']}\t{r['answer']}" for r in QA]
    return _write(tmp_path / "qa.tsv", "\n".join(lines) + "\n"), {}
  if format == "tsv_no_header":
    lines = [f"{r['question']}\t{r['answer']}" for r in QA]
    return (_write(tmp_path / "qa.tsv", "\n".join(lines) + "\n"),
            {"has_header": False, "column_names": ["question", "answer"]})
  if format == "csv":
    lines = ["question,answer"] + [f'"{r["question"]}",{r["answer"]}' for r in QA]
    return _write(tmp_path / "qa.csv", "\r\n".join(lines) + "\r\n"), {}
  if format == "parquet":
    path = str(tmp_path / "qa.parquet")
    pq.write_table(pa.Table.from_pylist(QA), path)
    return path, {}
  if format == "jsonl_gz":
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in QA).encode()))
    return str(path), {}
  raise ValueError(format)


@pytest.mark.parametrize(
    "format", ["jsonl", "json", "tsv", "tsv_no_header", "csv", "parquet", "jsonl_gz"])
def test_every_format_reads_the_same_records_through_the_field_map(tmp_path, format):
  path, extra = _write_format(tmp_path, format)
  result = sources.read_records(path, **QA_FIELDS, **extra)
  assert result.records == EXPECTED
  assert (result.skipped, result.problems, result.path) == (0, [], path)


def test_format_argument_overrides_the_extension(tmp_path):
  path = _jsonl(tmp_path / "qa.txt", QA)
  with pytest.raises(UserError, match="format="):
    sources.read_records(path, **QA_FIELDS)
  assert sources.read_records(path, format="jsonl", **QA_FIELDS).records == EXPECTED


def test_nested_keys_numbers_optional_and_list_fields(tmp_path):
  # Natural-Instructions-like: several reference outputs, a nested input, a numeric id.
  path = _jsonl(tmp_path / "ni.jsonl", [
      {"id": 7, "input": {"text": "Say hi"}, "output": ["hi", "hello"]},
      {"id": 8, "input": {"text": "Say bye"}, "output": "bye", "note": "x"},
  ])
  result = sources.read_records(
      path, fields=("inputs", "targets", "id"), optional_fields=("note",),
      list_fields=("targets",), field_map={"inputs": "input.text", "targets": "output"})
  assert result.records == [
      {"inputs": "Say hi", "targets": ["hi", "hello"], "id": "7", "note": ""},
      {"inputs": "Say bye", "targets": ["bye"], "id": "8", "note": "x"},
  ]
  # A dotted index reaches into lists only; the second record's "bye" is no list.
  first_output = sources.read_records(
      path, fields=("first",), field_map={"first": "output.0"}, on_error="skip")
  assert (first_output.records, first_output.skipped) == ([{"first": "hi"}], 1)


def test_json_records_key_reaches_a_list_inside_an_object(tmp_path):
  # BIG-Bench Hard's layout: {"examples": [{"input": ..., "target": ...}]}.
  path = _write(tmp_path / "bbh.json", json.dumps(
      {"examples": [{"input": "not True", "target": "False"}]}))
  with pytest.raises(UserError, match="json_records_key='KEY'"):
    sources.read_records(path, fields=("input", "target"))
  result = sources.read_records(path, fields=("input", "target"), json_records_key="examples")
  assert result.records == [{"input": "not True", "target": "False"}]


def test_tsv_keeps_quotes_that_csv_would_strip(tmp_path):
  # FLAN's CoT TSVs start claims with a quote; TSV cells are text, not quoted values.
  path = _write(tmp_path / "creak.tsv", '"Pink Floyd" is a band.\\nTrue?\tyes\n')
  result = sources.read_records(path, fields=("q", "a"), has_header=False, column_names=["q", "a"])
  assert result.records == [{"q": '"Pink Floyd" is a band.\\nTrue?', "a": "yes"}]


def _bad_file(tmp_path, case: str) -> tuple[str, dict, str, str]:
  """(path, read arguments, expected place, expected field or phrase) for one malformed record."""
  good = json.dumps(QA[0])
  if case == "bad_json_line":
    return (_write(tmp_path / "a.jsonl", f'{good}\n{{"question": "oops",\n{good}\n'),
            QA_FIELDS, "line 2", "not valid JSON")
  if case == "not_an_object":
    return _write(tmp_path / "a.jsonl", f"{good}\n[1, 2]\n"), QA_FIELDS, "line 2", "object"
  if case == "missing_field":
    return (_jsonl(tmp_path / "a.jsonl", [QA[0], QA[1], {"question": "no answer"}]),
            QA_FIELDS, "line 3", "field 'targets' (source key 'answer') is missing")
  if case == "null_field":
    return (_jsonl(tmp_path / "a.jsonl", [QA[0], {"question": "q", "answer": None}]),
            QA_FIELDS, "line 2", "field 'targets' (source key 'answer') is null")
  if case == "wrong_type":
    rows = [QA[0], {"question": {"t": "x"}, "answer": "y"}]
    return (_write(tmp_path / "a.json", json.dumps(rows)),
            QA_FIELDS, "element 1", "field 'inputs' (source key 'question') is a dict")
  if case == "list_in_scalar_field":
    return (_jsonl(tmp_path / "a.jsonl", [QA[0], {"question": "q", "answer": ["a", "b"]}]),
            QA_FIELDS, "line 2", "list_fields")
  if case == "wrong_column_count":
    return (_write(tmp_path / "a.tsv", "question\tanswer\nq1\ta1\nq2 without a tab\nq3\ta3\n"),
            QA_FIELDS, "line 3", "1 columns, expected 2")
  if case == "empty_target":
    return (_jsonl(tmp_path / "a.jsonl", [QA[0], {"question": "q", "answer": "  \n"}]),
            QA_FIELDS, "line 2", "field 'targets' (source key 'answer') is empty")
  if case == "empty_csv_cell":
    return (_write(tmp_path / "a.csv", "question,answer\nq1,a1\n,a2\n"),
            QA_FIELDS, "line 3", "field 'inputs' (source key 'question') is empty")
  if case == "empty_list_field":
    return (_jsonl(tmp_path / "a.jsonl", [QA[0], {"question": "q", "answer": ["", " "]}]),
            {**QA_FIELDS, "list_fields": ("targets",)}, "line 2", "field 'targets'")
  # Python's json reads NaN, Infinity and 1e400 as floats that would become "nan", "inf".
  if case == "nan_number":
    return (_write(tmp_path / "a.jsonl", f'{good}\n{{"question": "q", "answer": NaN}}\n'),
            QA_FIELDS, "line 2", "field 'targets' (source key 'answer') is nan")
  if case == "overflowing_number":
    return (_write(tmp_path / "a.jsonl", f'{good}\n{{"question": 1e400, "answer": "a"}}\n'),
            QA_FIELDS, "line 2", "field 'inputs' (source key 'question') is inf")
  if case == "infinity_in_a_list_field":
    line = '{"question": "q", "answer": ["a", -Infinity]}'
    return (_write(tmp_path / "a.jsonl", f"{good}\n{line}\n"),
            {**QA_FIELDS, "list_fields": ("targets",)}, "line 2",
            "field 'targets' (source key 'answer') is -inf")
  if case == "nan_in_parquet":
    path = str(tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": 1.5},
                                         {"question": "q", "answer": float("nan")}]), path)
    return path, QA_FIELDS, "row 1", "field 'targets' (source key 'answer') is nan"
  if case == "lone_surrogate":
    line = '{"question": "q\\ud800", "answer": "a"}'  # the escape of half a surrogate pair
    return (_write(tmp_path / "a.jsonl", f"{good}\n{line}\n"), QA_FIELDS, "line 2",
            "field 'inputs' (source key 'question') holds a lone UTF-16 surrogate")
  if case == "deeply_nested_line":
    deep = "[" * 100_000 + "]" * 100_000
    return (_write(tmp_path / "a.jsonl", f'{good}\n{{"question": {deep}, "answer": "a"}}\n'),
            QA_FIELDS, "line 2", "nested too deeply")
  raise ValueError(case)


BAD_CASES = ["bad_json_line", "not_an_object", "missing_field", "null_field", "wrong_type",
             "list_in_scalar_field", "wrong_column_count", "empty_target", "empty_csv_cell",
             "empty_list_field", "nan_number", "overflowing_number", "infinity_in_a_list_field",
             "nan_in_parquet", "lone_surrogate", "deeply_nested_line"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_malformed_record_names_file_place_field_and_fix(tmp_path, case):
  path, kwargs, place, detail = _bad_file(tmp_path, case)
  with pytest.raises(UserError) as error:
    sources.read_records(path, **kwargs)
  message = str(error.value)
  assert f"{path}, {place}:" in message
  assert detail in message
  assert "on_error='skip'" in message  # the way out, when dropping bad records is fine


@pytest.mark.parametrize("case", BAD_CASES)
def test_skipping_drops_and_counts_the_bad_record_and_logs_it(tmp_path, case, caplog):
  path, kwargs, place, detail = _bad_file(tmp_path, case)
  with caplog.at_level(logging.WARNING):
    result = sources.read_records(path, **kwargs, on_error="skip")
  assert result.skipped == 1 and result.total == len(result.records) + 1
  assert len(result.problems) == 1 and place in result.problems[0] and detail in result.problems[0]
  warning = caplog.text
  assert f"skipped 1 of {result.total} records in {path}" in warning


def test_skip_counts_every_problem_but_keeps_only_the_first_twenty(tmp_path, caplog):
  rows = [QA[i % 3] if i % 4 else {"question": f"q{i}", "answer": ""} for i in range(120)]
  path = _jsonl(tmp_path / "many.jsonl", rows)
  with caplog.at_level(logging.WARNING):
    result = sources.read_records(path, **QA_FIELDS, on_error="skip")
  assert (result.skipped, len(result.records), len(result.problems)) == (30, 90, 20)
  assert f"skipped 30 of 120 records in {path}" in caplog.text
  assert "line 1: field 'targets'" in result.problems[0]


def test_skipping_every_record_is_an_error_not_an_empty_task(tmp_path):
  path = _jsonl(tmp_path / "qa.jsonl", QA)
  with pytest.raises(UserError, match=r"All 3 records .* were skipped.*'query'"):
    sources.read_records(path, fields=("query",), on_error="skip")


def test_a_header_without_a_required_column_fails_once_whatever_the_policy(tmp_path):
  path = _write(tmp_path / "qa.csv", "question,reply\nq,a\n")
  columns = r"columns: \['question', 'reply'\]"
  with pytest.raises(UserError, match=r"field 'targets' reads column 'answer'.*" + columns):
    sources.read_records(path, **QA_FIELDS, on_error="skip")
  path, _ = _write_format(tmp_path, "parquet")
  with pytest.raises(UserError, match="Parquet schema lacks"):
    sources.read_records(path, fields=("missing",))


@pytest.mark.parametrize("kwargs, message", [
    ({"fields": ("inputs",), "on_error": "ignore"}, "on_error='ignore'"),
    ({"fields": ()}, "at least one"),
    ({"fields": ("a",), "list_fields": ("b",)}, r"list_fields names \['b'\]"),
    ({"fields": ("a",), "field_map": {"b": "x"}}, r"field_map names \['b'\]"),
    ({"fields": ("a",), "has_header": False}, "column_names"),
    ({"fields": ("a",), "format": "xml"}, "format='xml'"),
])
def test_bad_arguments_fail_before_any_file_is_read(kwargs, message):
  with pytest.raises(UserError, match=message):
    sources.read_records("/nonexistent/qa.tsv", **kwargs)
  with pytest.raises(UserError, match=message):
    sources.FileSource({"train": "/nonexistent/qa.tsv"}, **kwargs)


def test_a_missing_file_or_a_jsonl_file_named_json_says_what_to_do(tmp_path):
  with pytest.raises(UserError, match="nope.jsonl: no such file"):
    sources.read_records(str(tmp_path / "nope.jsonl"), **QA_FIELDS)
  path = _write(tmp_path / "lines.json", "".join(json.dumps(r) + "\n" for r in QA))
  with pytest.raises(UserError, match=r"lines.json, line 2: .*at column 1.*format='jsonl'"):
    sources.read_records(path, **QA_FIELDS)


def test_a_lone_surrogate_fails_when_a_file_source_is_read_not_in_tensorflow(tmp_path):
  path = _write(tmp_path / "a.jsonl", '{"question": "q\\udc00", "answer": "a"}\n')
  source = sources.FileSource({"train": path}, **QA_FIELDS)
  with pytest.raises(UserError, match=r"a.jsonl, line 1: field 'inputs' .* lone UTF-16"):
    source.get_dataset("train")


def _broken_file(tmp_path, case: str) -> tuple[str, str]:
  """(path, expected phrase) for a file broken as a whole."""
  lines = "".join(json.dumps(r) + "\n" for r in QA * 50).encode()
  if case == "not_gzip":
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(lines)
    return str(path), "not a readable gzip file"
  if case == "truncated_gzip":
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(gzip.compress(lines)[:-30])
    return str(path), "not a readable gzip file"
  if case == "garbage_parquet":
    # Parquet's magic at both ends and a footer length, but no metadata in between.
    path = tmp_path / "qa.parquet"
    path.write_bytes(b"PAR1" + b"\xff" * 100 + (50).to_bytes(4, "little") + b"PAR1")
    return str(path), "not a readable Parquet file"
  if case == "directory":
    path = tmp_path / "qa.jsonl"
    path.mkdir()
    return str(path), "is a directory"
  if case == "unclosed_csv_quote":
    path = _write(tmp_path / "qa.csv", 'question,answer\nq1,a1\nq2,"a2\nq3,a3\nq4,a4\n')
    return path, "line 3: a quoted value"
  if case == "deeply_nested_json":
    return _write(tmp_path / "qa.json", "[" * 100_000 + "]" * 100_000), "nested too deeply"
  raise ValueError(case)


@pytest.mark.parametrize("case", ["not_gzip", "truncated_gzip", "garbage_parquet", "directory",
                                  "unclosed_csv_quote", "deeply_nested_json"])
def test_a_file_broken_as_a_whole_is_one_error_whatever_the_policy(tmp_path, case):
  path, phrase = _broken_file(tmp_path, case)
  # Skipping cannot help: the rest of the file is lost or was never readable.
  with pytest.raises(UserError) as error:
    sources.read_records(path, **QA_FIELDS, on_error="skip")
  assert str(error.value).startswith(path) and phrase in str(error.value)


def test_file_source_reads_nothing_until_used(tmp_path):
  missing = str(tmp_path / "later.jsonl")
  source = sources.FileSource({"train": missing}, **QA_FIELDS)  # no file yet: fine
  with pytest.raises(UserError, match="later.jsonl: no such file"):
    source.get_dataset("train")
  _jsonl(tmp_path / "later.jsonl", QA)
  assert source.num_input_examples("train") == 3


def test_file_source_counts_records_after_validation(tmp_path):
  path = _jsonl(tmp_path / "qa.jsonl", QA + [{"question": "q", "answer": ""}])
  source = sources.FileSource({"train": [path, path]}, **QA_FIELDS, on_error="skip")
  assert source.num_input_examples("train") == 6
  assert source.list_shards("train") == [path, path]
  with pytest.raises(UserError, match=r"no split 'test'.*\['train'\]"):
    source.num_input_examples("test")


def test_shards_are_disjoint_and_cover_the_split_whatever_the_seeds(tmp_path):
  rows = [{"question": f"q{i}", "answer": str(i)} for i in range(10)]
  source = sources.FileSource({"train": _jsonl(tmp_path / "qa.jsonl", rows)}, **QA_FIELDS)

  def shard(index, seed):
    dataset = source.get_dataset("train", seed=seed, shard_info=seqio.ShardInfo(index, 3))
    return {e["targets"].decode() for e in dataset.as_numpy_iterator()}

  shards = [shard(index, seed) for index, seed in enumerate([1, 2, None])]
  assert [len(s) for s in shards] == [4, 3, 3]
  assert set.union(*shards) == {str(i) for i in range(10)} and sum(map(len, shards)) == 10

  def order(seed):
    return [e["targets"] for e in source.get_dataset("train", seed=seed).as_numpy_iterator()]

  assert order(5) == order(5) != order(6)
  unshuffled = source.get_dataset("train", shuffle=False).as_numpy_iterator()
  assert [e["targets"].decode() for e in unshuffled] == [str(i) for i in range(10)]


def test_list_fields_become_variable_length_string_vectors(tmp_path):
  path = _jsonl(tmp_path / "ni.jsonl", [{"input": "a", "output": ["x", "y"]},
                                        {"input": "b", "output": ["z"]}])
  source = sources.FileSource({"train": path}, fields=("input", "output"), list_fields=("output",))
  dataset = source.get_dataset("train", shuffle=False)
  assert dataset.element_spec["output"] == tf.TensorSpec([None], tf.string)
  assert [list(e["output"]) for e in dataset.as_numpy_iterator()] == [[b"x", b"y"], [b"z"]]


@pytest.fixture
def registered_task(tmp_path):
  name = "sources_test_capitals"
  split_to_path = {"train": _jsonl(tmp_path / "train.jsonl", QA),
                   "validation": _write_format(tmp_path, "csv")[0]}
  seqio.TaskRegistry.add(
      name,
      source=sources.FileSource(split_to_path, fields=("question", "answer")),
      preprocessors=[
          apply_templates([Template("Q: {question}", "{answer}")]),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=output_features(byte_vocabulary()))
  yield name
  seqio.TaskRegistry.remove(name)


def test_file_source_feeds_a_seqio_task(registered_task):
  task = seqio.get_mixture_or_task(registered_task)
  assert task.num_input_examples("train") == 3
  for split in ("train", "validation"):
    examples = list(task.get_dataset(None, split=split, shuffle=False).as_numpy_iterator())
    assert [e["inputs_pretokenized"].decode() for e in examples] == [
        f"Q: {r['question']}" for r in QA]
    assert [e["targets_pretokenized"].decode() for e in examples] == [r["answer"] for r in QA]
    assert all(e["targets"][-1] == 1 for e in examples)  # EOS


def test_tfds_source_reads_a_prepared_dataset_offline(tmp_path):
  data_dir = str(tmp_path / "tfds")
  _build_tiny_tfds(data_dir)
  source = sources.TfdsSource("tiny_qa:1.0.0", tfds_data_dir=data_dir)
  assert source.num_input_examples("train") == 3
  records = list(source.get_dataset("train", shuffle=False).as_numpy_iterator())
  assert sorted(r["answer"] for r in records) == [b"a0", b"a1", b"a2"]
  assert set(sources.TfdsSource("tiny_qa:1.*.*", tfds_data_dir=data_dir).splits) == {
      "train", "validation"}


def test_tfds_source_says_where_it_looked_and_how_to_prepare(tmp_path):
  source = sources.TfdsSource("glue/rte:2.0.0", tfds_data_dir=str(tmp_path))  # no I/O yet
  with pytest.raises(UserError) as error:
    source.get_dataset("train")
  message = str(error.value)
  assert f"not prepared in {tmp_path}" in message and "tfds build glue" in message
  with pytest.raises(UserError, match="version"):
    sources.TfdsSource("glue/rte", tfds_data_dir=str(tmp_path))


def _build_tiny_tfds(data_dir: str) -> None:
  """Writes tiny_qa:1.0.0 with a throwaway builder, as `tfds build` would, without network."""
  tfds.disable_progress_bar()
  # Unregistered, so reading goes through the files alone, as for a copied data dir.
  with tfds.core.registered.skip_registration():
    class TinyQa(tfds.core.GeneratorBasedBuilder):
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"question": tfds.features.Text(), "answer": tfds.features.Text()}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(3), "validation": self._generate_examples(1)}

      def _generate_examples(self, n):
        for i in range(n):
          yield i, {"question": f"q{i}", "answer": f"a{i}"}

  TinyQa(data_dir=data_dir).download_and_prepare()


def test_hugging_face_source_needs_datasets_only_when_read(monkeypatch):
  source = sources.HuggingFaceSource("gsm8k", name="main", splits=["train"],
                                     fields=("question", "answer"))
  monkeypatch.setitem(sys.modules, "datasets", None)  # as if the package were absent
  with pytest.raises(UserError, match="pip install datasets"):
    source.num_input_examples("train")


def test_hugging_face_source_reads_local_files_offline_and_validates(tmp_path, monkeypatch):
  pytest.importorskip("datasets")
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  data = tmp_path / "qa.jsonl"
  data.write_text("\n".join(json.dumps(r) for r in [
      {"q": "2+2?", "a": "4"}, {"q": "3+3?", "a": "6"}, {"q": "no answer here", "a": ""}]))
  source = sources.HuggingFaceSource(
      "json", splits={"train": "train"}, fields=("question", "answer"),
      field_map={"question": "q", "answer": "a"}, on_error="skip",
      load_kwargs={"data_files": {"train": str(data)}, "cache_dir": str(tmp_path / "cache")})
  assert source.num_input_examples("train") == 2  # the empty answer is skipped and counted
  assert [r["answer"] for r in source.records("train")] == ["4", "6"]
  strict = sources.HuggingFaceSource(
      "json", splits=["train"], fields=("question", "answer"), field_map={"question": "q", "answer": "a"},
      load_kwargs={"data_files": {"train": str(data)}, "cache_dir": str(tmp_path / "cache")})
  with pytest.raises(UserError, match=r"row 2.*answer"):
    strict.num_input_examples("train")


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="needs ../shared/data")
def test_real_files_read_cleanly():
  def read(relative, **kwargs):
    return sources.read_records(os.path.join(SHARED_DATA, relative), **kwargs)

  gsm8k = read("eval/gsm8k/test.jsonl", fields=("question", "answer"))
  assert gsm8k.total == 1319 and "####" in gsm8k.records[0]["answer"]
  cot = read("cot/flan_cot_data/gsm8k_train.tsv", fields=("question", "answer", "rationale"),
             has_header=False, column_names=["question", "answer", "rationale"])
  assert cot.total == 7473 and cot.records[0]["answer"] == "72"
  mmlu = read("eval/mmlu/dev/anatomy_dev.csv", fields=("question", "choice0", "choice3", "answer"))
  assert mmlu.total == 5 and all(r["answer"] in "0123" for r in mmlu.records)
  alpaca = read("instruct/alpaca/alpaca_en_demo_llamafactory.json",
                fields=("instruction", "output"), optional_fields=("input",))
  assert alpaca.total == 1000 and alpaca.skipped == 0
