"""Verifiable tasks: procedurally generated problems with a gold answer, a gold step-by-step rationale and an exact
checker, for generation, on-policy and rationale distillation (where the teacher's mistakes must be countable).

    import distill.tasks as tasks
    train = tasks.examples("arithmetic", "train", 1000, seed=0)
    tasks.is_correct("arithmetic", "... Answer: 936", train[0])

Splits are fixed by the problem itself, not by the draw: a problem belongs to the test split when the hash of its
task and canonical form falls in the test fifth, so no seed or count can put a test problem into training.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from distill.errors import DistillError
from distill.tasks import arithmetic, strings, word_problems
from distill.tasks.base import ANSWER_MARK, Example, Problem, Task

__all__ = ["ANSWER_MARK", "Example", "Problem", "Task", "dataset", "examples", "extract_answer", "is_correct",
           "names", "normalise", "split_of", "task", "write_jsonl"]
SPLITS = ("train", "test")
TEST_SHARE = 5  # one problem in five is a test problem


def _registry() -> dict[str, Task]:
    return {task.name: task for module in (arithmetic, word_problems, strings) for task in module.TASKS}


def names() -> list[str]:
    return sorted(_registry())


def task(name: str) -> Task:
    registry = _registry()
    if name not in registry:
        raise DistillError(f"unknown task {name!r}; the tasks are: {', '.join(sorted(registry))}")
    return registry[name]


def split_of(task_name: str, key: str) -> str:
    digest = hashlib.sha256(f"{task_name}\0{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_SHARE == 0 else "train"


def examples(name: str, split: str, count: int, seed: int = 0) -> list[Example]:
    """``count`` distinct problems of task ``name`` from ``split``, the same for the same arguments."""
    chosen = task(name)
    if split not in SPLITS:
        raise DistillError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    share = chosen.space // TEST_SHARE if split == "test" else chosen.space - chosen.space // TEST_SHARE
    if count > share // 2:
        raise DistillError(f"task {name!r} has about {share:,} distinct {split} problems; ask for at most "
                           f"{share // 2:,} (got {count:,})")
    generator = random.Random(f"{name}/{split}/{seed}")
    found: dict[str, Example] = {}
    attempts = 0
    while len(found) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise DistillError(f"task {name!r}: could not draw {count:,} distinct {split} problems")
        problem = chosen.draw(generator)
        if problem.key in found or split_of(name, problem.key) != split:
            continue
        identity = hashlib.sha256(f"{name}\0{problem.key}".encode()).hexdigest()[:12]
        found[problem.key] = Example(f"{name}-{identity}", name, problem.prompt, problem.answer, problem.rationale,
                                     problem.steps)
    return list(found.values())


def extract_answer(text: str) -> str | None:
    """The answer a completion gives: what follows the last ``Answer:``, else its last non-empty line."""
    if ANSWER_MARK in text:
        answer = text.rsplit(ANSWER_MARK, 1)[1].strip().splitlines()
        return answer[0].strip() if answer else None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def normalise(answer: str, numeric: bool) -> str:
    answer = answer.strip().rstrip(".").strip().strip("'\"").lower()
    if numeric:
        candidate = answer.replace(",", "")
        if re.fullmatch(r"-?\d+", candidate):
            return str(int(candidate))
    return answer


def is_correct(name: str, completion: str, example: Example) -> bool:
    """Whether ``completion`` ends in the example's gold answer (exact, after normalisation)."""
    answer = extract_answer(completion)
    numeric = task(name).numeric
    return answer is not None and normalise(answer, numeric) == normalise(example.answer, numeric)


def write_jsonl(path: str | Path, items: Iterable[Example], *, rationale: bool = True) -> Path:
    """One record per example: its fields plus ``messages`` (user prompt, assistant completion), the chat format
    that ``data.lm: {format: chat}`` reads."""
    path = Path(path)
    with open(path, "w") as handle:
        for item in items:
            handle.write(json.dumps({**asdict(item), "messages": item.chat(rationale)}) + "\n")
    return path


def dataset(name: str, split: str, count: int, seed: int = 0, *, rationale: bool = True) -> Any:
    """The examples as a Hugging Face ``datasets.Dataset`` (the fields plus ``messages``)."""
    import datasets

    rows = [{**asdict(item), "messages": item.chat(rationale)} for item in examples(name, split, count, seed)]
    return datasets.Dataset.from_list(rows)
