"""Plain text as training examples, loss on every token: pretraining data mixed in beside
instruction data, against catastrophic forgetting.

A text file holds documents separated by blank lines; a JSONL file one document per
line, in a string field ("text" by default). Each document is tokenized with EOS at
its end and cut into chunks of `chunk_length` tokens, each chunk one example trained
on every token; nothing is dropped (the last chunk of a document is simply shorter).
The chunks are made when the task is first read, so the corpus must fit in memory:
this is for the modest amount of text a finetune mixes in, not for pretraining.
"""

import dataclasses
from typing import Any, Mapping

from absl import logging
import numpy as np
import seqio

from flan_jax.data import example_source, record_files, vocabularies
from flan_jax.errors import UserError


def read_documents(path: str, field: str = "text") -> list[str]:
  """The documents in a .txt (separated by blank lines) or .jsonl file (`field` of each
  line); either may be gzipped (.gz). A broken file is one error naming it."""
  data = record_files.read_bytes(path)
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); re-encode the file "
                    "as UTF-8.") from None
  if not path.removesuffix(".gz").endswith(".jsonl"):
    return [doc.strip() for doc in text.split("\n\n") if doc.strip()]
  documents = []
  for number, record in record_files.json_lines(data):
    if isinstance(record, record_files.JsonError):
      raise UserError(f"{path}:{number}: {record}; write one JSON object per line.")
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
      raise UserError(f"{path}:{number}: needs a string field {field!r} (the document); set "
                      "field= to the name your file uses.")
    problem = record_files.value_problem(value)
    if problem:
      raise UserError(f"{path}:{number}: field {field!r} {problem}.")
    if value.strip():
      documents.append(value)
  return documents


def chunks(ids: list[int], chunk_length: int) -> list[np.ndarray]:
  return [np.asarray(ids[i:i + chunk_length], np.int32) for i in range(0, len(ids), chunk_length)]


class TextSource(example_source.ExampleSource):
  """Chunks of a text corpus, every token trained."""

  def __init__(self, path: str, vocabulary: seqio.Vocabulary, *, chunk_length: int,
               field: str = "text", salt: str = ""):
    super().__init__(salt)
    if chunk_length < 2:
      raise UserError(f"{salt}: chunk_length={chunk_length}; give at least 2 tokens.")
    self._path, self._vocabulary, self._field = path, vocabulary, field
    self._chunk_length = chunk_length
    self._chunks: list[np.ndarray] | None = None

  def _all(self) -> list[np.ndarray]:
    if self._chunks is None:  # on first use, never at registration
      documents = read_documents(self._path, self._field)
      if not documents:
        raise UserError(f"{self._path}: no documents (it is empty, or only blank lines).")
      self._chunks = [chunk for doc in documents for chunk in chunks(
          [*self._vocabulary.encode(doc), self._vocabulary.eos_id], self._chunk_length)]
      logging.info("%s: %d documents in %d chunks of up to %d tokens", self._salt,
                   len(documents), len(self._chunks), self._chunk_length)
    return self._chunks

  def count(self, split: str = "train") -> int:
    if split != "train":
      raise UserError(f"{self._salt} is plain text to train on; it has no {split!r} split.")
    return len(self._all())

  def example(self, split: str, index: int,
              sequence_length: Mapping[str, int] | None) -> dict[str, Any]:
    del split
    if sequence_length and self._chunk_length > sum(sequence_length.values()):
      raise UserError(f"{self._salt}: chunk_length={self._chunk_length} is longer than the "
                      f"run's rows ({sum(sequence_length.values())} tokens, the "
                      "TASK_FEATURE_LENGTHS); set the text task's chunk_length to at most that.")
    ids = self._all()[index]
    return example_source.weighted_example(ids, np.ones_like(ids), "")


@dataclasses.dataclass(frozen=True)
class TextTask:
  """A text corpus to mix in, as gin names it; `register` makes its seqio task once the
  run's vocabulary is known. `chunk_length` at most the run's row length."""
  name: str
  path: str
  chunk_length: int = 512
  field: str = "text"

  def register(self, vocabulary: seqio.Vocabulary) -> str:
    seqio.TaskRegistry.add(
        self.name, source=TextSource(self.path, vocabulary, chunk_length=self.chunk_length,
                                     field=self.field, salt=self.name),
        output_features=vocabularies.output_features(vocabulary), preprocessors=[])
    return self.name
