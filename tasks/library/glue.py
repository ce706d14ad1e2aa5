"""GLUE/SuperGLUE-style classification sets as FLAN tasks, from DATA_DIR/eval/glue_superglue.

    dataset   files (under eval/glue_superglue/)              splits here      cluster
    rte       tonyzhaozh_fewshot/rte/{train,val}.jsonl        train / val      nli
    cb        tonyzhaozh_fewshot/cb/{train,val}.jsonl         train / val      nli
    anli_r1-3 anli/ANLI_analysis_r{1,2,3}_dev.csv             dev -> held out  nli
    copa      copa/{train,val}.jsonl                          train / val      commonsense
    boolq     boolq/boolq_validation.json                     val -> held out  reading_comprehension
    sst2      tonyzhaozh_fewshot/sst2/stsa.binary.{dev,test}  dev / test       sentiment
    trec      tonyzhaozh_fewshot/trec/{train,test}.txt        train / test     topic_classification
    ag_news   tonyzhaozh_fewshot/agnews/test.csv              test -> held out topic_classification

Every dataset gets the splits "train" and "validation". Where only one split is
stored (ANLI dev, BoolQ validation, AG News test), `holdout_split` keeps
HOLDOUT_PERCENT of it as validation by a hash of a grouping key (the premise for
ANLI, the passage for BoolQ, the headline for AG News), so few-shot exemplars, which
come from train, never share a passage with the example they precede, and the
split does not depend on file order. SST-2's dev set is its train split here and
its test set its validation split.

Labels become words a model can produce: NLI labels become "yes" / "it is not
possible to tell" / "no" (RTE, two-way, only "yes" / "no"), BoolQ's booleans
"yes" / "no", SST-2's 0/1 "negative" / "positive", TREC's coarse classes and AG
News's class indices the names in CLASS_NAMES. COPA's options are its two
alternatives, a record field. BoolQ is in reading_comprehension: the passage is
given, so it tests reading rather than stored knowledge (as in FLAN). TREC (question
type) and AG News (news topic) are in `topic_classification`, the cluster the T0
module gives the same datasets: one dataset in two clusters would leak into training
when its cluster is held out.

Input inversion (ask for the input given the label) is registered for the NLI sets
(write a hypothesis with a given relation), BoolQ (write the question), SST-2 (write
a review line) and AG News (write the headline). All template wording is ours.

Every dataset has answer options, so all are scored by rank classification:
`accuracy` (CLASSIFICATION_METRICS).
"""

import functools
import hashlib
import html
import os
import re
from typing import Any, Callable, Sequence

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec
from flan_jax.data.sources import read_records
from flan_jax.data.templates import Template
from flan_jax.metrics import accuracy
from flan_jax_tasks.library.common import register_once

Record = dict[str, Any]
ROOT = os.path.join("eval", "glue_superglue")
FEW_SHOT_SETS = os.path.join(ROOT, "tonyzhaozh_fewshot")
HOLDOUT_PERCENT = 20  # of a single-split dataset, kept as validation
CLASSIFICATION_METRICS = (accuracy,)

NLI_OPTIONS = ("yes", "it is not possible to tell", "no")
NLI_ANSWERS = {"entailment": "yes", "neutral": "it is not possible to tell", "contradiction": "no",
               "e": "yes", "n": "it is not possible to tell", "c": "no"}  # ANLI uses letters
NLI_RELATIONS = {"yes": "follows from", "it is not possible to tell":
                 "is neither implied nor contradicted by", "no": "contradicts"}
RTE_ANSWERS = {"entailment": "yes", "not_entailment": "no"}
RTE_RELATIONS = {"yes": "follows from", "no": "does not follow from"}
CLASS_NAMES = {
    "sst2": ("negative", "positive"),
    "trec": ("abbreviation", "description", "entity", "human", "location", "number"),
    "ag_news": ("World", "Sports", "Business", "Science/Tech"),  # as in agnews/classes.txt
}
_TREC_CODES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")

# --- templates: several phrasings per dataset, none copied from FLAN or promptsource.

