"""MT-Bench: 80 two-turn questions in 8 categories, each answer graded 1-10 by a judge
(Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").

The model answers turn 1, then turn 2 with its own turn-1 answer in the conversation.
Each turn is graded on its own ("single-answer grading") with the published judge prompts
of FastChat's llm_judge, reproduced word for word below since they are the benchmark's
definition:

- turn 1: `single-v1` (system "You are a helpful assistant."; the question and the answer),
  or `single-math-v1` (the reference answer shown too) for math, reasoning and coding;
- turn 2: `single-v1-multi-turn` / `single-math-v1-multi-turn`: the whole conversation,
  the judge told to grade the answer to the second question.

A question of those categories without a reference answer in the question file (one
coding question in the common copy) is graded with the general prompt, and counted
(`graded_without_reference`).

The rating is what FastChat reads: the first `[[number]]` in the reply, else the first
`[number]`. A reply without one, or with a number outside 1-10, is unparsable: counted,
and left out of the means (FastChat drops its -1 ratings the same way). Scores: the mean
rating over every graded turn (`score`, MT-Bench's headline number), per turn, and per
category (both turns, and each turn).
"""

import json
import math
import os
import re
from collections import defaultdict
from typing import Callable, Mapping, Sequence

from flan_jax.errors import UserError
from flan_jax.evaluation.judge import Judge, write_judgements

NEEDS_REFERENCE = ("math", "reasoning", "coding")

_RATE = ("After providing your explanation, you must rate the response on a scale of 1 to 10 "
         "by strictly following this format: \"[[rating]]\", for example: \"Rating: [[5]]\".")
_GENERAL_CRITERIA = ("Your evaluation should consider factors such as the helpfulness, "
                     "relevance, accuracy, depth, creativity, and level of detail of the response.")
_REFERENCE_CRITERIA = ("Your evaluation should consider correctness and helpfulness. You will "
                       "be given a reference answer and the assistant's answer.")

SINGLE_V1 = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
    "provided by an AI assistant to the user question displayed below. " + _GENERAL_CRITERIA +
    " Begin your evaluation by providing a short explanation. Be as objective as possible. "
    + _RATE + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]")
SINGLE_MATH_V1 = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
    "provided by an AI assistant to the user question displayed below. " + _REFERENCE_CRITERIA +
    " Begin your evaluation by comparing the assistant's answer with the reference answer. "
    "Identify and correct any mistakes. Be as objective as possible. " + _RATE +
    "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n"
    "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]")
SINGLE_V1_SYSTEM = "You are a helpful assistant."

MULTI_TURN_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question displayed below. " + _GENERAL_CRITERIA +
    " You evaluation should focus on the assistant's answer to the second user question. Begin "
    "your evaluation by providing a short explanation. Be as objective as possible. " + _RATE +
    "\n\n")
MULTI_TURN_MATH_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an "
    "AI assistant to the user question. " + _REFERENCE_CRITERIA + " You evaluation should focus "
    "on the assistant's answer to the second question. Begin your evaluation by comparing the "
    "assistant's answer with the reference answer. Identify and correct any mistakes. Be as "
    "objective as possible. " + _RATE + "\n\n")
_CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
    "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>")
MULTI_TURN = _CONVERSATION
MULTI_TURN_MATH = (
    "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
    "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
    "<|The End of Reference Answer|>\n\n\n" + _CONVERSATION)

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def read_questions(data_dir: str, max_examples: int | None = None) -> list[dict]:
  """MT-Bench's questions ({question_id, category, turns[2], reference?}) from
  <data_dir>/eval/open_ended/mtbench_question.jsonl."""
  path = os.path.join(data_dir, "eval", "open_ended", "mtbench_question.jsonl")
  if not os.path.isfile(path):
    raise UserError(f"No MT-Bench questions at {path}: is the data directory right?")
  questions = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        question = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"{path}:{number}: not JSON ({e.msg}).") from None
      turns = question.get("turns") if isinstance(question, dict) else None
      if (not isinstance(turns, list) or len(turns) != 2
          or not all(isinstance(t, str) for t in turns)
          or not isinstance(question.get("category"), str)):
        raise UserError(f"{path}:{number}: an MT-Bench question needs \"category\" and two "
                        "string \"turns\".")
      questions.append(question)
  return questions if max_examples is None else questions[:max_examples]


