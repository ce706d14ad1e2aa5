"""Tests for the procedurally generated default-mixture tasks."""

from __future__ import annotations

import collections
import string
from typing import Callable

import pytest

from flan_jax_tasks import default_generators as dg

SAMPLE_SIZE = 200
MAX_PROMPT_CHARS = 100
MAX_ANSWER_CHARS = 16

GENERATOR_IDS = [g.name for g in dg.GENERATORS]


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _ints(items: str) -> list[int]:
    return [int(part) for part in items.split(", ")]


# Independent recomputation of each answer from the other fields.  A generator
# added without a checker here makes test_answers_are_correct fail on purpose.
CHECKERS: dict[str, Callable[[dict[str, str]], str]] = {
    "add": lambda f: str(int(f["a"]) + int(f["b"])),
    "subtract": lambda f: str(int(f["a"]) - int(f["b"])),
    "next_number": lambda f: str(int(f["n"]) + 1),
    "double": lambda f: str(int(f["n"]) * 2),
    "reverse_word": lambda f: "".join(reversed(f["word"])),
    "uppercase_word": lambda f: f["word"].upper(),
    "first_letter": lambda f: f["word"][:1],
    "repeat_word": lambda f: " ".join([f["word"]] * 2),
    "list_max": lambda f: str(max(_ints(f["items"]))),
    "list_min": lambda f: str(min(_ints(f["items"]))),
    "list_count": lambda f: str(len(_ints(f["items"]))),
    "list_first": lambda f: str(_ints(f["items"])[0]),
    "list_last": lambda f: str(_ints(f["items"])[-1]),
    "list_sort": lambda f: ", ".join(str(v) for v in sorted(_ints(f["items"]))),
    "list_contains": lambda f: "yes" if int(f["n"]) in _ints(f["items"]) else "no",
    "word_in_list": lambda f: "yes" if f["word"] in f["items"].split(", ") else "no",
    "starts_with": lambda f: "yes" if f["word"].startswith(f["letter"]) else "no",
    "longest_word": lambda f: max(f["items"].split(", "), key=len),
    "larger_number": lambda f: f["a"] if int(f["a"]) > int(f["b"]) else f["b"],
    "smaller_number": lambda f: f["a"] if int(f["a"]) < int(f["b"]) else f["b"],
    "is_even": lambda f: "no" if int(f["n"]) % 2 else "yes",
    "same_word": lambda f: "yes" if f["word1"] == f["word2"] else "no",
    "longer_word": lambda f: f["word1"] if len(f["word1"]) > len(f["word2"]) else f["word2"],
}

# Preconditions that make an answer unambiguous or keep it in the intended range.
VALIDITY: dict[str, Callable[[dict[str, str]], bool]] = {
    "subtract": lambda f: int(f["a"]) >= int(f["b"]),
    "larger_number": lambda f: f["a"] != f["b"],
    "smaller_number": lambda f: f["a"] != f["b"],
    # A unique longest word.
    "longest_word": lambda f: sorted(map(len, f["items"].split(", ")))[-1]
    != sorted(map(len, f["items"].split(", ")))[-2],
    "longer_word": lambda f: len(f["word1"]) != len(f["word2"]),
}


def _sample(generator: dg.Generator) -> list[dict[str, str]]:
    return dg.generate(generator, seed=0, count=SAMPLE_SIZE)


def test_generator_names_are_unique_and_well_formed() -> None:
    assert len(GENERATOR_IDS) == len(set(GENERATOR_IDS))
    allowed = set(string.ascii_lowercase + string.digits + "_")
    for name in GENERATOR_IDS:
        assert name and set(name) <= allowed, name


def test_clusters() -> None:
    counts = collections.Counter(g.cluster for g in dg.GENERATORS)
    assert len(dg.GENERATORS) >= 16
    assert set(counts) == {"arithmetic", "string_editing", "list_reasoning", "comparison"}
    assert all(n >= 4 for n in counts.values()), counts


@pytest.mark.parametrize("generator", dg.GENERATORS, ids=GENERATOR_IDS)
def test_templates_render(generator: dg.Generator) -> None:
    assert len(generator.templates) >= 3
    fields = dg.generate(generator, seed=1, count=1)[0]
    assert "answer" in fields
    options = fields.pop("options")
    assert fields["answer"] in options and len(set(options)) == len(options) >= 2
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    needed = set(fields) - {"answer"}
    for inputs_template, targets_template in generator.templates:
        inputs_fields = _template_fields(inputs_template)
        # The prompt must carry everything needed to answer, and must not leak the answer.
        assert inputs_fields == needed, (inputs_template, inputs_fields, needed)
        assert _template_fields(targets_template) <= set(fields)
        inputs_template.format(**fields)
        assert targets_template.format(**fields) != ""


@pytest.mark.parametrize("generator", dg.GENERATORS, ids=GENERATOR_IDS)
def test_generate_is_deterministic(generator: dg.Generator) -> None:
    first = dg.generate(generator, seed=7, count=20)
    assert len(first) == 20
    assert first == dg.generate(generator, seed=7, count=20)
    assert first != dg.generate(generator, seed=8, count=20)


@pytest.mark.parametrize("generator", dg.GENERATORS, ids=GENERATOR_IDS)
def test_answers_are_correct(generator: dg.Generator) -> None:
    assert generator.name in CHECKERS, f"add a checker for new generator {generator.name!r}"
    checker = CHECKERS[generator.name]
    valid = VALIDITY.get(generator.name, lambda f: True)
    for fields in _sample(generator):
        assert valid(fields), fields
        assert fields["answer"] == checker(fields), fields


CLASSIFIERS = [g for g in dg.GENERATORS if g.answer_options]


def test_some_tasks_are_classification() -> None:
    assert CLASSIFIERS


@pytest.mark.parametrize("generator", CLASSIFIERS, ids=[g.name for g in CLASSIFIERS])
def test_classification_answers_in_options(generator: dg.Generator) -> None:
    seen = {fields["answer"] for fields in _sample(generator)}
    assert seen <= set(generator.answer_options)
    # Both labels should occur, or the model can score well by always guessing one.
    assert seen == set(generator.answer_options)


@pytest.mark.parametrize("generator", dg.GENERATORS, ids=GENERATOR_IDS)
def test_lengths_fit_tiny_model(generator: dg.Generator) -> None:
    for fields in _sample(generator):
        for inputs_template, targets_template in generator.templates:
            assert len(inputs_template.format(**fields)) <= MAX_PROMPT_CHARS
            assert len(targets_template.format(**fields)) <= MAX_ANSWER_CHARS


# The held-out comparison tasks pick the larger, smaller or longer of two named things.
# Training list tasks must not teach that very rule through their options: were the
# distractor always another list item, "the larger of the two options" would answer
# list_max every time. Out-of-list distractors bring such a rule down to chance.
PAIRWISE_RULES = {
    "list_max": lambda options: max(options, key=int),
    "list_min": lambda options: min(options, key=int),
    "longest_word": lambda options: (max(options, key=len)
                                     if len(options[0]) != len(options[1]) else None),
}


@pytest.mark.parametrize("name", sorted(PAIRWISE_RULES))
def test_heldout_comparison_rules_do_not_solve_training_options(name) -> None:
    generator = next(g for g in dg.GENERATORS if g.name == name)
    records = dg.generate(generator, seed=0, count=2000)
    solved = sum(PAIRWISE_RULES[name](r["options"]) == r["answer"] for r in records)
    assert solved / len(records) < 0.6
    # ...while the answer is still the list's own largest / smallest / longest item.
    assert all(r["answer"] in r["items"].split(", ") for r in records)
