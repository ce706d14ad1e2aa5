"""T0 / P3: prompts already rendered by promptsource, one task per template file.

`tasks/t0_per_template/<dataset>_<template>.jsonl` holds `{prompt, completion}`
records (the Self-Instruct export of P3, 200 per template). Each file becomes a
FLAN task `t0_<dataset>_<template>` whose template is the identity, so only the
zero-shot variant exists (`..._zs_noopt`): the prompts are rendered already, and
their answer choices, where any, are part of the prompt text.

Grouping. The file name does not separate dataset from template, so the dataset
is the longest known P3 dataset name (DATASET_CLUSTERS) that prefixes it; a file
matching none is its own dataset, in cluster "t0_other", with a warning. Each
dataset gets a mixture `t0_<dataset>` over its templates (examples-proportional,
cap 3,000 per template) and a T0 cluster (Sanh et al. 2021, Fig. 2), and `t0` mixes
every dataset with the cap applied per *dataset* (`dataset_capped_rate`): seqio
takes a sub-mixture's rate only as a fixed number, which would mean reading every
file at registration, so `t0` lists the templates' tasks directly and gives each
its share of its dataset's capped total.

Splits. Every 20th record of a file (indices 19, 39, ...) is validation, the rest
train; a file with fewer than 20 records holds out its last one. P3 renders the
same source example under several templates, so a validation prompt of one
template may have a train twin under another: use these splits for monitoring
only, and held-out clusters or the eval/ sets for real evaluation.

Metrics. The answer choices live inside the prompt text, so no task has options to
rank: every task is scored as generation, with ROUGE-L and normalised exact match
(GENERATION_METRICS), and the extractive-QA datasets, whose answers are spans of
the context, also with SQuAD's token F1 (EXTRACTIVE_QA_METRICS).

Data faults handled here: completions end in GPT's "<|endoftext|>", which is
stripped; records left with an empty prompt or completion are dropped; empty files
are not registered; and TREC (EXCLUDED_DATASETS) is skipped whole, since the
export lost its labels (11 files empty, 7 with every completion empty).
"""

import functools
import os
import re
from typing import Callable, Sequence

from absl import logging
import seqio

from flan_jax.data import clusters
from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.mixtures import examples_proportional
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import normalized_exact_match, rouge_l, token_f1
from flan_jax_tasks.library.common import every_nth_split

SUBDIR = os.path.join("tasks", "t0_per_template")
MIXTURE = "t0"
CAP = 3_000
END_OF_TEXT = "<|endoftext|>"
IDENTITY = (Template("{prompt}", "{completion}"),)

# P3 dataset name (as it starts the file names) -> T0 task cluster.
DATASET_CLUSTERS: dict[str, str] = {
    **{f"adversarial_qa_{m}": "extractive_qa" for m in ("dbert", "dbidaf", "droberta")},
    "duorc_ParaphraseRC": "extractive_qa", "duorc_SelfRC": "extractive_qa",
    "quoref": "extractive_qa", "ropes": "extractive_qa", "squad_v2": "extractive_qa",
    "kilt_tasks_hotpotqa": "closed_book_qa", "wiki_qa": "closed_book_qa",
    "trivia_qa_unfiltered": "closed_book_qa", "web_questions": "closed_book_qa",
    "commonsense_qa": "multiple_choice_qa", "cos_e_v1.11": "multiple_choice_qa",
    "cosmos_qa": "multiple_choice_qa", "dream": "multiple_choice_qa", "qasc": "multiple_choice_qa",
    "quail": "multiple_choice_qa", "quarel": "multiple_choice_qa", "quartz": "multiple_choice_qa",
    "sciq": "multiple_choice_qa", "social_i_qa": "multiple_choice_qa", "wiqa": "multiple_choice_qa",
    "wiki_hop_original": "multiple_choice_qa", "ai2_arc_ARC_Challenge": "multiple_choice_qa",
    "ai2_arc_ARC_Easy": "multiple_choice_qa", "openbookqa_main": "multiple_choice_qa",
    "piqa": "multiple_choice_qa", "race_high": "multiple_choice_qa",
    "race_middle": "multiple_choice_qa",
    "amazon_polarity": "sentiment", "app_reviews": "sentiment", "imdb": "sentiment",
    "rotten_tomatoes": "sentiment", "yelp_review_full": "sentiment",
    "ag_news": "topic_classification", "dbpedia_14": "topic_classification",
    "trec": "topic_classification",
    "glue_mrpc": "paraphrase", "glue_qqp": "paraphrase", "paws_labeled_final": "paraphrase",
    "cnn_dailymail_3_0_0": "summarization", "gigaword": "summarization",
    "multi_news": "summarization", "samsum": "summarization", "xsum": "summarization",
    "common_gen": "structure_to_text", "wiki_bio": "structure_to_text",
    # T0's held-out clusters, for the full P3 export. COPA and BoolQ take the clusters
    # the glue module gives them: one dataset in two clusters leaks when one is held out.
    "hellaswag": "sentence_completion", "story_cloze_2016": "sentence_completion",
    "super_glue_copa": "commonsense", "super_glue_boolq": "reading_comprehension",
    **{f"anli_r{r}": "nli" for r in (1, 2, 3)},
    "super_glue_cb": "nli", "super_glue_rte": "nli",
    "winogrande_winogrande_xl": "coreference", "super_glue_wsc.fixed": "coreference",
    "super_glue_wic": "word_sense",
}
EXCLUDED_DATASETS = {"trec": "the P3 export lost TREC's labels: every file is empty or has "
                             "only empty completions"}
