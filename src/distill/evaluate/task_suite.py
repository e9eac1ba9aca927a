"""Exact-match accuracy on the verifiable task suite: every model answers the same problems greedily, each answer
is checked against the gold one, and students are compared with the teacher item by item (which of the teacher's
errors they inherited, how often their final answers agree)."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.config import DecodingConfig
from distill.generation.local import LocalBackend
from distill.generation.prompts import Prompt


def answers_of(model: nn.Module, tokenizer: Any, prompts: list[Prompt], suite: Any) -> dict[str, str]:
    """The completion ``model`` gives to each prompt (greedy), by prompt id."""
    backend = LocalBackend(model, tokenizer, DecodingConfig(max_new_tokens=suite.max_new_tokens, temperature=0))
    found = {}
    for batch in backend.batches(prompts, suite.batch_size):
        for (prompt, _), (answer,) in zip(batch, backend.answer(batch, seed=0)):
            found[prompt.id] = answer.text
    return found


def task_suite_metrics(models: dict[str, nn.Module], tokenizer: Any, suite: Any) -> dict[str, dict[str, Any]]:
    import distill.tasks as tasks

    items = tasks.examples(suite.task, suite.split, suite.count, seed=0)
    prompts = [Prompt(item.id, item.prompt, item.answer, item.task) for item in items]
    correct, given = {}, {}
    for name, model in models.items():
        completions = answers_of(model, tokenizer, prompts, suite)
        given[name] = {item.id: tasks.extract_answer(completions[item.id]) for item in items}
        correct[name] = {item.id for item in items if tasks.is_correct(suite.task, completions[item.id], item)}
    results: dict[str, dict[str, Any]] = {}
    teacher_wrong = {item.id for item in items} - correct["teacher"] if "teacher" in correct else None
    for name in models:
        row: dict[str, Any] = {"task_exact_match": round(len(correct[name]) / len(items), 6)}
        if teacher_wrong is not None and name != "teacher":
            row["task_answer_agreement"] = round(sum(given[name][item.id] == given["teacher"][item.id]
                                                     for item in items) / len(items), 6)
            # inherited: the teacher's errors the student makes too (with the same wrong answer)
            inherited = sum(given[name][key] == given["teacher"][key] for key in teacher_wrong)
            row["task_inherited_errors"] = inherited
            row["task_teacher_errors"] = len(teacher_wrong)
        results[name] = row
    return results
