"""AlpacaEval's win rate, its standard error and its length-controlled win rate, computed
from per-instruction preferences as the `alpaca_eval` package (0.6) computes them.

Preferences use AlpacaEval's scale: 1 = the reference output is better, 2 = the evaluated
model's output is better, 1.5 = a tie (a legacy 0 also means a tie). NaN marks an
instruction without a preference (no parsable verdict); it is left out of the win rate,
as AlpacaEval leaves out values outside [1, 2].

Win rate: the mean of `preference - 1` over the kept instructions, in percent; a tie
counts half. Standard error: the sample standard deviation (ddof 1) of the same values
over the square root of their number, in percent.

Length-controlled (LC) win rate (Dubois et al. 2024, "Length-Controlled AlpacaEval"): a
logistic model predicts the preference (as a probability in [0, 1]) from

  tanh(std_delta_len)  +  instruction_difficulty  +  not_gamed_baseline   (no intercept)

where `std_delta_len` is (reference length - model length) in characters, divided by its
sample standard deviation over all instructions. The LC win rate is the model's mean
predicted preference with the length term set to 0: how often the model would win were
its answers as long as the reference's. The fit is AlpacaEval's: an L1-penalised logistic
regression without intercept (liblinear, random_state 123), its strength chosen from
scikit-learn's default grid of 10 C values by 5-fold cross-validation grouped by
instruction, the score being the log loss against the soft preference; soft labels are fed
as each row twice, labelled 1 with weight p and 0 with weight 1 - p. Rows without a
preference are not fitted but still predicted (the LC mean covers every instruction).

`instruction_difficulty` and the regularisation towards "gamed" baselines are data that
AlpacaEval fitted on its own leaderboard annotations with its GPT-4-turbo judge and
publishes on the Hugging Face Hub (dataset `tatsu-lab/alpaca_eval`, file `df_gamed.csv`:
the annotations of two length-gamed variants of the gpt4_1106_preview baseline, one row
per instruction and variant, with each instruction's difficulty). The package downloads
it at run time; it cannot be derived from one model's judgements. So:

- given that file (`gamed_annotations_path`), the LC win rate is AlpacaEval's
  `length_controlled_v1` (difficulty term, and the gamed rows added to the fit with
  weight 0.2 / 2 each), the number on AlpacaEval 2.0's leaderboard when the judge and
  baseline are the leaderboard's;
- without it, it is AlpacaEval's `length_controlled_minimal` GLM (length term and
  baseline term only), which needs nothing but the judgements. The result names the GLM.

A quirk carried over with the fit: when the model loses every judged instruction, no
weight is left on one of the two labels, and liblinear's fit (AlpacaEval's too) returns
zero coefficients, an LC win rate of 50. Read the LC number beside the raw win rate.
"""

import math
import warnings
from typing import Sequence

import numpy as np

GLM_V1 = "length_controlled_v1"
GLM_MINIMAL = "length_controlled_minimal"
# AlpacaEval's weight on the gamed baselines' rows (split between the two of them).
_GAMED_WEIGHT = 0.2
_CV_FOLDS = 5


def _as_preferences(preferences: Sequence[float]) -> np.ndarray:
  values = np.asarray([math.nan if p is None else float(p) for p in preferences], dtype=float)
  return np.where(values == 0.0, 1.5, values)  # AlpacaEval's legacy tie


def _kept(values: np.ndarray) -> np.ndarray:
  return (values >= 1) & (values <= 2)  # False for NaN


