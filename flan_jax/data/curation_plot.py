"""The curation report's picture: what was kept and what was dropped, by length and by cluster.

Left: response lengths (words, log-spaced bins) of the kept records against the
dropped ones, the dropped split by the stage that dropped them. Right: per k-means
cluster of the embeddings, kept and dropped counts; diversity selection should
leave every cluster represented, duplicates and filters show where they bit.
"""

import numpy as np

from flan_jax.data.curation import STAGES, CurationResult


def plot(result: CurationResult, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")  # files only, no display
  import matplotlib.pyplot as plt

  words = np.array([max(1, len(r.output.split())) for r in result.records])
  kept = np.zeros(len(words), bool)
  kept[result.kept] = True
  figure, (lengths, clusters) = plt.subplots(1, 2, figsize=(13, 4.5))
  bins = np.logspace(0, np.log10(words.max() + 1), 30)
  stacks = [words[kept]] + [words[[i for i, (s, _) in result.dropped.items() if s == stage]]
                            for stage in STAGES]
  labels = [f"kept ({kept.sum():,})"] + [
      f"dropped: {stage} ({len(s):,})" for stage, s in zip(STAGES, stacks[1:])]
  present = [(s, l) for s, l in zip(stacks, labels) if len(s)]
  lengths.hist([s for s, _ in present], bins=bins, stacked=True, label=[l for _, l in present])
  lengths.set_xscale("log")
  lengths.set_xlabel("response length (words)")
  lengths.set_ylabel("records")
  lengths.legend(fontsize=8)
  lengths.set_title("Response length, kept vs dropped")

  if result.cluster_labels is not None:
    ids = np.arange(result.cluster_labels.max() + 1)
    kept_counts = np.array([(kept & (result.cluster_labels == c)).sum() for c in ids])
    all_counts = np.array([(result.cluster_labels == c).sum() for c in ids])
    clusters.bar(ids, kept_counts, label="kept")
    clusters.bar(ids, all_counts - kept_counts, bottom=kept_counts, label="dropped")
    clusters.set_xticks(ids)
    clusters.set_xlabel(f"cluster (k-means over {result.embedding} embeddings)")
    clusters.set_ylabel("records")
    clusters.legend(fontsize=8)
    clusters.set_title("Clusters, kept vs dropped")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
