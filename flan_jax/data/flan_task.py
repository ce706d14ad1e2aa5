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
carries `template_idx` and `variant` as passthrough features, and `references`
(all acceptable answers, joined by \\x1e) for multi-reference metrics.
"""

import dataclasses
import functools
import random
from typing import Any, Callable, Mapping, Sequence

import seqio
import tensorflow as tf

from flan_jax.data import clusters
from flan_jax.data.templates import Template
from flan_jax.data.variants import FewShot, Variant, ZeroShot, extract_answer
from flan_jax.data.vocabularies import default_vocabulary, output_features
from flan_jax.evaluation.metrics import accuracy

Record = Mapping[str, Any]
RecordLoader = Callable[[str], Sequence[Record]]
REFERENCE_SEPARATOR = "\x1e"


def cached_loader(load: RecordLoader) -> RecordLoader:
  """Reads each split once per process, on first use."""
  return functools.lru_cache(maxsize=None)(load)


class RenderedSource(seqio.DataSource):
  """Renders one variant of a record collection; deterministic for (seed, split, index)."""

  def __init__(self, records: RecordLoader, variant: Variant, splits: Sequence[str], *,
               salt: str, options: Sequence[str] | str | None, target_field: str | None,
               vocabulary: seqio.Vocabulary, exemplar_split: str = "train"):
    super().__init__(splits=splits)
    self._records, self._variant, self._salt = records, variant, salt
    self._options, self._target_field = options, target_field
    self._vocabulary, self._exemplar_split = vocabulary, exemplar_split

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True

  def list_shards(self, split: str) -> Sequence[str]:
    return [split]

  def num_input_examples(self, split: str) -> int:
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
    if isinstance(self._variant, FewShot):
      pool = self._records(self._exemplar_split)
      # Draw k distinct exemplars, never the example itself.
      candidates = rng.sample(range(len(pool)), min(len(pool), self._variant.k + 1))
      if split == self._exemplar_split:
        candidates = [c for c in candidates if c != index]
      context.update(exemplars=[pool[c] for c in candidates[:self._variant.k]],
                     options_of=self._options_of,
                     count_tokens=lambda text: len(self._vocabulary.encode(text)))
    inputs, targets, template_idx = self._variant.render(record, rng, **context)
    return {"inputs": inputs, "targets": targets, "template_idx": template_idx,
            "variant": self._variant.name, "references": self._references(record, targets)}

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None, *, sequence_length=None,
                  use_cached=False, num_epochs=1) -> tf.data.Dataset:
    del shuffle, sequence_length, use_cached, num_epochs  # the Task shuffles rendered examples
    indices = range(len(self._records(split)))
    if shard_info:
      indices = indices[shard_info.index::shard_info.num_shards]
    signature = {"inputs": tf.TensorSpec([], tf.string), "targets": tf.TensorSpec([], tf.string),
                 "template_idx": tf.TensorSpec([], tf.int32), "variant": tf.TensorSpec([], tf.string),
                 "references": tf.TensorSpec([], tf.string)}
    return tf.data.Dataset.from_generator(
        lambda: (self.render(split, i, seed) for i in indices), output_signature=signature)


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
  few_shot_token_budget: int = 1024
  metric_fns: tuple[Callable, ...] = (accuracy,)
  vocabulary: seqio.Vocabulary | None = None
  zero_shot: bool = True
  few_shot: bool = True  # needs a train split to draw exemplars from
  extra_variants: tuple[Variant, ...] = ()  # dataset-specific renderings (NI's own few-shot)


def variants_of(spec: FlanTaskSpec) -> list[Variant]:
  variants: list[Variant] = []
  if spec.templates and spec.zero_shot:
    variants.append(ZeroShot("zs_noopt", spec.templates))
    if spec.options is not None:
      variants.append(ZeroShot("zs_opt", spec.templates, options_style="fixed"))
      variants.append(ZeroShot("zs_opt_random", spec.templates, options_style="random"))
  if spec.templates and spec.few_shot and "train" in spec.splits:
    budget, k = spec.few_shot_token_budget, spec.few_shot_k
    variants.append(FewShot("fs_noopt", spec.templates, k=k, token_budget=budget))
    if spec.options is not None:
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
                              vocabulary=vocabulary),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=output_features(vocabulary),
        postprocess_fn=cot_postprocessor if variant.name == "cot" else strip_postprocessor,
        metric_fns=list(spec.metric_fns),
    )
    clusters.assign(task_name, spec.cluster)
    names[variant.name] = task_name
  if not names:
    raise ValueError(f"Task spec {spec.name!r} yields no variants: give it templates.")
  seqio.MixtureRegistry.add(spec.name, list(names.values()), default_rate=1.0)
  clusters.assign(spec.name, spec.cluster)
  return names
