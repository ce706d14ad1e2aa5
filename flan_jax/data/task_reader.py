"""A task's or mixture's tokenized examples, as Python dicts: what training and evaluation read.

seqio builds a tf.data pipeline per task, and for the tasks `register_flan_task` makes
that costs ~0.35 s of graph tracing each while all their work happens in Python
anyway: the source renders templates, and the preprocessors (`flan_task.PREPROCESSORS`:
pick the few-shot prompt that fits, tokenize, append EOS) are one-example functions.
A 100-task mixture spent most of the quickstart's start-up building pipelines. So
those tasks are read here in Python, by the same steps; a test checks that, read in
order (shuffle=False), the examples equal seqio's `task.get_dataset`, field for
field. Shuffled reads differ from seqio's in order only: seqio adds a 16-example
shuffle buffer and, for small tasks, replays its cached first epoch, where this
reshuffles every epoch by seed. Any other task (TFDS, files with
their own preprocessors) is read through seqio, unchanged.

Mixing is done here too, for every mixture: each draw picks a task with probability
proportional to its seqio mixture rate, from a generator seeded by `seed`, and takes
that task's next example. Each task's stream is endless (epochs reshuffled by seed)
and built only when first drawn. The stream is deterministic for (seed, shard), as
resuming requires, though not the same sequence as seqio's `sample_from_datasets`.
"""

import itertools
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np
import seqio

from flan_jax.data import example_source, flan_task
from flan_jax.errors import UserError

Example = dict[str, Any]
_DRAWS_PER_CALL = 1024  # tasks are chosen in blocks: one numpy call per block


def python_readable(task: seqio.Task) -> bool:
  """Whether the task renders in Python: FLAN's standard preprocessors, or a source that
  makes its examples itself (conversations, plain text)."""
  return ((isinstance(task.source, flan_task.RenderedSource)
           and tuple(task.preprocessors) == flan_task.PREPROCESSORS)
          or (isinstance(task.source, example_source.ExampleSource) and not task.preprocessors))


def few_shot_choice(candidate_lengths, inputs_length: int | None) -> int:
  """Index of the prompt with the most exemplars whose tokens and EOS fit (the last if none).

  The rule of `flan_task.fit_few_shot_to_length`, which applies it in TensorFlow.
  """
  if inputs_length is None:
    return 0
  for index, length in enumerate(candidate_lengths):
    if length + 1 <= inputs_length:
      return index
  return len(candidate_lengths) - 1


def preprocess(task: seqio.Task, example: Example,
               sequence_length: Mapping[str, int] | None) -> Example:
  """`flan_task.PREPROCESSORS` on one rendered example, in Python."""
  example = dict(example)
  candidates = example.pop("inputs_candidates", None)
  candidate_lengths = example.pop("inputs_candidate_lengths", None)
  if candidates is not None:
    inputs_length = sequence_length.get("inputs") if sequence_length else None
    example["inputs"] = candidates[few_shot_choice(candidate_lengths, inputs_length)]
  for name, feature in task.output_features.items():
    if name not in example:
      continue
    text = example[name]
    ids = feature.vocabulary.encode(text)
    if feature.add_eos:
      ids = [*ids, feature.vocabulary.eos_id]
    example[f"{name}_pretokenized"] = text
    example[name] = np.asarray(ids, np.int32)
  return example


def task_examples(task: seqio.Task, split: str, *, sequence_length: Mapping[str, int] | None,
                  seed: int | None, shuffle: bool = True,
                  shard_info: seqio.ShardInfo | None = None,
                  num_epochs: int | None = 1, start: int = 0) -> Iterator[Example]:
  """The task's preprocessed, untrimmed examples; `num_epochs=None` repeats forever.

  `start` skips that many examples of the stream. For FLAN tasks read in Python it
  costs nothing (only record indices are skipped, nothing is rendered); other tasks
  read and drop them. A split or shard with no examples at all is an error: repeating
  it would never yield.
  """
  if split not in task.splits:
    raise UserError(f"Task {task.name!r} has no {split!r} split (it has {list(task.splits)}).")
  if not python_readable(task):
    dataset = task.get_dataset(dict(sequence_length) if sequence_length else None, split=split,
                               shuffle=shuffle, seed=seed, shard_info=shard_info,
                               num_epochs=num_epochs, use_cached=False,
                               trim_output_features=False)
    yield from itertools.islice(dataset.as_numpy_iterator(), start, None)
    return
  for index in _record_indices(task, split, seed=seed, shuffle=shuffle, shard_info=shard_info,
                                num_epochs=num_epochs, start=start):
    example = render(task, split, index, seed, sequence_length)
    if example is not None:
      yield example


def _record_indices(task: seqio.Task, split: str, *, seed: int | None, shuffle: bool,
                    shard_info: seqio.ShardInfo | None, num_epochs: int | None,
                    start: int) -> Iterator[int]:
  """The record indices a task read in Python renders, in order (cheap: no rendering)."""
  source = task.source
  epochs = itertools.count() if num_epochs is None else range(num_epochs)
  for epoch in epochs:
    indices = source.indices(split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                             epoch=epoch)
    if not indices:
      raise UserError(_no_examples(task, split, shard_info))
    if start >= len(indices):  # every epoch has the same length: skip it whole
      start -= len(indices)
      continue
    yield from indices[start:]
    start = 0


def render(task: seqio.Task, split: str, index: int, seed: int | None,
           sequence_length: Mapping[str, int] | None) -> Example | None:
  """Record `index` of a task read in Python, rendered and preprocessed (None: a
  conversation with nothing left to train at these lengths)."""
  if isinstance(task.source, example_source.ExampleSource):
    return task.source.example(split, index, sequence_length)
  return preprocess(task, task.source.render(split, index, seed), sequence_length)


