"""Record sources for seqio tasks: files, TFDS and Hugging Face, validated on read.

A task's source turns stored data into dicts of strings named by the task's own
fields (`inputs`, `targets`, `question`, ...). Three kinds:

  FileSource         JSONL, JSON (a top-level list), TSV, CSV or Parquet files per
                     split, read with `read_records`
  TfdsSource         a prepared TFDS dataset, read offline from `tfds_data_dir`
  HuggingFaceSource  a Hugging Face `datasets` dataset (optional dependency)

`read_records` reads one file: `record_formats` turns its bytes into rows (the
formats, and the places that name a record: line, element or row), and
`record_fields` makes each row the task's fields and validates it (`field_map`,
optional and list fields, on_error="raise" or "skip"). Problems of the whole file
(it is missing, a directory, a `.gz` that is corrupt or cut short: `record_files`)
always raise. Remote files are read through `tf.io.gfile`, so `gs://` paths work.

Laziness. Sources read nothing when constructed, so registering a thousand tasks
costs no I/O; the first `get_dataset` or `num_input_examples` reads and validates a
split and keeps its records in memory. Sharding takes every `num_shards`-th record
in file order before any shuffling, so hosts get disjoint shards whatever their
seeds. A list field reaches the pipeline as a 1-D string tensor of varying length
(tf.data's variable-length element, which seqio passes through untouched); it is
meant for metrics and postprocessing, templates render scalar fields.
"""

import abc
import os
import threading
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from flan_jax.data import record_files
from flan_jax.data.record_fields import ReadResult, Record, RecordSpec
from flan_jax.data.record_formats import Format, Layout
from flan_jax.errors import UserError

OnError = Literal["raise", "skip"]


def read_records(
    path: str | os.PathLike,
    *,
    fields: str | Sequence[str],
    format: Format | None = None,
    field_map: Mapping[str, str] | None = None,
    optional_fields: Sequence[str] = (),
    list_fields: Sequence[str] = (),
    on_error: OnError = "raise",
    delimiter: str | None = None,
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    json_records_key: str | None = None,
) -> ReadResult:
  """Reads and validates the records of one file (see `record_formats`, `record_fields`).

  Args:
    path: a local or `gs://` file; `.gz` is decompressed.
    fields: output fields every record must have, non-empty.
    format: jsonl, json, tsv, csv or parquet; None infers it from the extension.
    field_map: output field -> source key or dotted path (default: the field's name).
    optional_fields: output fields that may be missing or empty ("" then).
    list_fields: fields (of either kind) holding a list of strings.
    on_error: "raise" at the first bad record, or "skip" it and count it.
    delimiter: the TSV/CSV separator (default tab / comma).
    has_header: whether the TSV/CSV file's first line names the columns.
    column_names: the TSV/CSV columns in order: required without a header, and
      replacing the header's names with one.
    json_records_key: for JSON, the (dotted) key of the list of records inside a
      top-level object, e.g. "examples" for BIG-Bench Hard.
  """
  path = os.fspath(path)
  spec = RecordSpec.create(fields, optional_fields, list_fields, field_map, on_error)
  layout = Layout(format, delimiter, has_header, column_names, json_records_key)
  layout.format_of(path)  # before any I/O, as the other argument checks
  return _read_file(path, spec, layout)


def _read_file(path: str, spec: RecordSpec, layout: Layout) -> ReadResult:
  rows = layout.rows(record_files.read_bytes(path), path, spec.required_keys())
  return spec.collect(rows, path)


class _RecordSource(seqio.DataSource):
  """A seqio source over validated records held in memory, read on first use."""

  def __init__(self, splits: Iterable[str], spec: RecordSpec, caching_permitted: bool):
    super().__init__(splits=splits, caching_permitted=caching_permitted)
    self._spec = spec
    self._records: dict[str, list[Record]] = {}
    self._lock = threading.Lock()  # tf.data may build several tasks' pipelines at once

  @abc.abstractmethod
  def _read(self, split: str) -> list[Record]:
    """All valid records of a split, in a fixed order."""

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # the records are in memory, so any number of shards is a slice

  def records(self, split: str) -> list[Record]:
    """The split's validated records (read once, then cached)."""
    if split not in self.splits:
      raise UserError(f"{self!r} has no split {split!r}; its splits are {list(self.splits)}.")
    with self._lock:
      if split not in self._records:
        records = self._read(split)
        if not records:
          raise UserError(f"{self!r}: split {split!r} has no records. A task needs at least one; "
                          "check the files.")
        self._records[split] = records
      return self._records[split]

  def num_input_examples(self, split: str) -> int:
    return len(self.records(split))

  def get_dataset(
      self,
      split: str = "train",
      shuffle: bool = True,
      seed: int | None = None,
      shard_info: seqio.ShardInfo | None = None,
      *,
      sequence_length: Mapping[str, int] | None = None,  # unused, as in seqio sources
      use_cached: bool = False,  # unused
      num_epochs: int | None = 1,  # unused: seqio repeats after preprocessing
  ) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    records = self.records(split)
    if shard_info is not None:
      # By index in file order, before shuffling: shards stay disjoint whatever the seeds.
      records = records[shard_info.index::shard_info.num_shards]
    if shuffle:
      order = np.random.default_rng(seed).permutation(len(records))
      records = [records[i] for i in order]
    return _to_dataset(records, self._spec)


