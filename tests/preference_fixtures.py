"""What the preference-training tests share: TRL's metric names and a small file of
pairs (ten animals, a good and a curt answer each)."""

import json

import pytest

TRL_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
             "logps/chosen", "logps/rejected")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
  animals = ["cat", "dog", "bird", "fish", "frog", "bear", "lion", "duck", "cow", "pig"]
  records = [{"prompt": f"Tell me about the {a}.", "chosen": f"The {a} was happy and played.",
              "rejected": f"{a} no."} for a in animals]
  path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)
