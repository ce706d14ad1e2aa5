"""TyDiQA GoldP, 1-shot as Tulu's (open-instruct's) evaluation, from DATA_DIR/eval/tydiqa.

Files, in the published SQuAD format ({"data": [{"paragraphs": [{"context", "qas":
[{"id", "question", "answers": [{"text", "answer_start"}]}]}]}]}):
- `tydiqa-goldp-v1.1-dev.json`, every language in one file, or per-language files
  `tydiqa-goldp-dev-<language>.json` (as the release's `tydiqa-goldp-v1.1-dev/` folder
  holds them; that folder name works too). Each question's id starts with its language
  ("english-...").
- optionally `tydiqa-goldp-v1.1-train.json`: the exemplar of each language is its first
  train question in file order (open-instruct samples one at random; a fixed one keeps
  runs comparable). Without it the prompt is zero-shot.

The prompt (docs/evaluation_conventions.md), with the language's own headers:

    Answer the following question based on the information in the given passage.

    Passage: <exemplar context>
    Question: <exemplar question>
    Answer: <exemplar's first answer>

    Passage: <context>
    Question: <question>
    Answer:

The generation is cut at its first newline (open-instruct stops there) and stripped,
then scored with SQuAD's exact match and token F1 (`normalized_exact_match`, `token_f1`:
lowercase, punctuation and English articles dropped, whitespace collapsed; the best over
the gold answers), as TyDiQA's official GoldP evaluation does, for every language.

One FlanTaskSpec per language registers `tydiqa_goldp_<language>_1shot` (or `_0shot`
without the train file), cluster `tydiqa`, split "test" (the dev file), and the
mixture `tydiqa_goldp` collects them; `language_mean` averages a metric over languages.
"""

import functools
import json
import logging
import os

import tensorflow as tf

from flan_jax.data.flan_task import FlanTaskSpec, strip_postprocessor
from flan_jax.data.templates import Template
from flan_jax.data.variants import ZeroShot
from flan_jax.metrics import normalized_exact_match, token_f1
from flan_jax_tasks.library.bbh import cut_at_stop_sequences
from flan_jax_tasks.library.common import add_mixture_once, register_once, size_weighted_mean

ROOT = os.path.join("eval", "tydiqa")
DEV_FILE = "tydiqa-goldp-v1.1-dev.json"
TRAIN_FILE = "tydiqa-goldp-v1.1-train.json"
PER_LANGUAGE_DIR = "tydiqa-goldp-v1.1-dev"
PER_LANGUAGE_PREFIX, PER_LANGUAGE_SUFFIX = "tydiqa-goldp-dev-", ".json"
NAME = "tydiqa_goldp"
LANGUAGES = ("arabic", "bengali", "english", "finnish", "indonesian", "korean", "russian",
             "swahili", "telugu")
CLUSTER = "tydiqa"
STOP_SEQUENCES = ("\n",)  # open-instruct stops generating at the first newline
EXEMPLAR_END = "\n\n"

# (instruction, passage, question, answer) headers per language, as open-instruct's
# `encoding_templates_with_context`. Only the English ones are written here; the other
# languages use them too until their own strings are added (docs say so).
HEADERS: dict[str, tuple[str, str, str, str]] = {
    "english": ("Answer the following question based on the information in the given passage.",
                "Passage:", "Question:", "Answer:"),
}
DEFAULT_HEADERS = HEADERS["english"]
# `prefix` is the instruction and the exemplar, each ending in a blank line.
TEMPLATE = Template("{prefix}{passage_header} {context}\n{question_header} {question}\n"
                    "{answer_header}", "{first_answer}")


def headers(language: str) -> tuple[str, str, str, str]:
  return HEADERS.get(language, DEFAULT_HEADERS)


def _dev_files(data_dir: str) -> list[str]:
  """The dev file(s): the combined file if there, else the per-language files (a listing)."""
  root = os.path.join(data_dir, ROOT)
  combined = os.path.join(root, DEV_FILE)
  if os.path.isfile(combined):
    return [combined]
  files = []
  for folder in (root, os.path.join(root, PER_LANGUAGE_DIR)):
    if os.path.isdir(folder):
      files += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                if n.startswith(PER_LANGUAGE_PREFIX) and n.endswith(PER_LANGUAGE_SUFFIX)]
  return files


def languages(data_dir: str) -> list[str]:
  """The languages to register: per-language files name theirs; the combined file holds
  TyDiQA GoldP's nine (`LANGUAGES`), so registering reads nothing."""
  files = _dev_files(data_dir)
  if files and not files[0].endswith(DEV_FILE):
    return sorted({os.path.basename(f)[len(PER_LANGUAGE_PREFIX):-len(PER_LANGUAGE_SUFFIX)]
                   for f in files})
  return list(LANGUAGES) if files else []