RTE_TEMPLATES = (
    Template("{premise}\n\nGoing by the passage above, is it true that \"{hypothesis}\"?",
             "{answer}"),
    Template("Read this: {premise}\n\nIf everything in it is accurate, must the following also be "
             "accurate?\n{hypothesis}", "{answer}"),
    Template("Premise: {premise}\nHypothesis: {hypothesis}\n\nGranting the premise, does the "
             "hypothesis hold?", "{answer}"),
    Template("Suppose someone tells you: \"{premise}\" Could you then be sure that "
             "\"{hypothesis}\"?", "{answer}"),
    Template("Text A: {premise}\nText B: {hypothesis}\n\nDoes text B follow logically from text A?",
             "{answer}"),
    Template("{hypothesis}\n\nIs the sentence above supported by this text?\n{premise}",
             "{answer}"),
)
RTE_INVERSIONS = (
    Template("Here is a passage:\n{premise}\n\nWrite a statement that {relation} this passage.",
             "{hypothesis}"),
    Template("{premise}\n\nGive one claim that {relation} what is said above.", "{hypothesis}"),
)

# Three-way NLI, for CB and the ANLI rounds: every phrasing admits "it is not possible to tell".
NLI_TEMPLATES = (
    Template("{premise}\n\nJudging only from this text, is the statement below true?\n{hypothesis}",
             "{answer}"),
    Template("Premise: {premise}\nHypothesis: {hypothesis}\n\nDoes the premise support the "
             "hypothesis?", "{answer}"),
    Template("Take this as given: \"{premise}\"\n\nIs it then also the case that \"{hypothesis}\"?",
             "{answer}"),
    Template("Read the text and decide whether the claim after it holds.\n\nText: {premise}\n\n"
             "Claim: {hypothesis}", "{answer}"),
    Template("{premise}\n\nWith nothing but the information above, can one say that "
             "\"{hypothesis}\"?", "{answer}"),
    Template("Here is a short passage: {premise}\n\nIs \"{hypothesis}\" a sound conclusion to draw "
             "from it?", "{answer}"),
)
NLI_INVERSIONS = (
    Template("{premise}\n\nWrite a sentence that {relation} the text above.", "{hypothesis}"),
    Template("Starting from this premise: {premise}\nCompose a hypothesis that {relation} it.",
             "{hypothesis}"),
)

COPA_TEMPLATES = (
    Template("{premise} {relation_question}", "{answer}"),
    Template("Consider this situation: {premise}\nWhat is its most plausible {question}?",
             "{answer}"),
    Template("Continue the sentence sensibly: \"{premise_clause} {connector} ...\"", "{answer}"),
    Template("Event: {premise}\n\nWhich {question} of this event is more likely?", "{answer}"),
    Template("{premise}\n\nName the likely {question} of what is described above.", "{answer}"),
    Template("Think about cause and effect. {premise} {relation_question}", "{answer}"),
)

BOOLQ_TEMPLATES = (
    Template("{passage}\n\nQuestion: {question}\nAnswer using the passage above.", "{answer}"),
    Template("Read the passage, then answer the question.\n\nPassage: {passage}\n\n"
             "Question: {question}", "{answer}"),
    Template("{passage}\n\nHaving read this, answer yes or no: {question}", "{answer}"),
    Template("Text: {passage}\n\nAccording to the text, is the answer to \"{question}\" yes or no?",
             "{answer}"),
    Template("Here is some background: {passage}\n\nUse it to respond to this question: {question}",
             "{answer}"),
    Template("{question} Look for the answer in this passage:\n\n{passage}", "{answer}"),
)
BOOLQ_INVERSIONS = (
    Template("{passage}\n\nWrite a yes-or-no question about the passage above whose answer is "
             "\"{answer}\".", "{question}"),
    Template("Passage: {passage}\n\nAsk a question that this passage answers with \"{answer}\".",
             "{question}"),
)

SST2_TEMPLATES = (
    Template("Review: \"{sentence}\"\n\nIs this movie review positive or negative?", "{answer}"),
    Template("{sentence}\n\nHow does the writer of this film review feel about the film?",
             "{answer}"),
    Template("What sentiment does this line from a film review express?\n\n{sentence}", "{answer}"),
    Template("Here is a snippet of a movie critique: {sentence}\nWould you call its tone positive "
             "or negative?", "{answer}"),
    Template("Label the overall feeling of this text.\n\n{sentence}", "{answer}"),
    Template("\"{sentence}\"\nDid the critic who wrote this like the movie? Describe the "
             "sentiment.", "{answer}"),
)
SST2_INVERSIONS = (
    Template("Write a {answer} sentence from a review of a movie.", "{sentence}"),
    Template("Compose a short, {answer} remark about a film, as a critic would.", "{sentence}"),
)

