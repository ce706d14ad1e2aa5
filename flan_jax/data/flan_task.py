"""One registration per dataset -> FLAN's variants as seqio tasks, plus their mixture.

    register_flan_task(FlanTaskSpec(
        name="rte", cluster="nli", records=load_rte, templates=RTE_TEMPLATES,
        options=("yes", "no")))

registers `rte_zs_noopt`, `rte_zs_opt`, `rte_zs_opt_random`, `rte_fs_noopt`,
`rte_fs_opt` (and `rte_cot` / `rte_inverted` when the spec has those templates),
and a mixture `rte` over them: FLAN's template-and-format mix for one dataset.

Rendering happens in Python, in a seqio DataSource (`RenderedSource`), because few-shot
needs the train split's records and because records may carry lists (options,
several reference answers). Records are loaded on first use, never at
registration, so a library of thousands of tasks registers in seconds. Every example
carries `template_idx` and `variant` as passthrough features, `references` (all
acceptable answers, joined by \\x1e) for multi-reference metrics, and `options` (the
answer options, joined the same way; empty when the task has none) for rank
classification, shown in the prompt or not.

Few-shot prompts fit the run's input length, not a fixed budget: the source renders
the prompt with k, k - 1, ..., 0 exemplars (same template, same draws) and counts
their tokens, and `fit_few_shot_to_length`, a preprocessor that seqio gives the
run's sequence lengths, keeps the one with the most exemplars that fits. The query is
never cut for an exemplar's sake.
"""

import dataclasses
import functools
import itertools
import random
from typing import Any, Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from flan_jax.data import clusters, example_source
from flan_jax.data.templates import Template
from flan_jax.data.variants import FewShot, Variant, ZeroShot, extract_answer
from flan_jax.data.vocabularies import default_vocabulary, output_features
from flan_jax.metrics import accuracy

Record = Mapping[str, Any]
RecordLoader = Callable[[str], Sequence[Record]]
REFERENCE_SEPARATOR = "\x1e"
# The source shuffles record order itself; seqio's buffer after rendering only mixes locally.
SHUFFLE_BUFFER = 16

# How a task's answer options are scored (rank classification), by task name.
# "target": as training targets, with EOS, as t5x/seqio rank classification scores them
# (FLAN's own tasks). "continuation": the option's tokens alone, lm-eval's
# loglikelihood of the continuation given the context (its `acc`): an EOS after the
# option would add log p(EOS | prompt, option), which varies by option and can
# change the choice.
OPTION_SCORING = ("target", "continuation")
_OPTION_SCORING_OF: dict[str, str] = {}


def option_scoring(task_name: str) -> str:
  """"target" or "continuation" (see OPTION_SCORING); "target" for unregistered tasks."""
  return _OPTION_SCORING_OF.get(task_name, "target")


# Whose evaluation conventions a task follows, by task name, so a report can say which
# produced each number. "flan": FLAN's / t5x's (its templates, options scored as
# targets with EOS, generations by exact match), every library task's by default.
# "lm_eval": lm-evaluation-harness's (its prompts, continuations without EOS, its
# stop sequences and answer extraction), for benchmarks compared with lm-eval's tables.
STYLES = ("flan", "lm_eval")
_STYLE_OF: dict[str, str] = {}


def evaluation_style(task_name: str) -> str:
  """"flan" or "lm_eval" (see STYLES); "flan" for unregistered tasks."""
  return _STYLE_OF.get(task_name, "flan")


def cached_loader(load: RecordLoader) -> RecordLoader:
  """Reads each split once per process, on first use."""
  return functools.lru_cache(maxsize=None)(load)


