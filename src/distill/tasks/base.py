"""What every task is made of: a drawn problem, the example it becomes, and the task that draws it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

ANSWER_MARK = "Answer:"


@dataclass(frozen=True)
class Example:
    id: str          # stable: the task and the problem's hash
    task: str
    prompt: str
    answer: str
    rationale: str   # the gold steps, each checkable
    steps: int       # how many operations the problem takes

    def completion(self, rationale: bool = True) -> str:
        """The gold answer as a model should write it: the steps, then ``Answer: ...`` on its own line."""
        final = f"{ANSWER_MARK} {self.answer}"
        return f"{self.rationale}\n{final}" if rationale else final

    def chat(self, rationale: bool = True) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.completion(rationale)}]


@dataclass(frozen=True)
class Problem:
    key: str         # canonical form: decides the split and the id
    prompt: str
    answer: str
    rationale: str
    steps: int


@dataclass(frozen=True)
class Task:
    name: str
    describe: str
    draw: Callable[[random.Random], Problem]
    numeric: bool     # answers compared as integers (commas and a trailing period ignored)
    space: int        # about how many distinct problems exist: more examples than a fifth of it are refused
