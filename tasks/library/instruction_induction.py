"""Instruction Induction (Honovich et al. 2022): 24 small tasks with our own instructions.

`tasks/instruction_induction/raw/{induce,execute}/<task>.json` hold
`{"metadata": ..., "examples": {"1": {...}, ...}}`. Upstream, `induce` supplies
the demonstrations and `execute` is held out to score execution accuracy, and
they barely overlap (one sentence_similarity input is in both; one
cause_and_effect cause recurs with another effect), so train = induce (few-shot
exemplars come from there, as in the paper) and validation = execute.

Each task is registered as `ii_<task>` (hyphens become underscores) with a task
instruction we wrote (SPECS) inside six shared templates (TEMPLATES), zero-shot
and few-shot; classification tasks also get the options variants. Records are
normalised to {instruction, input, output, answers}; `answers` lists every
acceptable output (the target_field), e.g. all listed translations. Tasks whose
upstream records are not input/output pairs are adapted in `_ADAPTERS`:

- cause_and_effect: both sentences are shown, in an order fixed by a hash of the
  cause, and the cause is the answer.
- common_concept: the items, comma-separated; any listed concept counts.
- taxonomy_animal: upstream lists the animals in random order, which no model
  can reproduce, so the target lists them in input order (upstream's kept as a
  reference).
- rhymes: any listed rhyme counts, except the input word itself.
- larger_animal: the two animals are also the record's answer options.

Metrics (Spec.metric_fns): tasks with answer options are scored by rank
classification (`accuracy`); the other tasks have short answers, scored by
normalised exact match against every listed answer, as the paper's execution
accuracy; the three sentence-rewriting tasks, where many wordings are right, also
get ROUGE-L.
"""

import functools
import os
import zlib
from typing import Any, Callable, Mapping, NamedTuple

import seqio

from flan_jax.data.flan_task import FlanTaskSpec, register_flan_task
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import accuracy, normalized_exact_match, rouge_l

SUBDIR = os.path.join("tasks", "instruction_induction", "raw")
SPLIT_DIRS = {"train": "induce", "validation": "execute"}

TEMPLATES = (
    Template("{instruction}\n\n{input}", "{output}"),
    Template("{input}\n\n{instruction}", "{output}"),
    Template("Instruction: {instruction}\nInput: {input}\nOutput:", "{output}"),
    Template("{instruction}\nInput: {input}\nAnswer:", "{output}"),
    Template("Read the instruction, then apply it to the input.\n\nInstruction: {instruction}\n"
             "Input: {input}", "{output}"),
    Template("Task: {instruction}\n{input}\nResult:", "{output}"),
)


CLASSIFICATION = (accuracy,)
SHORT_ANSWER = (normalized_exact_match,)
REWRITING = (normalized_exact_match, rouge_l)


class Spec(NamedTuple):
  instruction: str
  cluster: str
  options: tuple[str, ...] | str | None = None
  metric_fns: tuple[Callable, ...] = SHORT_ANSWER


SPECS: dict[str, Spec] = {
    "active_to_passive": Spec("Rewrite the sentence in the passive voice.", "sentence_rewriting",
                              metric_fns=REWRITING),
    "antonyms": Spec("Write a word that means the opposite of the given word.",
                     "lexical_semantics"),
    "cause_and_effect": Spec("One of these two sentences describes the cause of the other. Write "
                             "out the sentence that is the cause.", "causal_reasoning"),
    "common_concept": Spec("Say what all of the listed things have in common.", "commonsense"),
    "diff": Spec("Subtract the second number from the first and give the result.", "arithmetic"),
    "first_word_letter": Spec("Give the first letter of the word.", "spelling"),
    "informal_to_formal": Spec("Rephrase the sentence in a formal register.", "sentence_rewriting",
                               metric_fns=REWRITING),
    "larger_animal": Spec("Of the two animals, name the one that is larger.", "commonsense",
                          options="choices", metric_fns=CLASSIFICATION),
    "letters_list": Spec("Spell out the word letter by letter, with a space between the letters.",
                         "spelling"),
    "negation": Spec("Negate the statement, changing as few words as possible.",
                     "sentence_rewriting", metric_fns=REWRITING),
    "num_to_verbal": Spec("Write the number out in English words.", "arithmetic"),
    "orthography_starts_with": Spec("List, in order, the words of the sentence that begin with "
                                    "the letter given in brackets.", "spelling"),
    "rhymes": Spec("Write a word that rhymes with the given word.", "lexical_semantics"),
    "second_word_letter": Spec("Give the second letter of the word.", "spelling"),
    "sentence_similarity": Spec(
        "Rate how close in meaning the two sentences are, from 0 (definitely not the same "
        "meaning) to 5 (perfectly the same).", "paraphrase",
        options=("0 - definitely not", "1 - probably not", "2 - possibly", "3 - probably",
                 "4 - almost perfectly", "5 - perfectly"), metric_fns=CLASSIFICATION),
    "sentiment": Spec("Say whether the sentiment of the text is positive or negative.",
                      "sentiment", options=("positive", "negative"), metric_fns=CLASSIFICATION),
    "singular_to_plural": Spec("Write the plural form of the noun.", "lexical_semantics"),
    "sum": Spec("Add the two numbers and give their sum.", "arithmetic"),
    "synonyms": Spec("Write a word that has the same meaning as the given word.",
                     "lexical_semantics"),
    "taxonomy_animal": Spec("From the list, write out only the words that name animals.",
                            "commonsense"),
    "translation_en-de": Spec("Translate the English word into German.", "translation"),
    "translation_en-es": Spec("Translate the English word into Spanish.", "translation"),
    "translation_en-fr": Spec("Translate the English word into French.", "translation"),
    "word_in_context": Spec('Does the word have the same meaning in both sentences? Answer '
                            '"same" or "not the same".', "lexical_semantics",
                            options=("same", "not the same"), metric_fns=CLASSIFICATION),
}