TREC_TEMPLATES = (
    Template("What kind of answer does this question expect?\n\n{question}", "{answer}"),
    Template("What is this question looking for? {question}", "{answer}"),
    Template("Categorize the question below by the type of its answer.\n{question}", "{answer}"),
    Template("{question}\n\nWhat category would a reply to this fall under?", "{answer}"),
    Template("Someone asks: \"{question}\" What sort of information would a correct reply give?",
             "{answer}"),
)

AG_NEWS_TEMPLATES = (
    Template("{title}\n\n{description}\n\nWhich part of a newspaper should this story go in?",
             "{answer}"),
    Template("What is this news story about?\n\n{title}\n{description}", "{answer}"),
    Template("Headline: {title}\nSummary: {description}\n\nWhat topic does this article cover?",
             "{answer}"),
    Template("Assign a topic to the following news item.\n\n{title}\n{description}", "{answer}"),
    Template("Read the article below and say which category it belongs to.\n\n{title}\n"
             "{description}", "{answer}"),
)
AG_NEWS_INVERSIONS = (
    Template("Write a headline for this {answer} news story:\n\n{description}", "{title}"),
    Template("A {answer} story reads: {description}\n\nSuggest a title for it.", "{title}"),
)

# --- records


def holdout_split(records: Sequence[Record], split: str, key: Callable[[Record], str]
                  ) -> list[Record]:
  """The records of `split` ("train" or "validation") from a dataset stored as one split.

  A record goes to validation when a hash of `key(record)` falls in the first
  HOLDOUT_PERCENT of 100 buckets; records sharing a key stay together.
  """
  def held_out(record: Record) -> bool:
    digest = hashlib.sha256(key(record).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HOLDOUT_PERCENT
  return [r for r in records if held_out(r) == (split == "validation")]


def _label_error(path: str, index: int, label: str, known) -> ValueError:
  return ValueError(f"{path}: record {index} has label {label!r}; expected one of {sorted(known)}.")


def _nli(path: str, rows: Sequence[Record], answers: dict[str, str], relations: dict[str, str],
         premise: str = "premise", hypothesis: str = "hypothesis", label: str = "label"
         ) -> list[Record]:
  records = []
  for index, row in enumerate(rows):
    if row[label] not in answers:
      raise _label_error(path, index, row[label], answers)
    answer = answers[row[label]]
    records.append({"premise": row[premise].strip(), "hypothesis": row[hypothesis].strip(),
                    "answer": answer, "relation": relations[answer]})
  return records


def _split_file(data_dir: str, folder: str, files: dict[str, str], split: str) -> str:
  return os.path.join(data_dir, folder, files[split])


def load_rte(data_dir: str, split: str) -> list[Record]:
  path = _split_file(data_dir, os.path.join(FEW_SHOT_SETS, "rte"),
                     {"train": "train.jsonl", "validation": "val.jsonl"}, split)
  rows = read_records(path, fields=("premise", "hypothesis", "label")).records
  return _nli(path, rows, RTE_ANSWERS, RTE_RELATIONS)


def load_cb(data_dir: str, split: str) -> list[Record]:
  path = _split_file(data_dir, os.path.join(FEW_SHOT_SETS, "cb"),
                     {"train": "train.jsonl", "validation": "val.jsonl"}, split)
  rows = read_records(path, fields=("premise", "hypothesis", "label")).records
  return _nli(path, rows, NLI_ANSWERS, NLI_RELATIONS)


@functools.lru_cache(maxsize=None)
def _anli_round(path: str) -> tuple[Record, ...]:
  rows = read_records(path, fields=("context", "statement", "gold_label")).records
  return tuple(_nli(path, rows, NLI_ANSWERS, NLI_RELATIONS, premise="context",
                    hypothesis="statement", label="gold_label"))


def load_anli(data_dir: str, split: str, *, round_: int) -> list[Record]:
  path = os.path.join(data_dir, ROOT, "anli", f"ANLI_analysis_r{round_}_dev.csv")
  # Grouped by premise: ANLI writes several hypotheses per context.
  return holdout_split(_anli_round(path), split, key=lambda r: r["premise"])


_COPA_RELATIONS = {  # question -> (relation question, connector)
    "cause": ("What was the cause?", "because"),
    "effect": ("What happened as a result?", "so"),
}


def load_copa(data_dir: str, split: str) -> list[Record]:
  path = _split_file(data_dir, os.path.join(ROOT, "copa"),
                     {"train": "train.jsonl", "validation": "val.jsonl"}, split)
  rows = read_records(path, fields=("premise", "choice1", "choice2", "question", "label")).records
  records = []
  for index, row in enumerate(rows):
    if row["question"] not in _COPA_RELATIONS or row["label"] not in ("0", "1"):
      raise _label_error(path, index, f"{row['question']}/{row['label']}",
                         {"cause/0", "cause/1", "effect/0", "effect/1"})
    relation_question, connector = _COPA_RELATIONS[row["question"]]
    options = [row["choice1"].strip(), row["choice2"].strip()]
    premise = row["premise"].strip()
    records.append({"premise": premise, "premise_clause": premise.rstrip(".!"),
                    "question": row["question"], "relation_question": relation_question,
                    "connector": connector, "options": options,
                    "answer": options[int(row["label"])]})
  return records


def _as_question(text: str) -> str:
  """BoolQ stores questions lowercased without a question mark; restore both."""
  text = text.strip()
  text = text[:1].upper() + text[1:]
  return text if text.endswith("?") else text + "?"


@functools.lru_cache(maxsize=None)
def _boolq(path: str) -> tuple[Record, ...]:
  rows = read_records(path, fields=("question", "passage", "answer")).records
  answers = {"True": "yes", "False": "no"}
  records = []
  for index, row in enumerate(rows):
    if row["answer"] not in answers:
      raise _label_error(path, index, row["answer"], answers)
    records.append({"passage": row["passage"].strip(), "question": _as_question(row["question"]),
                    "answer": answers[row["answer"]]})
  return tuple(records)


def load_boolq(data_dir: str, split: str) -> list[Record]:
  path = os.path.join(data_dir, ROOT, "boolq", "boolq_validation.json")
  # Grouped by passage: BoolQ asks several questions about one passage.
  return holdout_split(_boolq(path), split, key=lambda r: r["passage"])


def _labelled_lines(path: str) -> list[tuple[str, str]]:
  """(label, text) from lines "LABEL text" (SST-2 and TREC; not a table format sources reads)."""
  with tf.io.gfile.GFile(path, "r") as f:
    lines = f.read().splitlines()
  pairs = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    label, _, text = line.partition(" ")
    if not text.strip():
      raise ValueError(f"{path}, line {number}: expected 'LABEL text', got {line!r}.")
    pairs.append((label, text.strip()))
  return pairs


def load_sst2(data_dir: str, split: str) -> list[Record]:
  path = _split_file(data_dir, os.path.join(FEW_SHOT_SETS, "sst2"),
                     {"train": "stsa.binary.dev", "validation": "stsa.binary.test"}, split)
  names = dict(zip(("0", "1"), CLASS_NAMES["sst2"]))
  records = []
  for index, (label, text) in enumerate(_labelled_lines(path)):
    if label not in names:
      raise _label_error(path, index, label, names)
    records.append({"sentence": text, "answer": names[label]})
  return records


def load_trec(data_dir: str, split: str) -> list[Record]:
  path = _split_file(data_dir, os.path.join(FEW_SHOT_SETS, "trec"),
                     {"train": "train.txt", "validation": "test.txt"}, split)
  names = dict(zip(_TREC_CODES, CLASS_NAMES["trec"]))
  records = []
  for index, (label, text) in enumerate(_labelled_lines(path)):
    coarse = label.split(":", 1)[0]  # "NUM:dist" -> NUM; the fine classes are not used
    if coarse not in names:
      raise _label_error(path, index, label, names)
    records.append({"question": text, "answer": names[coarse]})
  return records


def _character(match: re.Match) -> str:
  code = int(match.group(1))
  # Codes 128-159 are Windows-1252 (e.g. #151; an em dash), as the articles were written.
  return bytes([code]).decode("cp1252", "replace") if 128 <= code < 160 else chr(code)


def clean_ag_news(text: str) -> str:
  """Undoes AG News's mangled markup: "doesn #39;t" -> "doesn't", " quot;" -> '"', "\\" -> " "."""
  text = re.sub(r" ?#(\d+);", _character, text)
  text = re.sub(r" ?(?<![&\w])(quot|amp);", lambda m: {"quot": '"', "amp": "&"}[m.group(1)], text)
  text = html.unescape(text).replace("\\", " ")
  return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=None)
