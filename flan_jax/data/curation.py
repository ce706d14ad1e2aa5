"""LIMA-style curation: fewer, cleaner, more varied instruction examples, every drop accounted for.

`curate` runs the stages in order, each on what the previous one kept:

  exact_duplicates   records equal after normalisation (`near_duplicates`)
  near_duplicates    MinHash LSH candidates, kept when their word-shingle Jaccard
                     with an earlier kept record is >= `near_duplicate_threshold`
  quality            empty, truncated, instruction-repeating, refusal boilerplate,
                     length bounds, non-text (`quality_filters`)
  decontamination    records sharing text with the evaluation suites
                     (`decontamination_index`; only when an index is given)
  diversity          k-center greedy over embeddings down to `target_size`
                     (`diversity`; only when more than that are left)

Each stage records how many it removed, why (per reason), and a few samples with
the record's origin ("file:record"), so the report can be checked by eye. The
duplicate stages compare a record's whole text (instruction, input and response):
two prompts with different answers are both kept there, and left to diversity
selection. The first of a group of duplicates (input order) is the one kept.
"""

import collections
import dataclasses
from typing import Callable, Sequence

import numpy as np

from flan_jax.data import diversity, near_duplicates, quality_filters
from flan_jax.data.instruction_records import InstructionRecord

_SAMPLES = 3
_SNIPPET = 160
STAGES = ("exact_duplicates", "near_duplicates", "quality", "decontamination", "diversity")


@dataclasses.dataclass(frozen=True)
class CurationSettings:
  target_size: int | None = None  # None: no diversity selection
  near_duplicate_threshold: float = 0.8
  shingle_words: int = near_duplicates.SHINGLE_WORDS
  num_perm: int = near_duplicates.NUM_PERM
  quality: quality_filters.QualitySettings = quality_filters.QualitySettings()
  num_clusters: int = 10  # for the report's picture only
  seed: int = 0


@dataclasses.dataclass
class StageReport:
  stage: str
  removed: int = 0
  left: int = 0
  reasons: dict[str, int] = dataclasses.field(default_factory=dict)
  samples: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class CurationResult:
  records: list[InstructionRecord]  # every input record
  kept: list[int]  # indices into records, in input order
  dropped: dict[int, tuple[str, str]]  # index -> (stage, reason)
  stages: list[StageReport]
  settings: CurationSettings
  embedding: str  # what the embeddings were ("tfidf", or the checkpoint)
  cluster_labels: np.ndarray | None = None  # per record, for the picture

  def report(self) -> dict:
    return {"input": len(self.records), "kept": len(self.kept),
            "stages": [dataclasses.asdict(s) for s in self.stages],
            "embedding": self.embedding,
            "settings": dataclasses.asdict(self.settings)}

  def summary(self) -> str:
    lines = [f"{len(self.records):,} records in"]
    for s in self.stages:
      why = ", ".join(f"{k} {v:,}" for k, v in s.reasons.items())
      lines.append(f"  {s.stage:<17} -{s.removed:>6,}  -> {s.left:>6,}" + (f"  ({why})" if why else ""))
    lines.append(f"{len(self.kept):,} records kept")
    return "\n".join(lines)


def _snippet(text: str) -> str:
  return text if len(text) <= _SNIPPET else text[:_SNIPPET - 3] + "..."


class _Stages:
  """The bookkeeping every stage shares."""

  def __init__(self, records: Sequence[InstructionRecord]):
    self.records = records
    self.alive = list(range(len(records)))
    self.dropped: dict[int, tuple[str, str]] = {}
    self.reports: list[StageReport] = []

  def apply(self, stage: str, drops: dict[int, tuple[str, str]]) -> None:
    """`drops`: index -> (reason, detail shown in the samples)."""
    report = StageReport(stage)
    reasons = collections.Counter()
    for index in self.alive:
      if index not in drops:
        continue
      reason, detail = drops[index]
      reasons[reason] += 1
      self.dropped[index] = (stage, reason)
      if len(report.samples) < _SAMPLES:
        record = self.records[index]
        report.samples.append({"origin": record.origin, "reason": reason, "detail": detail,
                               "text": _snippet(record.text)})
    self.alive = [i for i in self.alive if i not in drops]
    report.removed, report.left = sum(reasons.values()), len(self.alive)
    report.reasons = dict(reasons.most_common())
    self.reports.append(report)


def curate(records: Sequence[InstructionRecord], settings: CurationSettings = CurationSettings(),
           *, embed: Callable[[list[str]], np.ndarray] | None = None, embedding_name: str = "tfidf",
           contamination: Callable[[str], object] | None = None) -> CurationResult:
  """Runs the stages; `embed` maps texts to vectors (default TF-IDF), `contamination`
  maps a text to a reason (`decontamination_index.Hit`) or None."""
  stages = _Stages(records)
  texts = [r.text for r in records]

  exact = near_duplicates.exact_duplicates([texts[i] for i in stages.alive])
  stages.apply("exact_duplicates", {
      stages.alive[d.index]: ("exact", f"same as {records[stages.alive[d.of]].origin}")
      for d in exact})

  near = near_duplicates.near_duplicates(
      [texts[i] for i in stages.alive], settings.near_duplicate_threshold,
      shingle_words=settings.shingle_words, num_perm=settings.num_perm, seed=settings.seed + 1)
  stages.apply("near_duplicates", {
      stages.alive[d.index]: ("near", f"Jaccard {d.similarity:.2f} with "
                                      f"{records[stages.alive[d.of]].origin}") for d in near})

  quality = {}
  for index in stages.alive:
    reason = quality_filters.reason_to_drop(records[index], settings.quality)
    if reason:
      quality[index] = (reason, "")
  stages.apply("quality", quality)

  if contamination is not None:
    hits = {}
    for index in stages.alive:
      hit = contamination(texts[index])
      if hit is not None:
        hits[index] = (hit.source, f"shares {hit.ngram!r}")
    stages.apply("decontamination", hits)

  embeddings = (embed or diversity.tfidf_embeddings)(texts)
  if settings.target_size is not None and len(stages.alive) > settings.target_size:
    chosen = diversity.k_center_greedy(embeddings[stages.alive], settings.target_size)
    keep = {stages.alive[i] for i in chosen}
    stages.apply("diversity", {i: ("k_center", "") for i in stages.alive if i not in keep})
  labels = diversity.clusters(embeddings, settings.num_clusters, settings.seed)
  return CurationResult(list(records), stages.alive, stages.dropped, stages.reports, settings,
                        embedding_name, labels)