def _to_dataset(records: Sequence[Record], spec: RecordSpec) -> tf.data.Dataset:
  columns = {}
  for field in spec.fields + spec.optional_fields:
    values = [record[field] for record in records]
    if field in spec.list_fields:
      flat = [item for value in values for item in value]
      columns[field] = tf.RaggedTensor.from_row_lengths(
          tf.constant(flat, dtype=tf.string, shape=[len(flat)]),
          tf.constant([len(v) for v in values], dtype=tf.int64, shape=[len(values)]))
    else:
      columns[field] = tf.constant(values, dtype=tf.string, shape=[len(values)])
  dataset = tf.data.Dataset.from_tensor_slices(columns)
  if spec.list_fields:
    # Slices of a ragged column come out as ragged-rank-0 specs; passing them through a
    # map makes them plain (None,) string tensors, which seqio and every op expect.
    dataset = dataset.map(_identity, num_parallel_calls=tf.data.AUTOTUNE)
  return dataset


@tf.autograph.experimental.do_not_convert
def _identity(example):
  return dict(example)


class FileSource(_RecordSource):
  """Record files per split: `FileSource({"train": "train.jsonl"}, fields=(...))`.

  A split's value is a path, a glob pattern (`data/train-*.jsonl`) or a list of
  either; the files are read in the given order (globs sorted) and concatenated.
  Every argument but split_to_path is passed to `read_records` for each file.
  """

  def __init__(
      self,
      split_to_path: Mapping[str, str | Sequence[str]],
      *,
      fields: str | Sequence[str],
      field_map: Mapping[str, str] | None = None,
      optional_fields: Sequence[str] = (),
      list_fields: Sequence[str] = (),
      on_error: OnError = "raise",
      format: Format | None = None,
      delimiter: str | None = None,
      has_header: bool = True,
      column_names: Sequence[str] | None = None,
      json_records_key: str | None = None,
      caching_permitted: bool = True,
  ):
    if not split_to_path:
      raise UserError("FileSource needs at least one split, e.g. {'train': 'train.jsonl'}.")
    layout = Layout(format, delimiter, has_header, column_names, json_records_key)
    self._split_to_paths = {
        split: (os.fspath(paths),) if isinstance(paths, (str, os.PathLike))
        else tuple(map(os.fspath, paths))
        for split, paths in split_to_path.items()}
    for split, paths in self._split_to_paths.items():
      if not paths:
        raise UserError(f"FileSource: split {split!r} lists no files.")
      for path in paths:  # names only, no I/O: a bad extension fails at registration
        layout.format_of(path)
    spec = RecordSpec.create(fields, optional_fields, list_fields, field_map, on_error)
    super().__init__(self._split_to_paths, spec, caching_permitted)
    self._layout = layout

  def __repr__(self) -> str:
    return f"FileSource({self._split_to_paths!r}, fields={self._spec.fields!r})"

  def list_shards(self, split: str) -> Sequence[str]:
    return self._files(split)

  def _files(self, split: str) -> list[str]:
    files = []
    for path in self._split_to_paths[split]:
      if any(c in path for c in "*?["):
        matched = sorted(tf.io.gfile.glob(path))
        if not matched:
          raise UserError(f"{path}: the pattern (split {split!r}) matches no files.")
        files.extend(matched)
      else:
        files.append(path)
    return files

  def _read(self, split: str) -> list[Record]:
    records = []
    for path in self._files(split):
      records.extend(_read_file(path, self._spec, self._layout).records)
    return records