def answer_questions(answer: Callable[[list[list[dict]]], list[str]],
                     questions: Sequence[Mapping]) -> list[list[str]]:
  """The model's two answers to each question: turn 2 is asked after its own turn-1 answer."""
  firsts = answer([[{"role": "user", "content": q["turns"][0]}] for q in questions])
  seconds = answer([[{"role": "user", "content": q["turns"][0]},
                     {"role": "assistant", "content": first},
                     {"role": "user", "content": q["turns"][1]}]
                    for q, first in zip(questions, firsts)])
  return [[first, second] for first, second in zip(firsts, seconds)]


def uses_reference(question: Mapping) -> bool:
  reference = question.get("reference")
  return (question["category"] in NEEDS_REFERENCE and isinstance(reference, list)
          and len(reference) >= 2)


def grading_request(question: Mapping, answers: Sequence[str], turn: int) -> list[dict]:
  """The judge's messages grading the answer to `turn` (1 or 2) of a question."""
  q1, q2 = question["turns"]
  with_reference = uses_reference(question)
  if turn == 1:
    if with_reference:
      user = SINGLE_MATH_V1.format(question=q1, ref_answer_1=question["reference"][0],
                                   answer=answers[0])
    else:
      user = SINGLE_V1.format(question=q1, answer=answers[0])
    return [{"role": "system", "content": SINGLE_V1_SYSTEM}, {"role": "user", "content": user}]
  fields = {"question_1": q1, "question_2": q2, "answer_1": answers[0], "answer_2": answers[1]}
  if with_reference:
    user = MULTI_TURN_MATH.format(ref_answer_1=question["reference"][0],
                                  ref_answer_2=question["reference"][1], **fields)
    system = MULTI_TURN_MATH_SYSTEM
  else:
    user, system = MULTI_TURN.format(**fields), MULTI_TURN_SYSTEM
  return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_rating(reply: str) -> float | None:
  """The rating in a judge's reply (FastChat's reading), or None when there is none in 1-10."""
  match = _RATING.search(reply or "") or _RATING_BACKUP.search(reply or "")
  if not match:
    return None
  rating = float(match.group(1))
  return rating if 1 <= rating <= 10 else None


def _mean(values: Sequence[float]) -> float:
  return sum(values) / len(values) if values else math.nan


def evaluate(judge: Judge,
             answers: Sequence[Sequence[str]] | Callable[[list[list[dict]]], list[str]],
             data_dir: str, *, max_examples: int | None = None,
             judgements_path: str | None = None) -> dict:
  """Grades the model's answers; returns the scores.

  `answers`: the model's [turn-1, turn-2] answers per question, in the file's order, or a
  function from conversations to replies (see `answer_questions`). `judgements_path`:
  where to write one JSON line per graded turn.
  """
  questions = read_questions(data_dir, max_examples)
  if callable(answers):
    answers = answer_questions(answers, questions)
  answers = [list(a) for a in answers]
  answers = answers[:len(questions)]
  if len(answers) < len(questions) or any(
      len(a) != 2 or not all(isinstance(text, str) for text in a) for a in answers):
    raise UserError(f"MT-Bench needs two string answers (turn 1, turn 2) for each of the "
                    f"{len(questions)} questions, in the question file's order.")
  requests = [grading_request(q, a, turn) for q, a in zip(questions, answers)
              for turn in (1, 2)]
  replies = judge.complete(requests)
  rows = []
  by_turn = {1: [], 2: []}
  by_category = defaultdict(lambda: {1: [], 2: []})
  for i, (question, pair) in enumerate(zip(questions, answers)):
    for turn in (1, 2):
      reply = replies[2 * i + turn - 1]
      rating = parse_rating(reply)
      rows.append({"question_id": question.get("question_id"), "category": question["category"],
                   "turn": turn, "question": question["turns"][turn - 1],
                   "answer": pair[turn - 1], "with_reference": uses_reference(question),
                   "judgement": reply, "rating": rating})
      if rating is not None:
        by_turn[turn].append(rating)
        by_category[question["category"]][turn].append(rating)
  categories = {name: {"score": _mean(turns[1] + turns[2]), "score_turn1": _mean(turns[1]),
                       "score_turn2": _mean(turns[2])}
                for name, turns in sorted(by_category.items())}
  result = {"score": _mean(by_turn[1] + by_turn[2]), "score_turn1": _mean(by_turn[1]),
            "score_turn2": _mean(by_turn[2]), "categories": categories,
            "n_questions": len(questions), "n_rated": len(by_turn[1]) + len(by_turn[2]),
            "unparsable": sum(row["rating"] is None for row in rows),
            "graded_without_reference": sum(q["category"] in NEEDS_REFERENCE
                                            and not uses_reference(q) for q in questions),
            "judge": judge.identity, "judge_requests": judge.requests_made}
  if judgements_path:
    write_judgements(judgements_path, rows)
  return result