class RenderedSource(example_source.IndexedSource):
  """Renders one variant of a record collection; deterministic for (seed, split, index)."""

  def __init__(self, records: RecordLoader, variant: Variant, splits: Sequence[str], *,
               salt: str, options: Sequence[str] | str | None, target_field: str | None,
               vocabulary: seqio.Vocabulary, exemplar_split: str = "train",
               ordered_exemplars: bool = False, score_options: bool = True):
    super().__init__(salt, splits)
    self._records, self._variant = records, variant
    self._options, self._target_field = options, target_field
    self._vocabulary, self._exemplar_split = vocabulary, exemplar_split
    self._ordered_exemplars, self._score_options = ordered_exemplars, score_options

  def count(self, split: str = "train") -> int:
    return len(self._records(split))

  def _options_of(self, record: Record) -> Sequence[str] | None:
    if self._options is None:
      return None
    return record[self._options] if isinstance(self._options, str) else self._options

  def _references(self, record: Record, rendered_target: str) -> str:
    answers = record.get(self._target_field) if self._target_field else None
    if isinstance(answers, (list, tuple)) and answers:
      return REFERENCE_SEPARATOR.join(str(a) for a in answers)
    return rendered_target

  def render(self, split: str, index: int, seed: int | None) -> dict[str, Any]:
    records = self._records(split)
    rng = random.Random(f"{self._salt}:{split}:{seed}:{index}")
    record = records[index]
    context = {"options": self._options_of(record)}
    options = context["options"] if self._score_options else None
    if not isinstance(self._variant, FewShot):
      inputs, targets, template_idx = self._variant.render(record, rng, **context)
      return self._example(record, inputs, targets, template_idx, options)
    pool = self._records(self._exemplar_split)
    k = self._variant.k
    if self._ordered_exemplars:  # the first k in file order (MMLU's dev protocol)
      candidates = list(range(min(len(pool), k + 1)))
    else:  # k distinct exemplars drawn at random
      candidates = rng.sample(range(len(pool)), min(len(pool), k + 1))
    if split == self._exemplar_split:  # never the example itself
      candidates = [c for c in candidates if c != index]
    count_tokens = lambda text: len(self._vocabulary.encode(text))
    context.update(exemplars=[pool[c] for c in candidates[:k]], options_of=self._options_of,
                   count_tokens=count_tokens)
    # The same draws with fewer exemplars, so the run's input length can pick one later.
    state = rng.getstate()
    renderings = []
    for shots in range(k, -1, -1):
      rng.setstate(state)
      variant = self._variant if shots == k else dataclasses.replace(self._variant, k=shots)
      renderings.append(variant.render(record, rng, **context))
    inputs, targets, template_idx = renderings[0]
    example = self._example(record, inputs, targets, template_idx, options)
    example["inputs_candidates"] = [r[0] for r in renderings]
    example["inputs_candidate_lengths"] = [count_tokens(r[0]) for r in renderings]
    return example

  def _example(self, record, inputs, targets, template_idx, options) -> dict[str, Any]:
    return {"inputs": inputs, "targets": targets, "template_idx": template_idx,
            "variant": self._variant.name, "references": self._references(record, targets),
            "options": REFERENCE_SEPARATOR.join(str(o) for o in options or ())}

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # seqio repeats the dataset for epochs
    epochs = itertools.count()
    ordered = lambda: self.indices(split, shuffle=shuffle, seed=seed, shard_info=shard_info,
                                   epoch=next(epochs))
    signature = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string),
                 "template_idx": tf.TensorSpec([], tf.int32), "variant": tf.TensorSpec([], tf.string),
                 "references": tf.TensorSpec([], tf.string), "options": tf.TensorSpec([], tf.string)}
    if isinstance(self._variant, FewShot):
      signature.update(inputs_candidates=tf.TensorSpec([None], tf.string),
                       inputs_candidate_lengths=tf.TensorSpec([None], tf.int32))
    return tf.data.Dataset.from_generator(
        lambda: (self.render(split, i, seed) for i in ordered()), output_signature=signature)