_INVALID_NAME_CHARS = re.compile(r"[^\w.:#]")
GENERATION_METRICS = (rouge_l, normalized_exact_match)
EXTRACTIVE_QA_METRICS = (rouge_l, normalized_exact_match, token_f1)


def metrics_of(cluster: str) -> tuple[Callable, ...]:
  """A T0 task's metric functions, by its cluster."""
  return EXTRACTIVE_QA_METRICS if cluster == "extractive_qa" else GENERATION_METRICS


def dataset_of(stem: str) -> str | None:
  """The longest known P3 dataset name that prefixes a file stem, or None."""
  matches = [d for d in DATASET_CLUSTERS if stem.startswith(d + "_")]
  return max(matches, key=len) if matches else None


@functools.lru_cache(maxsize=None)
def _read(path: str) -> tuple[dict[str, str], ...]:
  records = []
  for raw in read_records(path, fields=("prompt", "completion"), on_error="skip").records:
    prompt, completion = raw["prompt"].strip(), raw["completion"].removesuffix(END_OF_TEXT).strip()
    if prompt and completion:  # an empty target teaches nothing and breaks exact match
      records.append({"prompt": prompt, "completion": completion})
  return tuple(records)


def _loader(path: str):
  return lambda split: every_nth_split(_read(path), split)


def _name(text: str) -> str:
  return _INVALID_NAME_CHARS.sub("_", text)


def template_files(data_dir: str) -> list[tuple[str, str, int]]:
  """(stem, path, size in bytes) of every template file, sorted; a directory listing only."""
  directory = os.path.join(data_dir, SUBDIR)
  if not os.path.isdir(directory):
    return []
  with os.scandir(directory) as entries:
    found = [(e.name[:-len(".jsonl")], e.path, e.stat().st_size)
             for e in entries if e.name.endswith(".jsonl") and e.is_file()]
  return sorted(found)


def dataset_capped_rate(members: Sequence[str], cap: int = CAP):
  """A rate for each of `members` (one dataset's tasks): its share of min(dataset size, cap)."""
  count = examples_proportional()

  @functools.cache  # every member asks for the same total; records never change once read
  def dataset_total() -> float:
    return sum(count(seqio.get_mixture_or_task(name)) for name in members)

  def rate(task: seqio.Task) -> float:
    total = dataset_total()
    return count(task) * min(total, cap) / total if total else 0.0

  return rate


def register(data_dir: str) -> list[str]:
  """Registers every usable template file; returns the per-dataset mixture names."""
  datasets: dict[str, list[str]] = {}  # dataset mixture -> its tasks
  for stem, path, size in template_files(data_dir):
    dataset = dataset_of(stem)
    if dataset in EXCLUDED_DATASETS or not size:
      continue
    if dataset is None:
      logging.warning("T0 file %s matches no known P3 dataset; it becomes its own dataset in "
                      "cluster t0_other. Add its dataset to DATASET_CLUSTERS.", path)
    cluster = DATASET_CLUSTERS.get(dataset, "t0_other")
    spec_name = f"t0_{_name(stem)}"
    task = f"{spec_name}_zs_noopt"
    if spec_name not in seqio.MixtureRegistry.names():  # registering twice is a no-op
      register_flan_task(FlanTaskSpec(name=spec_name, cluster=cluster, records=_loader(path),
                                      templates=IDENTITY, few_shot=False,
                                      metric_fns=metrics_of(cluster)))
    # Each file is one prompt of a P3 dataset: the dataset, not the file, is what
    # leave-one-out mixtures weigh (its weight shared among its prompts).
    clusters.assign(task, cluster, dataset=f"t0_{_name(dataset or stem)}", variant="zs_noopt")
    datasets.setdefault(f"t0_{_name(dataset or stem)}", []).append(task)

  if MIXTURE in seqio.MixtureRegistry.names():
    return sorted(datasets)
  for mixture, tasks in sorted(datasets.items()):
    if mixture in seqio.MixtureRegistry.names():
      raise ValueError(f"T0 dataset mixture {mixture!r} clashes with a registered name; rename "
                       "the file or the dataset in DATASET_CLUSTERS.")
    seqio.MixtureRegistry.add(mixture, tasks, default_rate=examples_proportional(cap=CAP))
    clusters.assign(mixture, clusters.cluster_of(tasks[0]))
  if datasets:
    seqio.MixtureRegistry.add(MIXTURE, [(task, dataset_capped_rate(tasks))
                                        for tasks in datasets.values() for task in tasks])
  return sorted(datasets)
