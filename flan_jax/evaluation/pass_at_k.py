"""pass@k: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models
Trained on Code", section 2.1).

With n samples of a problem of which c pass, the chance that at least one of k samples
drawn without replacement passes is 1 - C(n-c, k) / C(n, k). The binomials overflow
floats for n in the hundreds, so the ratio is taken as the product
prod_{i=n-c+1}^{n} (1 - k/i), as the paper's numpy code does.
"""

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
  """The estimated pass@k of one problem with `n` samples, `c` of them correct."""
  if not 0 <= c <= n:
    raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"pass_at_k: k={k} needs 1 <= k <= n={n} samples of the problem; "
                     f"generate at least {k} samples or lower k")
  if n - c < k:  # every draw of k includes a correct sample
    return 1.0
  fail = 1.0
  for i in range(n - c + 1, n + 1):
    fail *= 1.0 - k / i
  return 1.0 - fail


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
  """The mean over problems of pass@k, from (n, c) per problem."""
  if not counts:
    raise ValueError("mean_pass_at_k: no problems to average over")
  return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
