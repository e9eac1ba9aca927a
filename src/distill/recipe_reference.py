"""The recipe reference, generated from the schema: every section of a recipe with its fields' types, defaults,
constraints and descriptions, read off the pydantic models in :mod:`distill.config`.

``python -m distill.recipe_reference > docs/recipes.md`` writes the Markdown reference (a test fails when the file
is out of date); ``python -m distill.recipe_reference --text`` prints the same as plain text. ``distill check
RECIPE --explain`` prints the sections one recipe uses, with its resolved values beside the defaults.

The schema is the single source: a field's description lives in ``Field(description=...)``, next to its type
and default, so the reference cannot drift from what the validator accepts.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import replace
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from distill.config import Recipe
from distill.recipe_schema import (
    Reference,
    Row,
    Section,
    group_heading,
    group_intro,
    schema_row,
    section_doc,
    section_label,
    section_title,
    text_title,
    used_at,
    walk,
    yaml_text,
)

REGENERATE = "python -m distill.recipe_reference > docs/recipes.md"
TEXT_WIDTH = 100


# --------------------------------------------------------------------------------------------------- Markdown
def _markdown_text(text: str) -> str:
    """Escape what Markdown would swallow outside code spans: ``<name>`` would vanish as an HTML tag."""
    pieces = text.split("`")
    for index in range(0, len(pieces), 2):
        pieces[index] = pieces[index].replace("<", "&lt;").replace("*", r"\*")
    return "`".join(pieces)


def _cell(text: str) -> str:
    return text.replace("|", r"\|")  # a bare | ends a table cell, even inside a code span


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _markdown_row(row: Row) -> str:
    default = row.default if row.default in ("required", "(section defaults)") else _code(row.default)
    cells = [_code(row.path), row.type, default, _code(row.constraints) if row.constraints else "",
             _markdown_text(row.description)]
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def _markdown_section(section: Section, reference: Reference) -> list[str]:
    lines = [f'<a id="{section.anchor}"></a>', "", f"### {section_title(section, reference)}", ""]
    lines += [line for paragraph in section_doc(section.model) for line in (_markdown_text(paragraph), "")]
    also = used_at(section)
    if also:
        lines += [also, ""]
    lines += ["| Field | Type | Default | Constraints | Description |", "| --- | --- | --- | --- | --- |"]
    lines += [_markdown_row(schema_row(section, name, info, markdown=True))
              for name, info in section.model.model_fields.items()]
    return lines + [""]


def _contents(reference: Reference) -> list[str]:
    lines = ["Contents:", ""]
    for group, members in reference.groups():
        heading, anchor = group_heading(group)
        links = ", ".join(f"[{section_title(section, reference)}](#{section.anchor})" for section in members)
        lines.append(f"- [{heading}](#{anchor}): {links}")
    return lines + [""]


def render_markdown(reference: Reference | None = None) -> str:
    """docs/recipes.md: one section per model, grouped, each a table of its fields."""
    reference = reference or walk()
    lines = ["# Recipe reference", "",
             f"_Generated from the pydantic models in `src/distill/config/` by `{REGENERATE}`. Do not edit it by "
             "hand: change a field's `description` there and regenerate._", "",
             "Every field of a recipe: its type, its default, the constraints the validator enforces and what it "
             "does. `distill check RECIPE` prints a recipe with every default filled in; `distill check RECIPE "
             "--explain` shows the sections that recipe uses, its values beside the defaults. Constraints marked "
             "\"(checked)\" in a description are enforced by a validator across fields.", ""]
    lines += _contents(reference)
    for group, members in reference.groups():
        heading, anchor = group_heading(group)
        lines += [f'<a id="{anchor}"></a>', "", f"## {heading}", "", _markdown_text(group_intro(group, reference)),
                  ""]
        for section in members:
            lines += _markdown_section(section, reference)
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------- plain text
def _plain(text: str) -> str:
    return text.replace("`", "")


def _text_row(row: Row, width: int) -> list[str]:
    default = row.default if row.default == "required" else f"default {row.default}"
    details = f"{row.type}, {default}" + (f"; {row.constraints}" if row.constraints else "")
    if row.value is None:
        head = f"  {row.path}: {details}"
    else:
        head = f"  {row.path} = {_shorten(row.value, width)}" + ("  [set]" if row.changed else "") + f"   ({details})"
    body = _fill(_plain(row.description), width, " " * 6)
    return [head, body] if row.description else [head]


def _fill(text: str, width: int, indent: str) -> str:
    # Hyphens are kept with their word: paths and values such as un-augmented or hf-config must not be split.
    return textwrap.fill(text, width=width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)


def _shorten(value: str, width: int) -> str:
    """A long value (a recipe's description) cut to fit one line; the recipe file holds the whole of it."""
    limit = max(20, width // 2)
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _text_section(title: str, doc: list[str], rows: list[Row], width: int, note: str | None = None) -> list[str]:
    lines = [_plain(title), "-" * min(len(_plain(title)), width)]
    lines += [_fill(_plain(paragraph), width, "  ") for paragraph in doc]
    if note:
        lines.append(_fill(_plain(note), width, "  "))
    return lines + [""] + [line for row in rows for line in _text_row(row, width)] + [""]


def render_text(reference: Reference | None = None, width: int = TEXT_WIDTH) -> str:
    """The whole reference for a terminal: the Markdown's content without tables or links."""
    reference = reference or walk()
    lines: list[str] = []
    for group, members in reference.groups():
        heading, _ = group_heading(group)
        lines += ["=" * min(len(_plain(heading)), width), _plain(heading), "=" * min(len(_plain(heading)), width),
                  _fill(_plain(group_intro(group, reference)), width, ""), ""]
        for section in members:
            rows = [schema_row(section, name, info, markdown=False)
                    for name, info in section.model.model_fields.items()]
            title = text_title(section_label(section, reference), section.model.__name__)
            lines += _text_section(title, section_doc(section.model), rows, width, used_at(section))
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------- one recipe
def _value_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return "(section below)"
    if isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
        return f"{len(value)} item{'s' if len(value) != 1 else ''} (sections below)"
    return yaml_text(value)


def _differs(info: FieldInfo, value: Any) -> bool:
    return info.is_required() or value != info.get_default(call_default_factory=True)


def _instance_sections(instance: BaseModel, path: str = "") -> list[tuple[str, BaseModel]]:
    """(path, model instance) of every section a recipe holds, depth-first: list items as ``terms[0]``."""
    found = [(path, instance)]
    for name in type(instance).model_fields:
        value = getattr(instance, name)
        child = f"{path}.{name}" if path else name
        if isinstance(value, BaseModel):
            found += _instance_sections(value, child)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    found += _instance_sections(item, f"{child}[{index}]")
    return found


def explain_recipe(recipe: Recipe, width: int = TEXT_WIDTH) -> str:
    """The reference of the sections ``recipe`` uses, each field with the recipe's resolved value beside its
    default; ``[set]`` marks the values that differ from the default."""
    reference = walk()
    sections = {section.model: section for section in reference.sections}
    lines = [_fill(f"Recipe {recipe.name!r}: every field of the sections it uses, its resolved value, then its "
                   "type, default and constraints. [set]: differs from the default.", width, ""), ""]
    for path, instance in _instance_sections(recipe):
        model = type(instance)
        # The schema row, at this instance's own path (terms[1], not terms[]), with the recipe's value.
        rows = [replace(schema_row(sections[model], name, info, markdown=False),
                        path=f"{path}.{name}" if path else name, value=_value_text(getattr(instance, name)),
                        changed=_differs(info, getattr(instance, name)))
                for name, info in model.model_fields.items()]
        lines += _text_section(text_title(path or None, model.__name__), section_doc(model), rows, width)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.recipe_reference", description=__doc__.split("\n\n")[0])
    parser.add_argument("--text", action="store_true", help="plain text for a terminal instead of Markdown")
    arguments = parser.parse_args(argv)
    sys.stdout.write(render_text() if arguments.text else render_markdown())


if __name__ == "__main__":  # pragma: no cover
    main()