def read_squad(path: str) -> list[dict]:
  """Every question of a SQuAD-format file: {language, id, context, question, answers}."""
  with tf.io.gfile.GFile(path) as f:
    try:
      data = json.load(f)["data"]
    except (ValueError, KeyError) as error:
      raise ValueError(f"{path}: not SQuAD-format JSON with a top-level 'data' list ({error}).")
  questions = []
  for article in data:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        answers = [a["text"].strip() for a in qa.get("answers", []) if a["text"].strip()]
        if not answers:
          raise ValueError(f"{path}: question {qa['id']!r} has no answer text; GoldP questions "
                           "all have one. Fix or remove it.")
        language, dash, _ = qa["id"].partition("-")
        if not dash:
          raise ValueError(f"{path}: question id {qa['id']!r} does not start with its language "
                           "('english-...').")
        questions.append({"language": language, "id": qa["id"], "context": paragraph["context"],
                          "question": qa["question"].strip(), "answers": answers})
  return questions


@functools.lru_cache(maxsize=None)
def _all_questions(path: str) -> tuple[dict, ...]:
  return tuple(read_squad(path))


def prefix(data_dir: str, language: str) -> str:
  """The instruction and, when the train file exists, the language's first train question
  answered, each followed by a blank line."""
  instruction, passage, question, answer = headers(language)
  text = instruction + EXEMPLAR_END
  train = os.path.join(data_dir, ROOT, TRAIN_FILE)
  if os.path.isfile(train):
    found = [q for q in _all_questions(train) if q["language"] == language]
    if not found:
      raise ValueError(f"{train} has no {language} question to use as the exemplar; add one "
                       "or remove the train file for zero-shot.")
    shot = found[0]
    text += (f"{passage} {shot['context']}\n{question} {shot['question']}\n"
             f"{answer} {shot['answers'][0]}{EXEMPLAR_END}")
  return text


def load(data_dir: str, language: str, split: str) -> list[dict]:
  del split  # "test", the dev file
  text = prefix(data_dir, language)
  _, passage, question, answer = headers(language)
  records = [{**q, "prefix": text, "passage_header": passage, "question_header": question,
           "answer_header": answer, "first_answer": q["answers"][0]}
          for path in _dev_files(data_dir) for q in _all_questions(path)
          if q["language"] == language]
  if not records:
    raise ValueError(f"No {language} question in {_dev_files(data_dir)}: ids start with the "
                     f"language ('{language}-...'); add its questions or its file.")
  return records


def postprocessor(text: str, example=None, is_target: bool = False):
  """The generation up to its first newline, stripped; targets: the gold answers."""
  if is_target:
    return strip_postprocessor(text, example, is_target=True)
  return cut_at_stop_sequences(text.lstrip(" "), STOP_SEQUENCES).strip()


def variant(data_dir: str) -> str:
  return "1shot" if os.path.isfile(os.path.join(data_dir, ROOT, TRAIN_FILE)) else "0shot"


def spec(data_dir: str, language: str) -> FlanTaskSpec:
  name = variant(data_dir)
  return FlanTaskSpec(
      name=f"{NAME}_{language}", cluster=CLUSTER,
      records=functools.partial(load, data_dir, language),
      templates=(), splits=("test",), few_shot=False, target_field="answers",
      metric_fns=(normalized_exact_match, token_f1), postprocess_fns={name: postprocessor},
      extra_variants=(ZeroShot(name, (TEMPLATE,)),))


def language_mean(results: dict[str, float], languages_: list[str], variant_: str = "1shot",
                  metric: str = "token_f1") -> float:
  """The plain mean over languages of "tydiqa_goldp_<language>_<variant>/<metric>" (each
  language's own mean over its questions), as open-instruct reports its average."""
  keys = [f"{NAME}_{language}_{variant_}/{metric}" for language in languages_]
  return size_weighted_mean(results, dict.fromkeys(keys, 1), "language")


def register(data_dir: str) -> list[str]:
  """Registers each language and the `tydiqa_goldp` mixture when the dev data is there."""
  if not _dev_files(data_dir):
    logging.warning("TyDiQA skipped: no %s (or %s<language>.json files) in %s; put the GoldP "
                    "dev data there to evaluate it.", DEV_FILE, PER_LANGUAGE_PREFIX,
                    os.path.join(data_dir, ROOT))
    return []
  names = [register_once(spec(data_dir, language)) for language in languages(data_dir)]
  tasks = [f"{name}_{variant(data_dir)}" for name in names]
  return names + [add_mixture_once(NAME, tasks)]