class HuggingFaceSource(_RecordSource):
  """A Hugging Face `datasets` dataset, validated like files; `datasets` stays optional.

  `splits` lists split names or maps ours to the dataset's (`{"validation":
  "test"}`). `load_kwargs` go to `datasets.load_dataset` (`data_files`,
  `cache_dir`, `revision`, ...); set HF_DATASETS_OFFLINE=1 to read only the local
  cache. `datasets` is imported on first read, so registering works without it.
  """

  def __init__(
      self,
      path: str,
      *,
      splits: Sequence[str] | Mapping[str, str],
      fields: str | Sequence[str],
      name: str | None = None,
      field_map: Mapping[str, str] | None = None,
      optional_fields: Sequence[str] = (),
      list_fields: Sequence[str] = (),
      on_error: OnError = "raise",
      load_kwargs: Mapping[str, Any] | None = None,
      caching_permitted: bool = True,
  ):
    self._split_map = dict(splits) if isinstance(splits, Mapping) else {s: s for s in splits}
    if not self._split_map:
      raise UserError(f"HuggingFaceSource({path!r}) needs at least one split.")
    spec = RecordSpec.create(fields, optional_fields, list_fields, field_map, on_error)
    super().__init__(self._split_map, spec, caching_permitted)
    self._path, self._name, self._load_kwargs = path, name, dict(load_kwargs or {})

  def __repr__(self) -> str:
    config = f", name={self._name!r}" if self._name else ""
    return f"HuggingFaceSource({self._path!r}{config}, splits={self._split_map!r})"

  def list_shards(self, split: str) -> Sequence[str]:
    return [f"{self._path}:{self._split_map[split]}"]

  def _read(self, split: str) -> list[Record]:
    try:
      import datasets  # pylint: disable=g-import-not-at-top  # optional dependency
    except ImportError:
      raise UserError(f"{self!r} needs the Hugging Face `datasets` package: "
                      "`pip install datasets`.") from None
    hf_split = self._split_map[split]
    try:
      dataset = datasets.load_dataset(self._path, self._name, split=hf_split, **self._load_kwargs)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
      raise UserError(f"{self!r}: cannot load split {hf_split!r} ({e}). Check the name, or with "
                      "HF_DATASETS_OFFLINE=1 that the dataset is in the local cache.") from None
    where = f"{self._path} {hf_split}"
    rows = ((f"{where}, row {index}", raw) for index, raw in enumerate(dataset))
    return self._spec.collect(rows, where).records


def _default_tfds_data_dir() -> str:
  home = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
  return os.environ.get("TFDS_DATA_DIR") or home  # where tfds itself looks


class TfdsSource(seqio.TfdsDataSource):
  """A TFDS dataset read offline (read_only) from `tfds_data_dir`; never downloads.

  `tfds_name` is seqio's "name[/config]:version" (the version may be a pattern,
  `1.*.*`). Construction does no I/O; the first use checks that the dataset is
  prepared in the directory and otherwise says how to get it there. Features keep
  TFDS's names and types: map them to a task's fields with a preprocessor such as
  `seqio.preprocessors.rekey`.
  """

  def __init__(
      self,
      tfds_name: str,
      *,
      tfds_data_dir: str | None = None,
      splits: Iterable[str] | Mapping[str, str] | None = None,
      caching_permitted: bool = True,
      decoders=None,
      tfds_builder_kwargs: dict[str, Any] | None = None,
  ):
    self._data_dir = tfds_data_dir or _default_tfds_data_dir()
    try:
      super().__init__(tfds_name, tfds_data_dir=self._data_dir, splits=splits,
                       caching_permitted=caching_permitted, decoders=decoders,
                       tfds_builder_kwargs=tfds_builder_kwargs, read_only=True)
    except ValueError as e:
      raise UserError(f"TfdsSource({tfds_name!r}): {e}. Write it as 'name[/config]:version', "
                      "e.g. 'glue/rte:2.0.0' or 'my_dataset:1.*.*'.") from None
    self._tfds_name = tfds_name
    self._checked = False

  def _check_prepared(self) -> None:
    if self._checked:
      return
    name, _, version = self._tfds_name.partition(":")
    base = os.path.join(self._data_dir, *name.split("/"))
    # With no config in the name, a dataset with configs lives one level deeper.
    patterns = [os.path.join(base, version, "dataset_info.json")]
    if "/" not in name:
      patterns.append(os.path.join(base, "*", version, "dataset_info.json"))
    if not any(tf.io.gfile.glob(pattern) for pattern in patterns):
      raise UserError(
          f"TFDS dataset {self._tfds_name!r} is not prepared in {self._data_dir} (looked for "
          f"{' or '.join(patterns)}). flan_jax reads TFDS offline: prepare it with `tfds build "
          f"{name.split('/')[0]} --data_dir={self._data_dir}` (add `--config=...` for a config) on "
          "a machine with network access and copy the directory here, or point tfds_data_dir "
          "(or TFDS_DATA_DIR) at where it is.")
    self._checked = True

  @property
  def splits(self):
    if not self._splits:
      self._check_prepared()
    return super().splits

  def get_dataset(self, split: str | None = None, shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, **kwargs) -> tf.data.Dataset:
    self._check_prepared()
    return super().get_dataset(split, shuffle, seed, shard_info, **kwargs)

  def num_input_examples(self, split: str) -> int | None:
    self._check_prepared()
    return super().num_input_examples(split)

  def list_shards(self, split: str) -> Sequence[str]:
    self._check_prepared()
    return super().list_shards(split)
