"""Python-read FLAN tasks equal seqio's pipelines; mixing follows the rates, per seed and shard."""

import collections
import contextlib
import itertools
import signal
import time

import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax.data import task_reader
from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.templates import Template
from flan_jax.data.vocabularies import byte_vocabulary, output_features
from flan_jax.errors import UserError

RECORDS = {
    "train": [{"question": f"What is {i} plus {i}?", "answer": str(2 * i),
               "options": [str(2 * i), str(2 * i + 1)]} for i in range(30)],
    "validation": [{"question": f"Is {i} small?", "answer": "yes" if i < 5 else "no",
                    "options": ["yes", "no"]} for i in range(12)],
}
TEMPLATES = (Template("Q: {question}", "{answer}"), Template("{question} Answer briefly.", "{answer}"))
LENGTHS = {"inputs": 48, "targets": 8}


@pytest.fixture(scope="module")
def tasks():
  names = register_flan_task(FlanTaskSpec(
      name="reader_toy", cluster="toy", records=lambda split: RECORDS[split], templates=TEMPLATES,
      options="options", few_shot_k=3, vocabulary=byte_vocabulary()))
  # A task seqio must read itself: its own source and preprocessors.
  seqio.TaskRegistry.add(
      "reader_plain",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": [f"plain {i}" for i in range(20)], "targets": ["x"] * 20}),
          splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=output_features(byte_vocabulary()))
  yield names
  for name in [*names.values(), "reader_plain"]:
    seqio.TaskRegistry.remove(name)
  seqio.MixtureRegistry.remove("reader_toy")


def _text(value):
  return value.decode() if isinstance(value, bytes) else value


def _seqio_examples(task, split, seed, shard_info=None):
  dataset = task.get_dataset(LENGTHS, split=split, shuffle=False, seed=seed, shard_info=shard_info,
                             use_cached=False, trim_output_features=False)
  return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize("variant", ["zs_noopt", "zs_opt_random", "fs_opt"])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_python_examples_equal_seqio_pipeline(tasks, variant, split):
  task = seqio.get_mixture_or_task(tasks[variant])
  assert task_reader.python_readable(task)
  shard = seqio.ShardInfo(1, 2)
  ours = list(task_reader.task_examples(task, split, sequence_length=LENGTHS, seed=7,
                                        shuffle=False, shard_info=shard))
  theirs = _seqio_examples(task, split, seed=7, shard_info=shard)
  assert len(ours) == len(theirs) == len(RECORDS[split]) // 2
  for a, b in zip(ours, theirs):
    assert set(a) == set(b)
    for key in a:
      if isinstance(b[key], np.ndarray):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
      else:
        assert _text(a[key]) == _text(b[key]), key


def test_few_shot_choice_keeps_the_most_exemplars_that_fit():
  assert task_reader.few_shot_choice([90, 60, 30, 10], 61) == 1  # 60 + EOS fits in 61
  assert task_reader.few_shot_choice([90, 60, 30, 10], 60) == 2
  assert task_reader.few_shot_choice([90, 60, 30, 10], 5) == 3  # none fits: zero-shot
  assert task_reader.few_shot_choice([90, 60], None) == 0


def test_epochs_are_reshuffled_permutations(tasks):
  task = seqio.get_mixture_or_task(tasks["zs_noopt"])
  stream = task_reader.task_examples(task, "train", sequence_length=LENGTHS, seed=0,
                                     num_epochs=None)
  first, second = ([_text(e["inputs_pretokenized"]) for e in itertools.islice(stream, 30)]
                   for _ in range(2))
  assert first != second and sorted(first) == sorted(second)
  assert len(set(first)) == 30


def test_seqio_reads_tasks_with_other_preprocessors(tasks):
  task = seqio.get_mixture_or_task("reader_plain")
  assert not task_reader.python_readable(task)
  examples = list(task_reader.task_examples(task, "train", sequence_length=LENGTHS, seed=0,
                                            shuffle=False))
  assert [_text(e["inputs_pretokenized"]) for e in examples] == [f"plain {i}" for i in range(20)]


