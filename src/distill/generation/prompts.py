"""The prompts a teacher answers: from the task suite or the user's file, each with a stable id and hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from distill.errors import DistillError

Content = str | list[dict[str, str]]


@dataclass(frozen=True)
class Prompt:
    id: str
    content: Content            # plain text, or chat messages
    reference: str | None = None  # a gold answer, for verification
    task: str | None = None

    @property
    def hash(self) -> str:
        return content_hash(self.content)


def content_hash(content: Content) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read_prompts(config: Any) -> list[Prompt]:
    """The prompts of a ``generate.prompts`` section, in a fixed order."""
    source = config.prompts
    if hasattr(source, "task"):
        import distill.tasks as tasks

        return [Prompt(item.id, item.prompt, item.answer, item.task)
                for item in tasks.examples(source.task, source.split, source.count, source.seed)]
    return _file_prompts(source)


def _file_prompts(source: Any) -> list[Prompt]:
    from distill.data.files import check_columns, file_parts

    columns = [source.column, *(column for column in (source.id_column, source.reference_column) if column)]
    with file_parts(source.path, None, source.format) as parts:
        table, where = parts["train"]
        check_columns(table, columns, where)
        rows = table.select(range(min(source.max_prompts or table.num_rows, table.num_rows)))
        prompts = [_row_prompt(row, position, source, where) for position, row in enumerate(rows)]
    if not prompts:
        raise DistillError(f"{where} has no prompts")
    ids = [prompt.id for prompt in prompts]
    if len(set(ids)) != len(ids):
        repeated = sorted({found for found in ids if ids.count(found) > 1})[:3]
        raise DistillError(f"{where}: prompt ids repeat ({', '.join(map(str, repeated))}"
                           + (f", column {source.id_column!r}" if source.id_column else ": the same prompt twice")
                           + "); every prompt needs its own id")
    return prompts


def _row_prompt(row: dict[str, Any], position: int, source: Any, where: str) -> Prompt:
    content = row[source.column]
    if isinstance(content, list):
        if not content or not all(isinstance(message, dict) and {"role", "content"} <= set(message)
                                  for message in content):
            raise DistillError(f"{where}, row {position}: column {source.column!r} holds a list that is not chat "
                               "messages ({role, content} each)")
        content = [{"role": str(message["role"]), "content": str(message["content"])} for message in content]
    elif not isinstance(content, str) or not content.strip():
        raise DistillError(f"{where}, row {position}: column {source.column!r} is "
                           + ("empty" if isinstance(content, str) else f"a {type(content).__name__}, not text")
                           + "; every prompt needs text (or chat messages)")
    prompt_id = str(row[source.id_column]) if source.id_column else content_hash(content)[:16]
    reference = row[source.reference_column] if source.reference_column else None
    return Prompt(prompt_id, content, None if reference is None else str(reference))