def _no_examples(task: seqio.Task, split: str, shard_info: seqio.ShardInfo | None) -> str:
  where = f" for host {shard_info.index} of {shard_info.num_shards}" if shard_info else ""
  return (f"Task {task.name!r} has no {split!r} examples{where}: give it records, or leave it "
          "out of the mixture (a task needs at least one example per host).")


def mixture_examples(mixture_or_task: seqio.Task | seqio.Mixture, split: str, *,
                     sequence_length: Mapping[str, int], seed: int,
                     shard_info: seqio.ShardInfo | None = None,
                     state: Mapping[str, Any] | None = None) -> "MixtureStream":
  """An endless stream of the mixture's examples at its rates (a task's, for a task).

  Every host draws the same task sequence and reads its own shard of each task. The
  stream's `state()` (a JSON-able dict) restarts it where it stood (`state=`), at the
  cost of replaying the random task choices, not of rendering the examples.
  """
  if isinstance(mixture_or_task, seqio.Task):
    tasks, rates = [mixture_or_task], np.ones(1)
  else:
    tasks = [t for t in mixture_or_task.tasks if mixture_or_task.get_rate(t) > 0]
    # As seqio's Mixture.get_dataset: tasks without the split are left out (evaluation-
    # only tasks such as BBH have only "test"), with a warning.
    missing = [t.name for t in tasks if split not in t.splits]
    if missing:
      logging.warning("%s: %d task(s) have no %r split and are left out: %s",
                      mixture_or_task.name, len(missing), split, ", ".join(missing[:10]))
    tasks = [t for t in tasks if split in t.splits]
    rates = np.array([mixture_or_task.get_rate(t) for t in tasks], np.float64)
  if not tasks:
    raise UserError(f"{mixture_or_task.name} has no task with a {split!r} split and a "
                    "positive rate.")
  return MixtureStream(mixture_or_task.name, tasks, rates / rates.sum(), split,
                       sequence_length, seed, shard_info, state)


class MixtureStream:
  """The iterator `mixture_examples` returns: examples, and the state to restart from."""

  def __init__(self, name, tasks, probabilities, split, sequence_length, seed, shard_info,
               state=None):
    self._name, self._tasks, self._probabilities = name, tasks, probabilities
    self._split, self._lengths, self._seed, self._shard_info = (
        split, sequence_length, seed, shard_info)
    self._rng = np.random.default_rng(seed)
    self._draws = 0  # task choices made so far
    self._taken = {t.name: 0 for t in tasks}  # examples read from each task
    self._streams: dict[int, Iterator] = {}  # record indices, or examples seqio reads
    self._in_python = [python_readable(task) for task in tasks]
    self._block: np.ndarray = np.zeros(0, np.int64)
    self._block_rng = None
    if state:
      self._restore(state)

  def _restore(self, state: Mapping[str, Any]) -> None:
    if state.get("mixture") != self._name or set(state["taken"]) != set(self._taken):
      raise UserError(f"The saved data position is for {state.get('mixture')!r} with other "
                      f"tasks than {self._name!r} has now; resume with the same mixture.")
    self._taken = dict(state["taken"])
    self._draws = int(state["draws"])
    if state["block_rng"] is not None:  # redraw the current block of choices, then cut it
      self._rng.bit_generator.state = state["block_rng"]
      self._next_block()
      self._block = self._block[state["block_used"]:]

  def _next_block(self) -> None:
    # The generator's state before the block: with the block's used count, all a
    # restart needs to draw the same choices again.
    self._block_rng = self._rng.bit_generator.state
    self._block = self._rng.choice(len(self._tasks), size=_DRAWS_PER_CALL, p=self._probabilities)

  def state(self) -> dict[str, Any]:
    return {"mixture": self._name, "draws": self._draws, "taken": dict(self._taken),
            "block_rng": self._block_rng, "block_used": _DRAWS_PER_CALL - len(self._block)}

  def __iter__(self) -> "MixtureStream":
    return self

  def __next__(self) -> Example | None:
    return self.read(*self.draw())

  def draw(self) -> tuple[int, int | None]:
    """Chooses the next example: (task, record index), or (task, None) for a task seqio
    reads, whose examples come in stream order. All the stream's randomness is here;
    `read` is a pure function of the draw, so workers can render draws (`workers`)."""
    if not len(self._block):
      self._next_block()
    choice, self._block = int(self._block[0]), self._block[1:]
    self._draws += 1
    task = self._tasks[choice]
    if choice not in self._streams:
      where = dict(seed=self._seed, shuffle=True, shard_info=self._shard_info, num_epochs=None,
                   start=self._taken[task.name])
      self._streams[choice] = (
          _record_indices(task, self._split, **where) if self._in_python[choice]
          else task_examples(task, self._split, sequence_length=self._lengths, **where))
    self._taken[task.name] += 1
    return choice, next(self._streams[choice]) if self._in_python[choice] else None

  def read(self, choice: int, index: int | None) -> Example | None:
    """The example `draw` chose (None: a conversation with nothing to train, which the
    packer counts)."""
    task = self._tasks[choice]
    if index is not None:
      return render(task, self._split, index, self._seed, self._lengths)
    example = next(self._streams[choice], None)
    if example is None:  # a stream seqio reads ended: it had no examples at all
      raise UserError(_no_examples(task, self._split, self._shard_info))
    return example