def test_mixture_draws_at_its_rates_deterministically(tasks):
  mixture = seqio.Mixture("reader_mix", [(tasks["zs_noopt"], 3.0), ("reader_plain", 1.0)])

  def draw(seed, shard=None):
    stream = task_reader.mixture_examples(mixture, "train", sequence_length=LENGTHS, seed=seed,
                                          shard_info=shard)
    return [_text(e["inputs_pretokenized"]) for e in itertools.islice(stream, 4000)]

  drawn = draw(0)
  share = sum(not text.startswith("plain") for text in drawn) / len(drawn)
  assert abs(share - 0.75) < 0.03
  assert draw(0)[:200] == drawn[:200] and draw(1)[:200] != drawn[:200]
  # Two hosts read disjoint shards of each task.
  host0, host1 = (collections.Counter(draw(0, seqio.ShardInfo(i, 2))[:400]) for i in range(2))
  assert not set(host0) & set(host1)


@contextlib.contextmanager
def _fails_after(seconds):
  """An endless loop fails the test instead of hanging it."""
  def timeout(*_):
    raise TimeoutError(f"still running after {seconds} s")
  previous = signal.signal(signal.SIGALRM, timeout)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_host_without_examples_is_an_error_not_an_endless_loop():
  names = register_flan_task(FlanTaskSpec(
      name="reader_one", cluster="toy", records=lambda split: RECORDS[split][:1],
      templates=TEMPLATES, few_shot=False, vocabulary=byte_vocabulary()))
  try:
    task = seqio.get_mixture_or_task(names["zs_noopt"])
    stream = task_reader.task_examples(task, "train", sequence_length=LENGTHS, seed=0,
                                       shard_info=seqio.ShardInfo(1, 2), num_epochs=None)
    with _fails_after(20), pytest.raises(UserError, match="no 'train' examples for host 1 of 2"):
      next(stream)
  finally:
    for name in names.values():
      seqio.TaskRegistry.remove(name)
    seqio.MixtureRegistry.remove("reader_one")


def test_mixtures_leave_out_tasks_without_the_split(tasks):
  seqio.TaskRegistry.add(
      "reader_test_only",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
              {"inputs": ["held-out test question"], "targets": ["x"]}),
          splits=["test"]),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features=output_features(byte_vocabulary()))
  try:
    mixture = seqio.Mixture("reader_mix_test", [(tasks["zs_noopt"], 1.0), ("reader_test_only", 1.0)])
    stream = task_reader.mixture_examples(mixture, "train", sequence_length=LENGTHS, seed=0)
    drawn = [_text(e["inputs_pretokenized"]) for e in itertools.islice(stream, 200)]
    assert not any("held-out" in text for text in drawn)  # never trains on a test split
    with pytest.raises(UserError, match="no task with a 'train' split"):
      next(task_reader.mixture_examples(seqio.Mixture("reader_only_test", ["reader_test_only"],
                                                      default_rate=1.0),
                                        "train", sequence_length=LENGTHS, seed=0))
  finally:
    seqio.TaskRegistry.remove("reader_test_only")



def test_a_mixture_stream_restarts_from_its_saved_state_over_epochs(tasks):
  # 30 + 20 records: 3,000 draws wrap every task's epochs many times and cross the
  # blocks of task choices; the state goes through JSON as it does on disk.
  import json
  mixture = seqio.Mixture("reader_mix_resume", [(tasks["zs_noopt"], 3.0), ("reader_plain", 1.0)])
  texts = lambda stream, n: [_text(e["inputs_pretokenized"]) for e in itertools.islice(stream, n)]
  straight = task_reader.mixture_examples(mixture, "train", sequence_length=LENGTHS, seed=4)
  texts(straight, 3000)
  state = json.loads(json.dumps(straight.state()))
  expected = texts(straight, 200)
  resumed = task_reader.mixture_examples(mixture, "train", sequence_length=LENGTHS, seed=4,
                                         state=state)
  assert texts(resumed, 200) == expected
  with pytest.raises(UserError, match="resume with the same mixture"):
    task_reader.mixture_examples(seqio.get_mixture_or_task(tasks["zs_noopt"]), "train",
                                 sequence_length=LENGTHS, seed=4, state=state)


