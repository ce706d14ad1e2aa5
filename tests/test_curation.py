"""Curation: duplicates found at the threshold, filters name their reason, diversity covers clusters.

The near-duplicate test checks MinHash LSH against brute force: every pair's exact
word-shingle Jaccard, computed here independently. The end-to-end story runs on the
real Alpaca demo set and LIMA (../shared/data) with duplicates planted by the test.
"""

import itertools
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from flan_jax.data import curation, diversity, near_duplicates, quality_filters
from flan_jax.data.instruction_records import InstructionRecord, read_all, read_records
from flan_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data")
ALPACA = os.path.join(DATA, "instruct", "alpaca", "alpaca_en_demo_llamafactory.json")
LIMA = os.path.join(DATA, "instruct", "lima", "lima_llamafactory.json")

WORDS = ("river mountain lantern copper violet harbor meadow thunder pencil garden orbit "
         "canyon velvet marble falcon prairie saddle timber cobalt willow glacier ember "
         "quartz harvest compass pepper ribbon summit tundra anchor").split()


def _shingles(text: str, k: int = 3) -> set:
  """Independent of the library: lowercase words, no punctuation here to strip."""
  words = text.lower().split()
  return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def _near_copies(seed: int = 0) -> list[str]:
  """10 random 100-word texts, each with copies that change 1, 2, 4, 8 and 16 words."""
  rng = random.Random(seed)
  texts = []
  for _ in range(10):
    base = [rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(100)]
    texts.append(" ".join(base))
    for changes in (1, 2, 4, 8, 16):
      copy = list(base)
      for position in rng.sample(range(100), changes):
        copy[position] = "changed" + str(rng.randrange(10**6))
      texts.append(" ".join(copy))
  return texts


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9])
def test_minhash_finds_exactly_the_pairs_at_or_above_the_threshold(threshold):
  texts = _near_copies()
  sets = [_shingles(t) for t in texts]
  found = near_duplicates.near_duplicates(texts, threshold)
  # Brute force, in the library's rule: a text is a duplicate if some earlier *kept*
  # text is at least `threshold` similar to it.
  kept, expected = [], set()
  for i, s in enumerate(sets):
    if any(len(s & sets[j]) / len(s | sets[j]) >= threshold for j in kept):
      expected.add(i)
    else:
      kept.append(i)
  assert {d.index for d in found} == expected
  assert 0 < len(expected) < len(texts)
  for d in found:
    exact = len(sets[d.index] & sets[d.of]) / len(sets[d.index] | sets[d.of])
    assert d.similarity == pytest.approx(exact) and exact >= threshold and d.of not in expected


def test_exact_duplicates_ignore_case_punctuation_and_spacing():
  texts = ["Name three colors.", "name   three colors", "Name four colors."]
  assert near_duplicates.exact_duplicates(texts) == [near_duplicates.Duplicate(1, 0, 1.0)]


def test_k_center_greedy_picks_one_from_each_of_k_obvious_clusters():
  rng = np.random.default_rng(0)
  centers_KxD = rng.normal(size=(5, 16)) * 10
  labels = np.repeat(np.arange(5), 30)
  points = centers_KxD[labels] + rng.normal(size=(150, 16)) * 0.1
  chosen = diversity.k_center_greedy(points, 5)
  assert sorted(labels[chosen]) == [0, 1, 2, 3, 4]
  # Over TF-IDF vectors of texts on four unrelated topics.
  topics = {
      "cooking": "Give a recipe for {} soup with fresh vegetables and a pinch of salt",
      "space": "Explain how the {} rocket reaches orbit around the planet Mars",
      "code": "Write a Python function named {} that sorts a list of integers quickly",
      "music": "Compose a short jazz melody called {} for piano and saxophone",
  }
  names = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
  texts = [template.format(n) for template in topics.values() for n in names]
  topic_of = [t for t in topics for _ in names]
  chosen = diversity.k_center_greedy(diversity.tfidf_embeddings(texts), 4)
  assert sorted(topic_of[i] for i in chosen) == sorted(topics)


def _record(output, instruction="Describe the water cycle in simple terms."):
  return InstructionRecord(instruction, "", output, "test:1")


@pytest.mark.parametrize("output,reason", [
    ("   ", "empty"),
    ("The water cycle moves water between the sea, the air and the land: it evaporates, "
     "condenses into clouds and falls again as rain, which flows back towards the", "truncated"),
    ("Here is code:\n```python\nprint('rain')", "truncated"),
    ("Describe the water cycle in simple terms.", "repeats_instruction"),
    ("As an AI language model, I cannot describe things.", "refusal"),
    ("I'm sorry, but I cannot help with that request.", "refusal"),
    ("Rain.", None),
    ("Water evaporates, forms clouds, and falls as rain.", None),
    ("Steps:\n- water evaporates from the sea\n- clouds form high in the cold air\n"
     "- rain falls back onto the land and the rivers carry it home again to the", None),
    ("A" * 250, "non_text"),
    ("%%%% #### @@@@ &&&& **** !!!!", "non_text"),
])
def test_quality_filters_name_their_reason(output, reason):
  assert quality_filters.reason_to_drop(_record(output)) == reason


