"""Diversity selection: k examples that cover the data, by k-center greedy over embeddings.

k-center greedy (Sener & Savarese, 2018, the core-set rule) starts from the example
nearest the mean and then repeatedly adds the example farthest from everything
chosen so far, so the chosen set covers the embedding space evenly: with k obvious
clusters, it takes one from each before a second from any. Distances are cosine
distances (rows are L2-normalised). It is deterministic: ties go to the lower index.

Embeddings come from the caller: `tfidf_embeddings` here (TF-IDF over word uni- and
bigrams, reduced to `dims` dimensions by truncated SVD, as LSA does), or a flan_jax
checkpoint's mean-pooled hidden states (`flan_jax.checkpoint_embeddings`, which
knows the models; this module does not). `clusters` labels the examples by k-means
over the same embeddings, for the report's kept-vs-dropped picture.
"""

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer


def normalized(embeddings: np.ndarray) -> np.ndarray:
  embeddings = np.asarray(embeddings, np.float32)
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  return embeddings / np.maximum(norms, 1e-12)


def tfidf_embeddings(texts: list[str], dims: int = 64, seed: int = 0,
                     max_features: int = 2**14) -> np.ndarray:
  """[len(texts), <= dims] L2-normalised LSA vectors.

  The `max_features` most frequent uni- and bigrams: Alpaca + LIMA (2k records) have
  300k, and the SVD over all of them takes 5x as long for the same clusters.
  """
  vectors = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True,
                            max_features=max_features).fit_transform(texts)
  dims = min(dims, vectors.shape[1] - 1, len(texts) - 1)
  if dims < 1:
    return normalized(vectors.toarray())
  return normalized(TruncatedSVD(dims, n_iter=3, random_state=seed).fit_transform(vectors))


def k_center_greedy(embeddings: np.ndarray, k: int) -> list[int]:
  """Indices of k rows, each the farthest (cosine) from those chosen before it."""
  x_NxD = normalized(embeddings)
  n = len(x_NxD)
  if k >= n:
    return list(range(n))
  if k <= 0:
    return []
  mean_D = x_NxD.mean(axis=0)
  first = int(np.argmax(x_NxD @ mean_D))
  chosen = [first]
  distance_N = 1.0 - x_NxD @ x_NxD[first]
  for _ in range(k - 1):
    distance_N[chosen] = -np.inf
    nxt = int(np.argmax(distance_N))
    chosen.append(nxt)
    distance_N = np.minimum(distance_N, 1.0 - x_NxD @ x_NxD[nxt])
  return chosen


def clusters(embeddings: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
  """k-means labels over the normalised embeddings (for reporting, not selection)."""
  num_clusters = max(1, min(num_clusters, len(embeddings)))
  return KMeans(num_clusters, n_init=3, random_state=seed).fit_predict(normalized(embeddings))