def _ag_news(path: str) -> tuple[Record, ...]:
  rows = read_records(path, fields=("label", "title", "description"), field_map={
      "label": "Class Index", "title": "Title", "description": "Description"}).records
  names = dict(zip(("1", "2", "3", "4"), CLASS_NAMES["ag_news"]))
  records = []
  for index, row in enumerate(rows):
    if row["label"] not in names:
      raise _label_error(path, index, row["label"], names)
    records.append({"title": clean_ag_news(row["title"]),
                    "description": clean_ag_news(row["description"]),
                    "answer": names[row["label"]]})
  return tuple(records)


def load_ag_news(data_dir: str, split: str) -> list[Record]:
  path = os.path.join(data_dir, FEW_SHOT_SETS, "agnews", "test.csv")
  # Grouped by headline: agencies file one story under one headline several times.
  return holdout_split(_ag_news(path), split, key=lambda r: r["title"])


# --- registration (register_once and add_mixture_once also serve mmlu, bbh, gsm8k)


def specs(data_dir: str) -> list[FlanTaskSpec]:
  """The specs of the datasets present under data_dir (file checks only, no reads)."""
  few = lambda name, *files: [os.path.join(FEW_SHOT_SETS, name, f) for f in files]
  here = lambda *files: [os.path.join(ROOT, f) for f in files]
  nli = dict(templates=NLI_TEMPLATES, options=NLI_OPTIONS, inversion_templates=NLI_INVERSIONS)
  table = [  # name, cluster, loader, the files it reads, the rest of the spec
      ("rte", "nli", load_rte, few("rte", "train.jsonl", "val.jsonl"),
       dict(templates=RTE_TEMPLATES, options=("yes", "no"), inversion_templates=RTE_INVERSIONS)),
      ("cb", "nli", load_cb, few("cb", "train.jsonl", "val.jsonl"), nli),
      *((f"anli_r{r}", "nli", functools.partial(load_anli, round_=r),
         here(f"anli/ANLI_analysis_r{r}_dev.csv"), nli) for r in (1, 2, 3)),
      ("copa", "commonsense", load_copa, here("copa/train.jsonl", "copa/val.jsonl"),
       dict(templates=COPA_TEMPLATES, options="options")),
      ("boolq", "reading_comprehension", load_boolq, here("boolq/boolq_validation.json"),
       dict(templates=BOOLQ_TEMPLATES, options=("yes", "no"),
            inversion_templates=BOOLQ_INVERSIONS)),
      ("sst2", "sentiment", load_sst2, few("sst2", "stsa.binary.dev", "stsa.binary.test"),
       dict(templates=SST2_TEMPLATES, options=CLASS_NAMES["sst2"],
            inversion_templates=SST2_INVERSIONS)),
      ("trec", "topic_classification", load_trec, few("trec", "train.txt", "test.txt"),
       dict(templates=TREC_TEMPLATES, options=CLASS_NAMES["trec"])),
      ("ag_news", "topic_classification", load_ag_news, few("agnews", "test.csv"),
       dict(templates=AG_NEWS_TEMPLATES, options=CLASS_NAMES["ag_news"],
            inversion_templates=AG_NEWS_INVERSIONS)),
  ]
  return [FlanTaskSpec(name=name, cluster=cluster, records=functools.partial(load, data_dir),
                       metric_fns=CLASSIFICATION_METRICS, **fields)
          for name, cluster, load, files, fields in table
          if all(os.path.isfile(os.path.join(data_dir, f)) for f in files)]


def register(data_dir: str) -> list[str]:
  """Registers every dataset found; returns their mixtures. Registering again is a no-op."""
  return [register_once(spec) for spec in specs(data_dir)]
