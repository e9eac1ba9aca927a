"""The recipe schema as the reference sees it: the sections of a recipe reached from ``Recipe`` (with the
unions of model specs and regimes grouped), and one row per field with its type, default, constraints and
description, read off the pydantic models in :mod:`distill.config`. Rendered by :mod:`distill.recipe_reference`."""

from __future__ import annotations

import inspect
import types
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import distill.config as config
from distill.config import Recipe

ROOT_GROUP = "recipe"


# --------------------------------------------------------------------------------------------------- groups
@dataclass(frozen=True)
class UnionStyle:
    """How the members of one discriminated union are presented: under their own heading, and named by a short
    noun in the type column of the fields that take them."""
    heading: str
    anchor: str
    noun: str
    intro: str  # {paths}: where the union is used; {key}: its discriminator


# Keyed by the union's first member: the same union (ModelSpec) sits in several fields, always in this order.
UNION_STYLES: dict[type[BaseModel], UnionStyle] = {
    config.MLPSpec: UnionStyle(
        "Models (`kind:`)", "models", "model",
        "{paths} each take one of these model specs, chosen by `{key}`."),
    config.MultiTeacherMode: UnionStyle(
        "Regimes (`mode:`)", "regimes", "regime",
        "{paths} picks a training regime beyond one frozen teacher, chosen by `{key}`; without it a run trains one "
        "student from one teacher. The sections a regime nests follow it."),
    config.TaskPromptsConfig: UnionStyle(
        "Prompt sources (`generate.prompts`)", "prompt-sources", "prompt source",
        "{paths} takes one of these, told apart by their keys: prompts drawn from the task suite (`task:`) or read "
        "from your file (`path:`)."),
    config.LengthFilter: UnionStyle(
        "Filters (`filters[].kind:`)", "filters", "filter",
        "{paths} is a list of these, run in order by distill filter, each chosen by `{key}`."),
}
ROOT_HEADING = "Sections"
ROOT_INTRO = ("The top-level keys of a recipe, then the sections under them. A recipe is YAML (or a dict in "
              "Python); unknown keys are refused, with the closest valid key suggested.")


# --------------------------------------------------------------------------------------------------- the walk
@dataclass(frozen=True)
class Occurrence:
    """One place a model class sits in a recipe: its dotted path (``[]`` for a list item), the group it is shown
    in, and its discriminator value when it was reached through a union."""
    path: str
    group: Any  # ROOT_GROUP, or the first member class of the union it belongs to
    tag: str | None
    order: int  # breadth-first: shallower places first

    @property
    def depth(self) -> int:
        return len(self.path.split(".")) if self.path else 0


