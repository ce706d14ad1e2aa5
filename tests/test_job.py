"""The job setup train, eval and infer share (`job`): one rule for the reported groups."""

import pytest

from flan_jax import job
from flan_jax.data import clusters


@pytest.fixture(scope="module")
def task_names():
  """Two NLI datasets (one with options and variants, one without a variant), a
  sentiment dataset, and a plain task of no cluster."""
  names = []
  for variant in ("zs_opt", "zs_noopt", "fs_opt", "cot", "inverted"):
    names.append(f"jobtest_nli_a_{variant}")
    clusters.assign(names[-1], "jobtest_nli", dataset="jobtest_nli_a", variant=variant)
  for variant in ("zs_noopt", "fs_noopt"):
    names.append(f"jobtest_sent_{variant}")
    clusters.assign(names[-1], "jobtest_sentiment", dataset="jobtest_sent", variant=variant)
  clusters.assign("jobtest_nli_b", "jobtest_nli")
  return names + ["jobtest_nli_b", "jobtest_plain"]


def _eval_groups_as_written_before(task_names):
  """`checkpoint_eval.eval_groups` before it became `report_groups` renamed."""
  headline = clusters.headline_tasks(task_names)
  groups = {"all": headline, **clusters.cluster_groups(headline)}
  for variant, names in sorted(clusters.variant_groups(task_names).items()):
    groups[f"variant_{variant}"] = names
  return groups


def test_eval_reports_the_training_rule_under_its_own_names(task_names):
  groups = job.eval_groups(task_names)
  expected = _eval_groups_as_written_before(task_names)
  # Same groups in the same order: a task in several groups is shown under the last.
  assert list(groups.items()) == list(expected.items())
  assert sorted(groups["all"]) == ["jobtest_nli_a_zs_opt", "jobtest_nli_b", "jobtest_plain",
                                   "jobtest_sent_zs_noopt"]
  assert groups["cluster_jobtest_nli"] == ["jobtest_nli_a_zs_opt", "jobtest_nli_b"]
  held_out = job.report_groups([], task_names)
  assert groups["all"] == held_out["heldout"]
  assert groups["variant_cot"] == held_out["heldout_cot"] == ["jobtest_nli_a_cot"]


def test_training_reports_seen_and_held_out_tasks_apart(task_names):
  seen = [n for n in task_names if n.startswith("jobtest_sent")]
  heldout = [n for n in task_names if not n.startswith("jobtest_sent")]
  groups = job.report_groups(seen, heldout)
  assert groups["seen"] == ["jobtest_sent_zs_noopt"]
  assert groups["heldout"] == ["jobtest_nli_a_zs_opt", "jobtest_nli_b", "jobtest_plain"]
  assert "heldout_fs_noopt" not in groups  # variants are broken down for held-out tasks only
  assert groups["cluster_jobtest_sentiment"] == ["jobtest_sent_zs_noopt"]
  assert list(groups)[:2] == ["seen", "heldout"]
