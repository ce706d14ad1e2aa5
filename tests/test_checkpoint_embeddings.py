"""Curation's checkpoint embeddings equal transformers' mean-pooled last hidden state.

The real pretrained stories260K (a tiny Llama, ../shared/data) read by flan_jax and
by transformers' LlamaModel from the same token ids: the mean over the text's tokens
of the final-norm hidden states must agree, padding and batching notwithstanding.
And `python -m flan_jax.curate --checkpoint=...` must select by those vectors: its
kept records equal k-center greedy (written out in the test) over them, which differ
from what TF-IDF would keep.
"""

import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
TEXTS = ["Once upon a time there was a little dog.", "The sun was hot.",
         "Lily went to the park with her mom and saw a big red ball under a tree."]


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
def test_mean_pooled_hidden_states_match_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from flan_jax.checkpoint_embeddings import checkpoint_embeddings
  from flan_jax.data import vocabularies
  ours = checkpoint_embeddings(STORIES, TEXTS, max_length=32, batch_size=2)
  vocabulary = vocabularies.library_vocabulary(None, STORIES)
  model = transformers.AutoModel.from_pretrained(STORIES, dtype=torch.float32).eval()
  bos = model.config.bos_token_id
  for text, row in zip(TEXTS, ours):
    ids = torch.tensor([[bos, *vocabulary.encode(text)]])
    with torch.no_grad():
      hidden = model(input_ids=ids).last_hidden_state[0]
    np.testing.assert_allclose(row, hidden.mean(0).numpy(), atol=2e-5, rtol=2e-4)
  assert ours.shape == (3, model.config.hidden_size)


RECORDS = [  # three themes, four records each: enough for k-center to have choices
    ("Tell a story about a dog.", "The dog ran in the park and found a big stick."),
    ("Tell a story about a puppy.", "The puppy barked at the ball and wagged its tail."),
    ("Write about a cat.", "The cat slept in the sun by the window all day."),
    ("Write about a kitten.", "The kitten played with a red ball of yarn."),
    ("What is the sum of 12 and 30?", "12 plus 30 is 42."),
    ("Compute 7 times 8.", "7 times 8 is 56."),
    ("What is 100 minus 37?", "100 minus 37 is 63."),
    ("Divide 81 by 9.", "81 divided by 9 is 9."),
    ("Translate 'good morning' into French.", "Bonjour."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
    ("Translate 'goodbye' into German.", "Auf Wiedersehen."),
    ("Translate 'please' into Italian.", "Per favore."),
]


def _k_center(vectors: np.ndarray, k: int) -> list[int]:
  """Farthest-first over cosine distance from the row nearest the mean, written out here."""
  unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  chosen = [int(np.argmax(unit @ unit.mean(0)))]
  while len(chosen) < k:
    nearest = [min(1 - unit[i] @ unit[c] for c in chosen) for i in range(len(unit))]
    for c in chosen:
      nearest[c] = -np.inf
    chosen.append(int(np.argmax(nearest)))
  return sorted(chosen)


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
def test_curate_command_selects_by_the_checkpoint_hidden_states(tmp_path):
  """`python -m flan_jax.curate --checkpoint=...`: the kept records are k-center over the
  checkpoint's embeddings (not TF-IDF's), and the report names the embedding used."""
  import json
  import subprocess
  import sys
  from flan_jax.checkpoint_embeddings import checkpoint_embeddings
  from flan_jax.data import diversity
  from flan_jax.data.instruction_records import InstructionRecord
  inputs, output = tmp_path / "records.json", tmp_path / "curated.jsonl"
  inputs.write_text(json.dumps([{"instruction": i, "input": "", "output": o} for i, o in RECORDS]))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, ".pp"),
                                         os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "-m", "flan_jax.curate", f"--input={inputs}",
                           f"--output={output}", "--target_size=4", "--num_clusters=3",
                           f"--checkpoint={STORIES}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "curated.jsonl.report.json").read_text())
  assert report["embedding"] == f"checkpoint {STORIES}"
  stages = {s["stage"]: s["removed"] for s in report["stages"]}
  assert stages == {"exact_duplicates": 0, "near_duplicates": 0, "quality": 0, "diversity": 8}
  kept = [(r["instruction"], r["output"]) for r in map(json.loads, output.read_text().splitlines())]

  texts = [InstructionRecord(i, "", o, "").text for i, o in RECORDS]
  by_checkpoint = _k_center(checkpoint_embeddings(STORIES, texts), 4)
  assert kept == [RECORDS[i] for i in by_checkpoint]
  # The same records would not have been kept had curation fallen back to TF-IDF.
  assert _k_center(diversity.tfidf_embeddings(texts), 4) != by_checkpoint