def win_rate(preferences: Sequence[float]) -> dict:
  """{"win_rate", "standard_error", "n_wins", "n_wins_base", "n_draws", "n_total"}:
  percentages, and counts over the instructions with a preference."""
  values = _as_preferences(preferences)
  model_share = values[_kept(values)] - 1
  n = len(model_share)
  mean = float(model_share.mean()) * 100 if n else math.nan
  error = float(model_share.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else math.nan
  return {"win_rate": mean, "standard_error": error,
          "n_wins": int((model_share > 0.5).sum()), "n_wins_base": int((model_share < 0.5).sum()),
          "n_draws": int((values == 1.5).sum()), "n_total": n}


def length_controlled_win_rate(preferences: Sequence[float], model_lengths: Sequence[int],
                               reference_lengths: Sequence[int],
                               instruction_indices: Sequence[int] | None = None,
                               gamed_annotations: dict | None = None) -> dict:
  """{"length_controlled_win_rate", "lc_standard_error", "glm"}: the LC win rate (percent)
  and the standard error of the per-instruction predictions.

  `model_lengths`/`reference_lengths`: each output's length in characters.
  `gamed_annotations` (see `read_gamed_annotations`) selects length_controlled_v1, with
  `instruction_indices` (positions in AlpacaEval's 805 instructions, default 0..n-1)
  looking up each instruction's difficulty; None selects length_controlled_minimal.
  """
  values = _as_preferences(preferences)
  n = len(values)
  if not (len(model_lengths) == len(reference_lengths) == n):
    raise ValueError(f"{n} preferences, {len(model_lengths)} model lengths and "
                     f"{len(reference_lengths)} reference lengths: one of each per instruction.")
  delta = np.asarray(reference_lengths, float) - np.asarray(model_lengths, float)
  spread = delta.std(ddof=1) if n > 1 else 0.0
  # Equal length differences everywhere carry no length signal (AlpacaEval would divide
  # by zero here and fail).
  std_delta = delta / spread if spread > 0 else np.zeros(n)
  target = np.where(np.isnan(values), np.nan, values - 1)
  fitted = ~np.isnan(target)
  if gamed_annotations is None:
    glm = GLM_MINIMAL
    features = np.stack([np.tanh(std_delta), np.ones(n)], axis=1)
    test = np.stack([np.zeros(n), np.ones(n)], axis=1)
    x, y, weight = features[fitted], target[fitted], None
  else:
    glm = GLM_V1
    indices = np.arange(n) if instruction_indices is None else np.asarray(instruction_indices)
    by_index = gamed_annotations["difficulty_by_index"]
    missing = sorted({int(i) for i in indices} - set(by_index))
    if missing:
      raise ValueError(f"No instruction difficulty for instruction indices {missing[:5]}: "
                       "the gamed annotations cover AlpacaEval's 805 instructions only.")
    difficulty = np.array([by_index[int(i)] for i in indices])
    features = np.stack([np.tanh(std_delta), difficulty, np.ones(n)], axis=1)
    test = np.stack([np.zeros(n), difficulty, np.ones(n)], axis=1)
    gamed = gamed_annotations["features"]  # [tanh(std_delta_len), difficulty, 0.0]
    gamed_target = gamed_annotations["preference"]
    gamed_fitted = ~np.isnan(gamed_target)
    x = np.concatenate([gamed[gamed_fitted], features[fitted]])
    y = np.concatenate([gamed_target[gamed_fitted], target[fitted]])
    weight = np.concatenate([np.full(gamed_fitted.sum(), _GAMED_WEIGHT / 2),
                             np.ones(fitted.sum())])
  predicted = _fit_soft_logistic(x, y, weight).predict_proba(test)[:, 1]
  error = float(predicted.std(ddof=1) / math.sqrt(n)) * 100 if n > 1 else math.nan
  return {"length_controlled_win_rate": float(predicted.mean()) * 100,
          "lc_standard_error": error, "glm": glm}


def read_gamed_annotations(path: str) -> dict:
  """AlpacaEval's `df_gamed.csv` (columns index, preference, std_delta_len,
  instruction_difficulty, not_gamed_baseline, model) as the arrays the v1 fit needs."""
  import csv  # pylint: disable=import-outside-toplevel
  rows = []
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      rows.append(row)
  needed = {"index", "preference", "std_delta_len", "instruction_difficulty"}
  if not rows or not needed <= set(rows[0]):
    raise ValueError(f"{path}: expected AlpacaEval's df_gamed.csv with columns "
                     f"{sorted(needed)}, got {sorted(rows[0]) if rows else 'no rows'}.")
  difficulty_by_index = {}
  for row in rows:  # the first row of each instruction holds its difficulty (as AlpacaEval reads it)
    difficulty_by_index.setdefault(int(row["index"]), float(row["instruction_difficulty"]))
  # Already on the fit's [0, 1] scale (1 = the gamed variant wins).
  preference = np.array([float(r["preference"]) if r["preference"] else math.nan for r in rows])
  features = np.array([[math.tanh(float(r["std_delta_len"])), float(r["instruction_difficulty"]),
                        0.0] for r in rows])
  return {"difficulty_by_index": difficulty_by_index, "preference": preference,
          "features": features}


def _fit_soft_logistic(x: np.ndarray, p: np.ndarray, weight: np.ndarray | None):
  """The cross-validated L1 logistic regression of soft labels `p` on `x` (no intercept),
  with AlpacaEval's settings; returns the refitted scikit-learn model."""
  try:
    import sklearn  # pylint: disable=import-outside-toplevel
    from sklearn.linear_model import LogisticRegressionCV  # pylint: disable=import-outside-toplevel
    from sklearn.metrics import make_scorer  # pylint: disable=import-outside-toplevel
    from sklearn.model_selection import GroupKFold  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("The length-controlled win rate fits a logistic regression with "
                      "scikit-learn: pip install scikit-learn.") from e
  m = len(p)
  # Each row twice: label 1 weighted by p, label 0 weighted by 1 - p.
  x2 = np.concatenate([x, x])
  y2 = np.concatenate([np.ones(m, int), np.zeros(m, int)])
  prob_of_label = np.concatenate([p, 1 - p])
  row_weight = None if weight is None else np.concatenate([weight, weight])
  groups = np.concatenate([np.arange(m), np.arange(m)])

  def soft_log_loss(label, predicted, prob_of_label, row_weight=None):
    soft = np.where(label == 1, prob_of_label, 1 - prob_of_label)  # p on both copies
    predicted = np.clip(predicted, 1e-15, 1 - 1e-15)
    losses = soft * np.log(predicted) + (1 - soft) * np.log(1 - predicted)
    if row_weight is not None:
      losses = losses * row_weight
    return -np.mean(losses)

  fit_weight = prob_of_label if row_weight is None else prob_of_label * row_weight
  with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
    # scikit-learn >= 1.8 deprecates `penalty` for l1_ratios; the fit is the same.
    warnings.simplefilter("ignore", FutureWarning)
    scorer = make_scorer(soft_log_loss, response_method="predict_proba",
                         greater_is_better=False).set_score_request(prob_of_label=True,
                                                                    row_weight=True)
    model = LogisticRegressionCV(cv=GroupKFold(n_splits=_CV_FOLDS), scoring=scorer,
                                 penalty="l1", solver="liblinear", fit_intercept=False,
                                 dual=False, random_state=123)
    model.set_fit_request(sample_weight=True)
    model.fit(x2, y2, sample_weight=fit_weight, groups=groups, prob_of_label=prob_of_label,
              row_weight=row_weight)
  return model
