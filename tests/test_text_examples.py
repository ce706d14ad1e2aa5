"""Plain text mixed into instruction data: every token trained, nothing dropped, at its rate."""

import itertools
import json
import re

import numpy as np
import pytest
import seqio

from flan_jax.data import chat_examples, pipeline, task_reader, text_examples, vocabularies
from flan_jax.errors import UserError

BYTES = vocabularies.byte_vocabulary()
DOCUMENTS = [("Once upon a time there was a cat. " * 3).strip(), "The dog ran home.",
             "A short one."]


@pytest.fixture
def text_file(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("\n\n".join(DOCUMENTS) + "\n")
  return str(path)


def test_every_token_of_every_document_is_trained_once(text_file):
  source = text_examples.TextSource(text_file, BYTES, chunk_length=40, salt="t")
  examples = [source.example("train", i, {"inputs": 0, "targets": 64})
              for i in range(source.count())]
  # Chunks in order give back each document's bytes and EOS, nothing lost or repeated.
  ids = np.concatenate([e["targets"] for e in examples]).tolist()
  expected = [i for doc in DOCUMENTS for i in [*[b + 3 for b in doc.encode()], BYTES.eos_id]]
  assert ids == expected
  assert all(len(e["targets"]) <= 40 and e["targets_weights"].all() for e in examples)
  assert source.count() == sum(-(-(len(doc.encode()) + 1) // 40) for doc in DOCUMENTS)
  with pytest.raises(UserError, match="chunk_length=40 is longer than the run's rows"):
    source.example("train", 0, {"inputs": 0, "targets": 32})


def test_jsonl_documents_and_their_errors_name_the_line(tmp_path):
  good = tmp_path / "docs.jsonl"
  good.write_text("\n".join(json.dumps({"text": d}) for d in DOCUMENTS) + "\n")
  assert text_examples.read_documents(str(good)) == DOCUMENTS
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "x"}) + "\n")
  with pytest.raises(UserError, match=r"bad.jsonl:2: needs a string field 'text'"):
    text_examples.read_documents(str(bad))


def test_text_mixed_beside_conversations_at_its_rate_trains_every_token(text_file, tmp_path):
  chats = tmp_path / "chats.jsonl"
  turns = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
  chats.write_text(json.dumps({"messages": turns}) + "\n")
  chat_examples.ChatTask("mix_chat", str(chats), "chatml").register(BYTES)
  text_examples.TextTask("mix_text", text_file, chunk_length=64).register(BYTES)
  from flan_jax.data import mixtures
  mixtures.register_weighted_mixture("mix_both", {"mix_chat": 3.0, "mix_text": 1.0})
  try:
    lengths = {"inputs": 0, "targets": 128}
    stream = task_reader.mixture_examples(seqio.get_mixture_or_task("mix_both"), "train",
                                          sequence_length=lengths, seed=0)
    examples = list(itertools.islice(stream, 2000))
    text_share = np.mean([bool(e["targets_weights"].all()) for e in examples])
    assert abs(text_share - 0.25) < 0.03
    batch = next(pipeline.train_batches("mix_both", lengths, 8, seed=0))
    assert (batch["decoder_loss_weights"].sum(axis=1) > 0).all()
  finally:
    seqio.MixtureRegistry.remove("mix_both")
    seqio.TaskRegistry.remove("mix_chat")
    seqio.TaskRegistry.remove("mix_text")


@pytest.mark.parametrize("name,content,message", [
    ("corrupt.txt.gz", b"plain text, not gzip", "not a readable gzip file"),
    ("deep.jsonl", b'{"text": ' + b"[" * 100000 + b"]" * 100000 + b"}\n", "nested too deeply"),
    ("surrogate.jsonl", b'{"text": "half \\ud800 a pair"}\n', "lone UTF-16 surrogate"),
    ("folder.jsonl", None, "is a directory"),
], ids=["corrupt_gzip", "deep_json", "lone_surrogate", "directory"])
def test_a_broken_text_file_is_one_error_naming_it(tmp_path, name, content, message):
  path = tmp_path / name
  if content is None:
    path.mkdir()
  else:
    path.write_bytes(content)
  with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + message):
    text_examples.read_documents(str(path))