def test_length_bounds():
  settings = quality_filters.QualitySettings(min_words=3, max_words=5)
  assert quality_filters.reason_to_drop(_record("Rain falls."), settings) == "too_short"
  assert quality_filters.reason_to_drop(_record("Rain falls from the grey sky."),
                                        settings) == "too_long"
  assert quality_filters.reason_to_drop(_record("Rain falls from clouds."), settings) is None


def test_bad_records_are_one_clear_error(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
  with pytest.raises(UserError, match=r"bad.jsonl:2: no 'output' field"):
    read_records(str(path))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """Alpaca + LIMA, plus an exact copy and a near copy (5 words changed) of LIMA records."""
  if not (os.path.exists(ALPACA) and os.path.exists(LIMA)):
    pytest.skip("needs ../shared/data/instruct")
  lima = json.load(open(LIMA))
  exact, near = dict(lima[10]), dict(lima[20])
  words = near["output"].split()
  assert len(words) > 150
  for position in (3, 40, 80, 120, 150):
    words[position] = "PLANTED"
  near["output"] = " ".join(words)
  path = tmp_path_factory.mktemp("planted") / "planted.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in (exact, near)))
  return [ALPACA, LIMA, str(path)]


def test_curation_on_alpaca_and_lima_finds_the_planted_duplicates(planted):
  records = read_all(planted)
  result = curation.curate(records, curation.CurationSettings(target_size=500))
  stages = {s.stage: s for s in result.stages}
  planted_exact, planted_near = len(records) - 2, len(records) - 1
  assert result.dropped[planted_exact] == ("exact_duplicates", "exact")
  assert result.dropped[planted_near] == ("near_duplicates", "near")
  # The report names the copy and what it copied (LIMA's record 21 is lima[20]).
  [sample] = [s for s in stages["near_duplicates"].samples if s["origin"].endswith("planted.jsonl:2")]
  assert sample["detail"].endswith("lima_llamafactory.json:21")
  # Every record is accounted for, stage by stage.
  assert len(result.kept) == 500 == stages["diversity"].left
  assert len(result.kept) + len(result.dropped) == len(records)
  left = len(records)
  for stage in result.stages:
    assert stage.left == left - stage.removed and sum(stage.reasons.values()) == stage.removed
    left = stage.left
  assert stages["quality"].reasons.get("refusal", 0) > 0  # Alpaca's "As an AI, ..." answers


def test_the_command_writes_records_report_and_picture(tmp_path):
  if not os.path.exists(ALPACA):
    pytest.skip("needs ../shared/data/instruct")
  small = tmp_path / "small.json"
  records = json.load(open(ALPACA))[:60]
  small.write_text(json.dumps(records + records[:5]))  # 5 exact duplicates
  output = tmp_path / "curated.jsonl"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, ".pp"),
                                         os.environ.get("PYTHONPATH", "")]))
  result = subprocess.run([sys.executable, "-m", "flan_jax.curate", f"--input={small}",
                           f"--output={output}", "--target_size=20", "--num_clusters=4"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  kept = [json.loads(line) for line in output.read_text().splitlines()]
  assert len(kept) == 20 and all(set(r) >= {"instruction", "input", "output"} for r in kept)
  report = json.loads((tmp_path / "curated.jsonl.report.json").read_text())
  assert report["input"] == 65 and report["kept"] == 20
  assert report["stages"][0] == {**report["stages"][0], "stage": "exact_duplicates", "removed": 5}
  assert (tmp_path / "curated.jsonl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "records kept" in result.stdout


def test_curated_records_sharing_eval_text_are_dropped_and_named():
  from flan_jax.data import decontamination_index as di
  question = ("Statement 1 | Every homomorphic image of a group G is isomorphic to a factor group "
              "of G. Statement 2 | The homomorphic images of a group G are the same.")
  index = di.DecontaminationIndex.build([("mmlu_abstract_algebra", question)], di.RULES["13-gram"])
  records = [InstructionRecord("Is this true? " + question, "", "True, True.", "x:1"),
             InstructionRecord("Name a prime number.", "", "Seven.", "x:2")]
  result = curation.curate(records, curation.CurationSettings(num_clusters=1),
                           contamination=index.hit)
  stage = {s.stage: s for s in result.stages}["decontamination"]
  assert (stage.removed, stage.reasons) == (1, {"mmlu_abstract_algebra": 1})
  assert result.kept == [1] and "every homomorphic image" in stage.samples[0]["detail"]