def test_packed_batches_restart_from_their_saved_state():
  import json
  import flan_jax_tasks.default_mixture  # noqa: F401
  from flan_jax.data.pipeline import train_batches
  lengths = {"inputs": 96, "targets": 32}
  straight = train_batches("default_train", lengths, 8, seed=0)
  for _ in range(25):
    next(straight)
  state = json.loads(json.dumps(straight.state()))
  assert state["packer"]["open"]  # rows in the making travel with the state
  expected = [next(straight) for _ in range(10)]
  # Resumed with data workers: the same batches as the straight run without them.
  resumed = train_batches("default_train", lengths, 8, seed=0, state=state, workers=2)
  for ours, theirs in zip([next(resumed) for _ in range(10)], expected):
    assert ours.keys() == theirs.keys()
    for key in ours:
      np.testing.assert_array_equal(ours[key], theirs[key])
  replayed = train_batches("default_train", lengths, 8, seed=0, skip_batches=25)
  np.testing.assert_array_equal(next(replayed)["decoder_input_tokens"],
                                expected[0]["decoder_input_tokens"])


def test_workers_render_the_same_examples_and_states_in_the_same_order(tasks):
  import json
  import multiprocessing
  import os
  from flan_jax.data.workers import ParallelExamples
  # A task rendered in Python (by the workers) and one seqio reads (in this process).
  mixture = seqio.Mixture("reader_mix_workers", [(tasks["fs_opt"], 3.0), ("reader_plain", 1.0)])
  stream = lambda state=None: task_reader.mixture_examples(
      mixture, "train", sequence_length=LENGTHS, seed=2, state=state)
  alone, parallel = stream(), ParallelExamples(stream(), workers=2)
  for n in range(400):
    if n == 150:  # a stop signal is the trainer's to handle: workers ignore it
      workers = multiprocessing.active_children()
      for worker in workers:
        os.kill(worker.pid, signal.SIGTERM)
      time.sleep(0.5)
      assert len(workers) == 2 and all(worker.is_alive() for worker in workers)
    ours, theirs = next(parallel), next(alone)
    assert _text(ours["inputs_pretokenized"]) == _text(theirs["inputs_pretokenized"])
    np.testing.assert_array_equal(ours["targets"], theirs["targets"])
    if n % 50 == 0:
      assert parallel.state() == alone.state()
  # Its state resumes a stream without workers where the one with workers goes on.
  resumed = stream(json.loads(json.dumps(parallel.state())))
  expected = [_text(e["inputs_pretokenized"]) for e in itertools.islice(parallel, 50)]
  assert [_text(e["inputs_pretokenized"]) for e in itertools.islice(resumed, 50)] == expected
  parallel.close()


def test_a_killed_worker_is_one_error_and_live_workers_do_not_hold_up_the_exit(tasks):
  import multiprocessing
  import os
  import subprocess
  import sys
  from flan_jax.data.workers import ParallelExamples
  parallel = ParallelExamples(task_reader.mixture_examples(
      seqio.get_mixture_or_task(tasks["zs_noopt"]), "train", sequence_length=LENGTHS, seed=0),
      workers=2)
  next(parallel)
  for worker in multiprocessing.active_children():
    os.kill(worker.pid, signal.SIGKILL)
  with _fails_after(60), pytest.raises(UserError, match="data worker process died"):
    for _ in range(1000):  # past the chunks rendered before the kill
      next(parallel)
  # Workers die with a parent killed outright (no stop message reaches them).
  script = ("import multiprocessing, time, flan_jax_tasks.default_mixture\n"
            "from flan_jax.data import pipeline\n"
            "stream = pipeline.train_batches('default_train', {'inputs': 96, 'targets': 32}, 8,"
            " seed=0, workers=2)\n"
            "next(stream)\n"
            "print(*[w.pid for w in multiprocessing.active_children()], flush=True)\n"
            "time.sleep(300)\n")
  parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
  try:
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(pids) == 2
  finally:
    parent.kill()
    parent.wait()

  def alive(pid):
    try:
      with open(f"/proc/{pid}/status") as status:
        return "\tZ" not in status.read()  # a zombie has exited
    except FileNotFoundError:
      return False

  deadline = time.time() + 10
  while any(map(alive, pids)) and time.time() < deadline:
    time.sleep(0.1)
  assert not any(map(alive, pids))