@dataclass
class Section:
    """A model class with every place it occurs."""
    model: type[BaseModel]
    occurrences: list[Occurrence] = field(default_factory=list)

    @property
    def home(self) -> Occurrence:
        return min(self.occurrences, key=lambda place: (place.depth, place.order))

    @property
    def prefix(self) -> str | None:
        """The path its fields are shown under: the one shallowest place, or None when several tie (a model spec
        is as much ``student.model`` as ``teacher.model``)."""
        shallowest = min(place.depth for place in self.occurrences)
        paths = {place.path for place in self.occurrences if place.depth == shallowest}
        return paths.pop() if len(paths) == 1 else None

    @property
    def paths(self) -> list[str]:
        return list(dict.fromkeys(place.path for place in sorted(self.occurrences, key=lambda p: p.order)))

    @property
    def anchor(self) -> str:
        return self.model.__name__.lower()

    def field_path(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


@dataclass(frozen=True)
class Reference:
    """The schema walked from the root: sections in reading order, and where each union is used."""
    sections: list[Section]
    union_paths: dict[type[BaseModel], list[str]]
    union_keys: dict[type[BaseModel], str]

    def groups(self) -> list[tuple[Any, list[Section]]]:
        order: dict[Any, list[Section]] = {ROOT_GROUP: []}
        for section in self.sections:
            order.setdefault(section.home.group, []).append(section)
        return [(group, members) for group, members in order.items() if members]


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _is_union(origin: Any) -> bool:
    return origin is Union or origin is types.UnionType


def models_in(annotation: Any, suffix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(path suffix, model class) for every model an annotation can hold; list items get the suffix ``[]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if _is_model(annotation):
        return [(suffix, annotation)]
    if origin is Annotated:
        return models_in(args[0], suffix)
    if origin in (list, tuple, set, frozenset):
        return [found for argument in args for found in models_in(argument, suffix + "[]")]
    if origin is dict:
        return models_in(args[1], suffix + ".NAME")
    if _is_union(origin):
        return [found for argument in args for found in models_in(argument, suffix)]
    return []


def discriminator(info: FieldInfo) -> str | None:
    """The discriminator of a union field: set on the field, or inside an ``Annotated`` alias such as ModeSpec."""
    if isinstance(info.discriminator, str):
        return info.discriminator
    pending = [info.annotation]
    while pending:
        annotation = pending.pop()
        if get_origin(annotation) is Annotated:
            for extra in get_args(annotation)[1:]:
                if isinstance(extra, FieldInfo) and isinstance(extra.discriminator, str):
                    return extra.discriminator
        pending.extend(get_args(annotation))
    return None


def _slots(info: FieldInfo) -> dict[str, list[type[BaseModel]]]:
    slots: dict[str, list[type[BaseModel]]] = {}
    for suffix, model in models_in(info.annotation):
        if model not in slots.setdefault(suffix, []):
            slots[suffix].append(model)
    return slots


def walk(root: type[BaseModel] = Recipe) -> Reference:
    """Every place every model occurs, breadth-first from ``root`` (so the first place found is a shallowest)."""
    sections: dict[type[BaseModel], Section] = {}
    union_paths: dict[type[BaseModel], list[str]] = {}
    union_keys: dict[type[BaseModel], str] = {}
    queue = deque([(root, "", ROOT_GROUP, None, (root,))])
    order = 0
    while queue:
        model, path, group, tag, ancestors = queue.popleft()
        sections.setdefault(model, Section(model)).occurrences.append(Occurrence(path, group, tag, order))
        order += 1
        for name, info in model.model_fields.items():
            for suffix, members in _slots(info).items():
                child_path = f"{path}.{name}{suffix}" if path else f"{name}{suffix}"
                key = discriminator(info) if len(members) > 1 else None
                if len(members) > 1 and child_path not in union_paths.get(members[0], []):
                    union_paths.setdefault(members[0], []).append(child_path)
                    union_keys[members[0]] = key or "kind"
                for member in members:
                    if member in ancestors:  # a recursive model would never end; its first level is enough
                        continue
                    child_group = members[0] if len(members) > 1 else group
                    child_tag = _tag(member, key) if key else None
                    queue.append((member, child_path, child_group, child_tag, (*ancestors, member)))
    return Reference(_reading_order(root, sections), union_paths, union_keys)


def _tag(model: type[BaseModel], key: str) -> str | None:
    info = model.model_fields.get(key)
    return str(info.default) if info is not None and isinstance(info.default, str) else None


def _reading_order(root: type[BaseModel], sections: dict[type[BaseModel], Section]) -> list[Section]:
    """Depth-first from the root, entering each model only at its home, so a section's sub-sections follow it
    (NamedTeacher right after the multi-teacher regime) and a shared one comes where it is first at home."""
    ordered: list[Section] = []

    def visit(model: type[BaseModel], path: str) -> None:
        section = sections[model]
        if section in ordered or section.home.path != path:
            return
        ordered.append(section)
        for name, info in model.model_fields.items():
            for suffix, members in _slots(info).items():
                for member in members:
                    visit(member, f"{path}.{name}{suffix}" if path else f"{name}{suffix}")

    visit(root, "")
    return ordered


def all_models() -> list[type[BaseModel]]:
    """Every pydantic model defined in the distill.config package, in the order it exports them."""
    return [value for value in vars(config).values()
            if _is_model(value) and value.__module__.startswith(config.__name__ + ".") and value.model_fields]


# --------------------------------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    constraints: str
    description: str
    value: str | None = None   # a recipe's resolved value (--explain)
    changed: bool = False      # the value differs from the default


def _link(text: str, anchor: str, markdown: bool) -> str:
    return f"[{text}](#{anchor})" if markdown else text


def type_text(annotation: Any, markdown: bool) -> str:
    """A field's type as a recipe writer reads it: ``null`` for None, a model by its section, a union of
    models by its noun (``model``, ``regime``)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if _is_model(annotation):
        return _link(annotation.__name__, annotation.__name__.lower(), markdown)
    if origin is Annotated:
        return type_text(args[0], markdown)
    if origin is Literal:
        return " | ".join(dict.fromkeys(type(value).__name__ for value in args))
    if origin in (list, tuple, set, frozenset):
        return f"list[{type_text(args[0], markdown)}]"
    if origin is dict:
        return f"dict[{type_text(args[0], markdown)}, {type_text(args[1], markdown)}]"
    if _is_union(origin):
        style = UNION_STYLES.get(args[0]) if all(map(_is_model, args)) and len(args) > 1 else None
        if style is not None:
            return _link(style.noun, style.anchor, markdown)
        return " | ".join(type_text(argument, markdown) for argument in args)
    return getattr(annotation, "__name__", str(annotation))


def _bound(metadata: Any) -> str | None:
    """One constraint as text; metadata that is no bound (strict, ...) is left out rather than guessed at."""
    simple = {annotated_types.Gt: ("gt", ">"), annotated_types.Ge: ("ge", ">="), annotated_types.Lt: ("lt", "<"),
              annotated_types.Le: ("le", "<="), annotated_types.MultipleOf: ("multiple_of", "multiple of")}
    for kind, (attribute, symbol) in simple.items():
        if isinstance(metadata, kind):
            return f"{symbol} {getattr(metadata, attribute)}"
    if isinstance(metadata, annotated_types.MinLen):
        return f"length >= {metadata.min_length}"
    if isinstance(metadata, annotated_types.MaxLen):
        return f"length <= {metadata.max_length}"
    pattern = getattr(metadata, "pattern", None)
    return f"matches {pattern}" if isinstance(pattern, str) else None


def _bounds(metadata: list[Any]) -> list[str]:
    return [text for text in map(_bound, metadata) if text]


def _literal_choices(annotation: Any) -> list[Any] | None:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return list(args)
    if origin is Annotated or _is_union(origin):
        for argument in args:
            found = _literal_choices(argument)
            if found is not None:
                return found
    return None


def _item_bounds(annotation: Any) -> list[str]:
    """Constraints on list items, as in ``list[Annotated[int, Field(gt=0)]]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (list, tuple, set, frozenset) and args and get_origin(args[0]) is Annotated:
        extras = get_args(args[0])[1:]
        found = [bound for extra in extras
                 for bound in (_bounds(extra.metadata) if isinstance(extra, FieldInfo) else _bounds([extra]))]
        return [f"each {bound}" for bound in found]
    if _is_union(origin):
        return [bound for argument in args for bound in _item_bounds(argument)]
    return []


def constraints_text(info: FieldInfo) -> str:
    parts = [", ".join(group) for group in (_bounds(info.metadata), _item_bounds(info.annotation)) if group]
    choices = _literal_choices(info.annotation)
    if choices is not None:
        shown = ", ".join(str(choice) for choice in choices)
        parts.insert(0, f"fixed: {shown}" if len(choices) == 1 else f"one of: {shown}")
    return "; ".join(parts)


def yaml_text(value: Any) -> str:
    """A value as it would be written in a recipe (flow style, on one line)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6, allow_unicode=True)
    return text.strip().removesuffix("...").strip()


def default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    # A section's default is all its own defaults, which its section lists; repeating them here would only be noise.
    return "(section defaults)" if isinstance(value, BaseModel) else yaml_text(value)


def schema_row(section: Section, name: str, info: FieldInfo, markdown: bool) -> Row:
    return Row(section.field_path(name), type_text(info.annotation, markdown), default_text(info),
               constraints_text(info), " ".join((info.description or "").split()))


# --------------------------------------------------------------------------------------------------- titles
def section_label(section: Section, reference: Reference) -> str | None:
    """What a recipe writer types to reach the section: ``training``, ``kind: mlp``, ``mode.kind: mutual``."""
    home = section.home
    if home.tag is not None:  # a regime is always at mode, a model spec at several places
        key = reference.union_keys[home.group]
        return f"{section.prefix + '.' if section.prefix else ''}{key}: {home.tag}"
    return section.prefix or None


def section_title(section: Section, reference: Reference) -> str:
    label, name = section_label(section, reference), section.model.__name__
    if not section.home.path:
        return f"{name} (top level)"
    return f"`{label}` — {name}" if label else name


def text_title(label: str | None, name: str) -> str:
    return f"{label} ({name})" if label else f"{name} (top level)"


def section_doc(model: type[BaseModel]) -> list[str]:
    """The class docstring's paragraphs, each on one line, with reST ``code`` turned into Markdown `code`."""
    doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")
    return [" ".join(paragraph.split()).replace("``", "`") for paragraph in doc.split("\n\n") if paragraph.strip()]


def used_at(section: Section) -> str | None:
    others = [path for path in section.paths if path != section.prefix]
    if not others:
        return None
    label = "Also used at" if section.prefix is not None else "Used at"
    return f"{label}: " + ", ".join(f"`{path}`" for path in others) + "."


def group_heading(group: Any) -> tuple[str, str]:
    if group == ROOT_GROUP:
        return ROOT_HEADING, "sections"
    style = UNION_STYLES.get(group)
    if style is not None:
        return style.heading, style.anchor
    return f"{group.__name__} and its alternatives", group.__name__.lower() + "-variants"


def group_intro(group: Any, reference: Reference) -> str:
    if group == ROOT_GROUP:
        return ROOT_INTRO
    paths = " and ".join(", ".join(f"`{path}`" for path in reference.union_paths[group]).rsplit(", ", 1))
    style = UNION_STYLES.get(group)
    template = style.intro if style is not None else "{paths} take one of these, chosen by `{key}`."
    return template.format(paths=paths, key=reference.union_keys[group])
