"""Procedurally generated tasks for flan_jax's built-in default mixture.

The quickstart and the test suite need instruction data that costs no
download and no external dataset library, so these tasks are generated from
a seed.  They are deliberately tiny and easy: a ~1M-parameter byte-level model
should be able to learn part of them in a few hundred CPU steps, which makes
"did finetuning help?" observable in seconds.  Each task has several phrasings
(templates), as in FLAN, and the tasks fall into exactly four clusters so that
one cluster can be held out to measure generalisation to unseen task types.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Callable

CLUSTERS: tuple[str, ...] = ("arithmetic", "string_editing", "list_reasoning", "comparison")

# Short, common words so prompts stay well under the byte budget; lengths 3-5
# are all represented because "longer word" needs words of differing length.
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "red", "box", "cup", "hat", "pen", "map", "bus",
    "egg", "key", "jam", "fox",
    "bird", "fish", "tree", "book", "milk", "rain", "star", "moon", "door",
    "ship", "lamp", "cake", "frog",
    "apple", "house", "water", "green", "light", "chair", "bread", "plant",
    "river", "stone", "table", "cloud", "smile",
)

YES_NO: tuple[str, ...] = ("yes", "no")


@dataclasses.dataclass(frozen=True)
class Generator:
    name: str
    cluster: str
    make_fields: Callable[[random.Random], dict[str, str]]
    templates: tuple[tuple[str, str], ...]
    answer_options: tuple[str, ...] = ()  # a fixed label set (yes/no)
    # Fields whose values are the options (the two things compared); else the options
    # are the answer and the answer of another random record, in random order.
    option_fields: tuple[str, ...] = ()
    # A wrong answer drawn from the record itself (another item of the list); else
    # another record's answer.
    distractor: Callable[[dict[str, str], random.Random], str] | None = None


# The numbers that lists hold and the comparison tasks compare: single digits, so a
# ~1M-parameter byte model learns their order within the quickstart's few hundred
# steps (with two-digit numbers it learns list_max barely above chance, and magnitude
# does not transfer). 0 and 9 stay outside, free to be distractors beyond a list's
# smallest or largest item (see `_beyond_or_other`).
NUMBERS = range(1, 9)


def _digits(rng: random.Random, low: int = 3, high: int = 5) -> list[int]:
    return rng.sample(NUMBERS, rng.randint(low, high))


def _join(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


# --- arithmetic --------------------------------------------------------------

def _add(rng: random.Random) -> dict[str, str]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return {"a": str(a), "b": str(b), "answer": str(a + b)}


def _subtract(rng: random.Random) -> dict[str, str]:
    # Draw b <= a so the model never has to produce a minus sign.
    a = rng.randint(0, 9)
    b = rng.randint(0, a)
    return {"a": str(a), "b": str(b), "answer": str(a - b)}


def _next_number(rng: random.Random) -> dict[str, str]:
    n = rng.randint(0, 49)
    return {"n": str(n), "answer": str(n + 1)}


def _double(rng: random.Random) -> dict[str, str]:
    n = rng.randint(0, 9)
    return {"n": str(n), "answer": str(2 * n)}


def _is_even(rng: random.Random) -> dict[str, str]:
    n = rng.randint(0, 99)
    return {"n": str(n), "answer": "yes" if n % 2 == 0 else "no"}


# --- string editing ----------------------------------------------------------

def _reverse_word(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    return {"word": word, "answer": word[::-1]}


def _uppercase_word(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    return {"word": word, "answer": word.upper()}


def _first_letter(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    return {"word": word, "answer": word[0]}


def _repeat_word(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    return {"word": word, "answer": f"{word} {word}"}


# --- list reasoning ----------------------------------------------------------

def _list_max(rng: random.Random) -> dict[str, str]:
    values = _digits(rng)
    return {"items": _join(values), "answer": str(max(values))}


def _list_min(rng: random.Random) -> dict[str, str]:
    values = _digits(rng)
    return {"items": _join(values), "answer": str(min(values))}


def _list_count(rng: random.Random) -> dict[str, str]:
    values = _digits(rng)
    return {"items": _join(values), "answer": str(len(values))}


def _list_first(rng: random.Random) -> dict[str, str]:
    values = _digits(rng)
    return {"items": _join(values), "answer": str(values[0])}


def _list_last(rng: random.Random) -> dict[str, str]:
    values = _digits(rng)
    return {"items": _join(values), "answer": str(values[-1])}


def _list_sort(rng: random.Random) -> dict[str, str]:
    # At most 4 items: a sorted 5-item list would overflow the answer budget.
    values = _digits(rng, 3, 4)
    return {"items": _join(values), "answer": _join(sorted(values))}


def _other_item(fields: dict[str, str], rng: random.Random) -> str:
    return rng.choice([i for i in fields["items"].split(", ") if i != fields["answer"]])


def _beyond_or_other(beyond: Callable[[dict[str, str]], list[str]]):
    """A distractor that is, half the time, not in the list but beyond its answer (a
    number above the maximum, a word at least as long as the longest), else another item.

    Another item alone would always be smaller (or shorter) than the answer, so
    "pick the larger of the two options" would solve the options variants, and that
    is the held-out comparison task itself. With out-of-list distractors that rule
    scores about half; the model has to find the answer in the list.
    """
    def distractor(fields: dict[str, str], rng: random.Random) -> str:
        candidates = beyond(fields)
        if candidates and rng.random() < 0.5:
            return rng.choice(candidates)
        return _other_item(fields, rng)
    return distractor


def _above_max(fields: dict[str, str]) -> list[str]:
    return [str(v) for v in range(int(fields["answer"]) + 1, 10)]


def _below_min(fields: dict[str, str]) -> list[str]:
    return [str(v) for v in range(int(fields["answer"]))]


def _as_long_a_word(fields: dict[str, str]) -> list[str]:
    # Words of 5 letters are the longest there are, so "at least as long" (a tie
    # leaves the pairwise rule no answer).
    items = fields["items"].split(", ")
    return [w for w in WORDS if len(w) >= len(fields["answer"]) and w not in items]


def _list_contains(rng: random.Random) -> dict[str, str]:
    values = _digits(rng)
    probe = rng.choice(values) if rng.random() < 0.5 else rng.choice(
        [v for v in range(10) if v not in values])
    return {"items": _join(values), "n": str(probe), "answer": "yes" if probe in values else "no"}


def _word_in_list(rng: random.Random) -> dict[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))  # 5 words overflow the 96-byte prompts
    probe = rng.choice(words) if rng.random() < 0.5 else rng.choice(
        [w for w in WORDS if w not in words])
    return {"items": ", ".join(words), "word": probe, "answer": "yes" if probe in words else "no"}


def _starts_with(rng: random.Random) -> dict[str, str]:
    word = rng.choice(WORDS)
    letter = word[0] if rng.random() < 0.5 else rng.choice([c for c in "abcdefghlmprst" if c != word[0]])
    return {"word": word, "letter": letter, "answer": "yes" if word[0] == letter else "no"}


def _longest_word(rng: random.Random) -> dict[str, str]:
    # A unique longest word, so the answer is unambiguous.
    while True:
        words = rng.sample(WORDS, rng.randint(3, 4))
        lengths = sorted(len(w) for w in words)
        if lengths[-1] != lengths[-2]:
            break
    return {"items": ", ".join(words), "answer": max(words, key=len)}


# --- comparison --------------------------------------------------------------

def _larger_number(rng: random.Random) -> dict[str, str]:
    # Distinct numbers, otherwise "which is larger" has no single answer.
    a, b = rng.sample(NUMBERS, 2)
    return {"a": str(a), "b": str(b), "answer": str(max(a, b))}


def _smaller_number(rng: random.Random) -> dict[str, str]:
    a, b = rng.sample(NUMBERS, 2)
    return {"a": str(a), "b": str(b), "answer": str(min(a, b))}


def _same_word(rng: random.Random) -> dict[str, str]:
    # Force a 50/50 label split; two independent draws would almost never match.
    word1 = rng.choice(WORDS)
    if rng.random() < 0.5:
        word2 = word1
    else:
        word2 = rng.choice([w for w in WORDS if w != word1])
    return {"word1": word1, "word2": word2, "answer": "yes" if word1 == word2 else "no"}


def _longer_word(rng: random.Random) -> dict[str, str]:
    # Differing lengths keep the answer unambiguous.
    word1 = rng.choice(WORDS)
    word2 = rng.choice([w for w in WORDS if len(w) != len(word1)])
    return {"word1": word1, "word2": word2, "answer": max(word1, word2, key=len)}


GENERATORS: tuple[Generator, ...] = (
    Generator("add", "arithmetic", _add, (
        ("What is {a} plus {b}?", "{answer}"),
        ("Add {a} and {b}.", "{answer}"),
        ("Compute the sum: {a} + {b} =", "{answer}"),
        ("If you have {a} apples and get {b} more, how many do you have?", "{answer}"),
    )),
    Generator("subtract", "arithmetic", _subtract, (
        ("What is {a} minus {b}?", "{answer}"),
        ("Subtract {b} from {a}.", "{answer}"),
        ("Compute: {a} - {b} =", "{answer}"),
        ("Take {b} away from {a}. What is left?", "{answer}"),
    )),
    Generator("next_number", "arithmetic", _next_number, (
        ("What number comes after {n}?", "{answer}"),
        ("Which number follows {n}?", "{answer}"),
        ("Count up by one from {n}.", "{answer}"),
        ("What is {n} plus one?", "{answer}"),
    )),
    Generator("double", "arithmetic", _double, (
        ("What is double {n}?", "{answer}"),
        ("Multiply {n} by 2.", "{answer}"),
        ("What is twice {n}?", "{answer}"),
        ("Compute {n} + {n} =", "{answer}"),
    )),
    Generator("is_even", "arithmetic", _is_even, (
        ("Is {n} an even number?", "{answer}"),
        ("Is {n} even? Answer yes or no.", "{answer}"),
        ("Is {n} divisible by 2?", "{answer}"),
    ), answer_options=YES_NO),
    Generator("reverse_word", "string_editing", _reverse_word, (
        ("Reverse the word {word}.", "{answer}"),
        ("Spell {word} backwards.", "{answer}"),
        ("Write the letters of \"{word}\" in reverse order.", "{answer}"),
    )),
    Generator("uppercase_word", "string_editing", _uppercase_word, (
        ("Write {word} in capital letters.", "{answer}"),
        ("Convert to uppercase: {word}", "{answer}"),
        ("Uppercase the word \"{word}\".", "{answer}"),
    )),
    Generator("first_letter", "string_editing", _first_letter, (
        ("What is the first letter of {word}?", "{answer}"),
        ("Which letter does {word} start with?", "{answer}"),
        ("Give the first letter of the word \"{word}\".", "{answer}"),
    )),
    Generator("repeat_word", "string_editing", _repeat_word, (
        ("Repeat the word {word} twice.", "{answer}"),
        ("Say {word} two times.", "{answer}"),
        ("Write \"{word}\" twice, separated by a space.", "{answer}"),
    )),
    Generator("starts_with", "string_editing", _starts_with, (
        ("Does {word} start with the letter {letter}?", "{answer}"),
        ("Is {letter} the first letter of {word}? Answer yes or no.", "{answer}"),
        ("Does the word \"{word}\" begin with \"{letter}\"?", "{answer}"),
    ), answer_options=YES_NO),
    Generator("list_max", "list_reasoning", _list_max, (
        ("What is the largest number in {items}?", "{answer}"),
        ("Find the maximum of: {items}", "{answer}"),
        ("Which is biggest: {items}?", "{answer}"),
    ), distractor=_beyond_or_other(_above_max)),
    Generator("list_min", "list_reasoning", _list_min, (
        ("What is the smallest number in {items}?", "{answer}"),
        ("Find the minimum of: {items}", "{answer}"),
        ("Which is lowest: {items}?", "{answer}"),
    ), distractor=_beyond_or_other(_below_min)),
    Generator("list_count", "list_reasoning", _list_count, (
        ("How many numbers are in this list: {items}?", "{answer}"),
        ("Count the items: {items}", "{answer}"),
        ("How many entries does [{items}] have?", "{answer}"),
    )),
    Generator("list_first", "list_reasoning", _list_first, (
        ("What is the first number in {items}?", "{answer}"),
        ("List: {items}. Which number comes first?", "{answer}"),
        ("Give the first item of [{items}].", "{answer}"),
    ), distractor=_other_item),
    Generator("list_last", "list_reasoning", _list_last, (
        ("What is the last number in {items}?", "{answer}"),
        ("List: {items}. Which number comes last?", "{answer}"),
        ("Give the final item of [{items}].", "{answer}"),
    ), distractor=_other_item),
    Generator("list_contains", "list_reasoning", _list_contains, (
        ("Is {n} in the list {items}?", "{answer}"),
        ("List: {items}. Does it contain {n}? Answer yes or no.", "{answer}"),
        ("Can {n} be found in [{items}]?", "{answer}"),
    ), answer_options=YES_NO),
    Generator("word_in_list", "list_reasoning", _word_in_list, (
        ("Is {word} one of these words: {items}?", "{answer}"),
        ("Words: {items}. Does the list include {word}? Answer yes or no.", "{answer}"),
        ("Can the word \"{word}\" be found in [{items}]?", "{answer}"),
    ), answer_options=YES_NO),
    Generator("longest_word", "list_reasoning", _longest_word, (
        ("Which word in {items} is the longest?", "{answer}"),
        ("Find the longest word: {items}", "{answer}"),
        ("List: {items}. Which word has the most letters?", "{answer}"),
    ), distractor=_beyond_or_other(_as_long_a_word)),
    Generator("list_sort", "list_reasoning", _list_sort, (
        ("Sort in ascending order: {items}", "{answer}"),
        ("Order from smallest to largest: {items}", "{answer}"),
        ("Arrange [{items}] from low to high.", "{answer}"),
    )),
    Generator("larger_number", "comparison", _larger_number, (
        ("Which is larger, {a} or {b}?", "{answer}"),
        ("What is the bigger number: {a} or {b}?", "{answer}"),
        ("Pick the greater of {a} and {b}.", "{answer}"),
    ), option_fields=("a", "b")),
    Generator("smaller_number", "comparison", _smaller_number, (
        ("Which is smaller, {a} or {b}?", "{answer}"),
        ("What is the lesser number: {a} or {b}?", "{answer}"),
        ("Pick the smaller of {a} and {b}.", "{answer}"),
    ), option_fields=("a", "b")),
    Generator("same_word", "comparison", _same_word, (
        ("Are {word1} and {word2} the same word?", "{answer}"),
        ("Is \"{word1}\" identical to \"{word2}\"?", "{answer}"),
        ("Do {word1} and {word2} match? Answer yes or no.", "{answer}"),
    ), answer_options=YES_NO),
    Generator("longer_word", "comparison", _longer_word, (
        ("Which word is longer, {word1} or {word2}?", "{answer}"),
        ("Which has more letters: {word1} or {word2}?", "{answer}"),
        ("Pick the longer word: {word1}, {word2}", "{answer}"),
    ), option_fields=("word1", "word2")),
)


def _options(generator: Generator, fields: dict[str, str], rng: random.Random) -> list[str]:
    if generator.answer_options:
        return list(generator.answer_options)
    if generator.option_fields:
        return [fields[f] for f in generator.option_fields]
    while True:  # a wrong answer of the same kind
        if generator.distractor is not None:
            other = generator.distractor(fields, rng)
        else:
            other = generator.make_fields(rng)["answer"]
        if other != fields["answer"]:
            break
    options = [fields["answer"], other]
    rng.shuffle(options)
    return options


def generate(generator: Generator, seed: int, count: int) -> list[dict]:
    """Returns `count` field dicts, reproducible from (generator.name, seed).

    Each also has "options": the answer among one or more wrong ones, which the
    options variants show and rank classification scores.
    """
    # Seeding with the name keeps tasks independent even when they share a seed.
    rng = random.Random(f"{generator.name}:{seed}")
    records = []
    for _ in range(count):
        fields = generator.make_fields(rng)
        records.append({**fields, "options": _options(generator, fields, rng)})
    return records