Raw = Mapping[str, Any]


def _pair(raw: Raw, answers_key: str | None = None) -> dict[str, Any]:
  output = raw["output"]
  outputs = list(output) if isinstance(output, list) else [output]  # execute may list several
  extra = list(raw.get(answers_key) or []) if answers_key else []
  answers = list(dict.fromkeys(str(a) for a in outputs + extra if str(a).strip()))
  return {"input": str(raw["input"]), "output": str(outputs[0]), "answers": answers}


def _cause_and_effect(raw: Raw) -> dict[str, Any]:
  pair = [raw["cause"], raw["effect"]]
  if zlib.crc32(raw["cause"].encode()) % 2:  # a fixed, content-based order: no position cue
    pair.reverse()
  return {"input": f"Sentence 1: {pair[0]}\nSentence 2: {pair[1]}", "output": raw["cause"],
          "answers": [raw["cause"]]}


def _common_concept(raw: Raw) -> dict[str, Any]:
  answers = list(dict.fromkeys([raw["concept"], *raw.get("all_common_concepts", [])]))
  return {"input": ", ".join(raw["items"]), "output": raw["concept"], "answers": answers}


def _taxonomy_animal(raw: Raw) -> dict[str, Any]:
  animals = set(raw["category_items"])
  in_order = ", ".join(w for w in raw["words"] if w in animals)
  return {"input": raw["input"], "output": in_order,
          "answers": list(dict.fromkeys([in_order, *raw["output"]]))}


def _rhymes(raw: Raw) -> dict[str, Any]:
  record = _pair(raw, "other_rhymes")
  record["answers"] = [a for a in record["answers"] if a != record["input"]] or [record["output"]]
  return record


def _larger_animal(raw: Raw) -> dict[str, Any]:
  return {**_pair(raw), "choices": [c.strip() for c in raw["input"].split(",")]}


_ADAPTERS: dict[str, Callable[[Raw], dict[str, Any]]] = {
    "cause_and_effect": _cause_and_effect,
    "common_concept": _common_concept,
    "taxonomy_animal": _taxonomy_animal,
    "rhymes": _rhymes,
    "larger_animal": _larger_animal,
    **{f"translation_en-{lang}": functools.partial(_pair, answers_key="possible_translations")
       for lang in ("de", "es", "fr")},
    "word_in_context": functools.partial(_pair, answers_key="possible_outputs"),
}

# read_records validates these; everything else an adapter uses is optional.
_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "cause_and_effect": {"fields": ("cause", "effect")},
    "common_concept": {"fields": ("concept", "items"), "optional_fields": ("all_common_concepts",),
                       "list_fields": ("items", "all_common_concepts")},
    "taxonomy_animal": {"fields": ("input", "output", "words", "category_items"),
                        "list_fields": ("words", "category_items")},
    "rhymes": {"fields": ("input", "output"), "optional_fields": ("other_rhymes",),
               "list_fields": ("other_rhymes",)},
    **{f"translation_en-{lang}": {"fields": ("input", "output"),
                                  "optional_fields": ("possible_translations",),
                                  "list_fields": ("possible_translations",)}
       for lang in ("de", "es", "fr")},
    "word_in_context": {"fields": ("input", "output"), "optional_fields": ("possible_outputs",),
                        "list_fields": ("possible_outputs",)},
}
_DEFAULT_FIELDS = {"fields": ("input", "output")}


def _read_spec(task: str) -> dict[str, tuple[str, ...]]:
  """read_records arguments; `output` is read as a list, since execute may give several."""
  spec = dict(_FIELDS.get(task, _DEFAULT_FIELDS))
  if "output" in spec["fields"]:
    spec["list_fields"] = ("output", *spec.get("list_fields", ()))
  return spec


def task_name(task: str) -> str:
  return "ii_" + task.replace("-", "_")


def _loader(data_dir: str, task: str):
  adapt = _ADAPTERS.get(task, _pair)
  instruction = SPECS[task].instruction

  def load(split: str) -> list[dict[str, Any]]:
    path = os.path.join(data_dir, SUBDIR, SPLIT_DIRS[split], f"{task}.json")
    result = read_records(path, json_records_key="examples", **_read_spec(task))
    return [{**adapt(raw), "instruction": instruction} for raw in result.records]

  return load


def register(data_dir: str) -> list[str]:
  """Registers each task found in both induce/ and execute/; returns the mixture names."""
  directory = os.path.join(data_dir, SUBDIR)
  found = [set(os.listdir(os.path.join(directory, d))) if os.path.isdir(os.path.join(directory, d))
           else set() for d in SPLIT_DIRS.values()]
  tasks = sorted(name[:-len(".json")] for name in set.intersection(*found)
                 if name.endswith(".json") and name[:-len(".json")] in SPECS)
  names = []
  for task in tasks:
    spec = SPECS[task]
    name = task_name(task)
    if name not in seqio.MixtureRegistry.names():  # registering twice is a no-op
      register_flan_task(FlanTaskSpec(
          name=name, cluster=spec.cluster, records=_loader(data_dir, task), templates=TEMPLATES,
          options=spec.options, target_field="answers", metric_fns=spec.metric_fns))
    names.append(name)
  return names
