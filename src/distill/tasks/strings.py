"""String tasks on made-up words: reverse them, sort their letters, count a letter; the rationale spells the word
out letter by letter, as a model has to."""

from __future__ import annotations

import random

from distill.tasks.base import Problem, Task

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "dro", "fen", "gul", "bri", "sto", "wen")


def _word(generator: random.Random) -> str:
    return "".join(generator.choice(SYLLABLES) for _ in range(generator.randint(2, 4)))


def _spelled(word: str) -> str:
    return " ".join(word)


def draw_reverse(generator: random.Random) -> Problem:
    word = _word(generator)
    reversed_word = word[::-1]
    rationale = f"The letters are {_spelled(word)}.\nBackwards they are {_spelled(reversed_word)}."
    return Problem(f"reverse:{word}", f"Reverse the word '{word}'.", reversed_word, rationale, len(word))


def draw_sort(generator: random.Random) -> Problem:
    word = _word(generator)
    ordered = "".join(sorted(word))
    rationale = f"The letters are {_spelled(word)}.\nIn alphabetical order they are {_spelled(ordered)}."
    return Problem(f"sort:{word}", f"Sort the letters of '{word}' alphabetically.", ordered, rationale, len(word))


def draw_count(generator: random.Random) -> Problem:
    word = _word(generator)
    letter = generator.choice(sorted(set(word)))
    positions = [str(index + 1) for index, found in enumerate(word) if found == letter]
    rationale = (f"The letters are {_spelled(word)}.\n'{letter}' is at position {', '.join(positions)}, "
                 f"so it appears {len(positions)} times.")
    return Problem(f"count:{word}:{letter}", f"How many times does the letter '{letter}' appear in '{word}'?",
                   str(len(positions)), rationale, len(word))


def draw_any(generator: random.Random) -> Problem:
    return generator.choice((draw_reverse, draw_sort, draw_count))(generator)


WORDS = sum(len(SYLLABLES) ** length for length in (2, 3, 4))
TASKS = (
    Task("strings", "reverse a made-up word, sort its letters, or count a letter in it", draw_any, numeric=False,
         space=WORDS * 5),
    Task("reverse", "reverse a made-up word of 2 to 4 syllables", draw_reverse, numeric=False, space=WORDS),
)