def fit_few_shot_to_length(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
  """Keeps the prompt with the most exemplars whose tokens (and EOS) fit the inputs length.

  Without sequence lengths (seqio calls preprocessors with None when the caller gives
  none) the source's own rendering stays: the spec's token budget applies.
  """
  if "inputs_candidates" not in dataset.element_spec:
    return dataset
  budget = sequence_length.get("inputs") if sequence_length else None

  def choose(example):
    example = dict(example)
    candidates = example.pop("inputs_candidates")
    lengths = example.pop("inputs_candidate_lengths")
    if budget is not None:
      fits = lengths + 1 <= budget  # + 1: the EOS seqio appends to the inputs
      # The first (most exemplars) that fits; the zero-shot prompt when none does.
      index = tf.where(tf.reduce_any(fits), tf.argmax(tf.cast(fits, tf.int32)),
                       tf.cast(tf.size(lengths) - 1, tf.int64))
      example["inputs"] = candidates[index]
    return example

  return dataset.map(choose, num_parallel_calls=tf.data.AUTOTUNE)


# What every FLAN task does to a rendered example; `task_reader` does the same in Python.
PREPROCESSORS = (fit_few_shot_to_length, seqio.preprocessors.tokenize,
                 seqio.preprocessors.append_eos)


def strip_postprocessor(text: str, example=None, is_target: bool = False):
  """Targets become their list of references; predictions are stripped."""
  if is_target and example is not None and "references" in example:
    return [r.strip() for r in _text(example["references"]).split(REFERENCE_SEPARATOR)]
  return text.strip()


def cot_postprocessor(text: str, example=None, is_target: bool = False):
  """Chain-of-thought: score the extracted answer, against the record's answer."""
  if is_target:
    references = strip_postprocessor(text, example, is_target)
    return [extract_answer(r) for r in references] if isinstance(references, list) else extract_answer(references)
  return extract_answer(text)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class FlanTaskSpec:
  name: str
  cluster: str
  records: RecordLoader  # split -> records; called lazily
  templates: tuple[Template, ...]
  splits: tuple[str, ...] = ("train", "validation")
  options: tuple[str, ...] | str | None = None  # fixed answer options, or a record field of them
  target_field: str | None = None  # a record field holding all acceptable answers (a list)
  cot_templates: tuple[Template, ...] = ()
  inversion_templates: tuple[Template, ...] = ()
  few_shot_k: int = 3
  few_shot_token_budget: int | None = None  # a cap below the run's input length, if any
  metric_fns: tuple[Callable, ...] = (accuracy,)
  vocabulary: seqio.Vocabulary | None = None
  zero_shot: bool = True
  few_shot: bool = True  # needs a train split to draw exemplars from
  extra_variants: tuple[Variant, ...] = ()  # dataset-specific renderings (NI's own few-shot)
  # False: `options` only score (rank classification) and no _opt variants are
  # registered, for tasks whose prompt lists the choices itself (MMLU's A-D).
  options_variants: bool = True
  ordered_exemplars: bool = False  # few-shot from the first k train records, in order
  # Variant name -> postprocessor, replacing the default (`strip_postprocessor`;
  # `cot_postprocessor` for "cot"), e.g. BBH's cut at lm-eval's stop sequences.
  postprocess_fns: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
  # How options are scored: "target" (with EOS, FLAN's) or "continuation" (without,
  # lm-eval's; for benchmarks whose numbers are compared with lm-eval's `acc`).
  option_scoring: str = "target"
  # Whose conventions the task's prompts, scoring and metrics follow (STYLES); reported.
  style: str = "flan"


def variants_of(spec: FlanTaskSpec) -> list[Variant]:
  variants: list[Variant] = []
  if spec.templates and spec.zero_shot:
    variants.append(ZeroShot("zs_noopt", spec.templates))
    if spec.options is not None and spec.options_variants:
      variants.append(ZeroShot("zs_opt", spec.templates, options_style="fixed"))
      variants.append(ZeroShot("zs_opt_random", spec.templates, options_style="random"))
  if spec.templates and spec.few_shot and "train" in spec.splits:
    budget, k = spec.few_shot_token_budget, spec.few_shot_k
    variants.append(FewShot("fs_noopt", spec.templates, k=k, token_budget=budget))
    if spec.options is not None and spec.options_variants:
      variants.append(FewShot("fs_opt", spec.templates, options_style="fixed", k=k,
                              token_budget=budget))
  if spec.cot_templates:
    variants.append(ZeroShot("cot", spec.cot_templates))
  if spec.inversion_templates:
    variants.append(ZeroShot("inverted", spec.inversion_templates))
  variants.extend(spec.extra_variants)
  return variants


def register_flan_task(spec: FlanTaskSpec) -> dict[str, str]:
  """Registers each variant as `<name>_<variant>` and a mixture `<name>`; returns variant -> task."""
  if spec.option_scoring not in OPTION_SCORING:
    raise ValueError(f"{spec.name}: option_scoring={spec.option_scoring!r}; use one of "
                     f"{OPTION_SCORING}.")
  if spec.style not in STYLES:
    raise ValueError(f"{spec.name}: style={spec.style!r}; use one of {STYLES}.")
  vocabulary = spec.vocabulary or default_vocabulary()
  records = cached_loader(spec.records)
  names = {}
  for variant in variants_of(spec):
    task_name = f"{spec.name}_{variant.name}"
    inverted = variant.name == "inverted"
    seqio.TaskRegistry.add(
        task_name,
        source=RenderedSource(records, variant, spec.splits, salt=task_name,
                              options=None if inverted else spec.options,
                              target_field=None if inverted else spec.target_field,
                              vocabulary=vocabulary, ordered_exemplars=spec.ordered_exemplars,
                              # A chain of thought is generated, never picked from options.
                              score_options=variant.name != "cot"),
        # No trimming here: training and evaluation fit lengths by one rule (`truncation`).
        preprocessors=list(PREPROCESSORS),
        output_features=output_features(vocabulary),
        postprocess_fn=spec.postprocess_fns.get(
            variant.name, cot_postprocessor if variant.name == "cot" else strip_postprocessor),
        shuffle_buffer_size=SHUFFLE_BUFFER,
        metric_fns=list(spec.metric_fns),
    )
    clusters.assign(task_name, spec.cluster, dataset=spec.name, variant=variant.name)
    _OPTION_SCORING_OF[task_name] = spec.option_scoring
    _STYLE_OF[task_name] = spec.style
    names[variant.name] = task_name
  if not names:
    raise ValueError(f"Task spec {spec.name!r} yields no variants: give it templates.")
  seqio.MixtureRegistry.add(spec.name, list(names.values()), default_rate=1.0)
  clusters.assign(spec.name, spec.cluster)
  return names
