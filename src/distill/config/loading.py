"""Reading a recipe: YAML parsed safely and within bounds (``yaml_reading``), ``--set`` overrides, built-in recipes
by name, and validation errors turned into one paragraph that names the field."""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from distill.config.recipe import Recipe
from distill.config.yaml_reading import check_bounds, load_yaml, read_yaml
from distill.errors import DistillError

RECIPES_DIR = Path(__file__).parent.parent / "recipes"
MAX_NAME_BYTES = 200
"""A recipe's name becomes a directory name (runs/<name>, sweep-<name>); file systems allow 255 bytes."""


class RecipeArgumentError(DistillError, TypeError):
    """A Python call gave an argument of the wrong type: a ``TypeError`` for Python, a ``DistillError`` for the
    command line's one-paragraph errors."""


# --------------------------------------------------------------------------------------------------- recipe types
def _members(annotation: Any) -> list[Any]:
    """The types a value of ``annotation`` may take, Annotated and Optional unwrapped (None dropped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for argument in get_args(annotation) for member in _members(argument)]
    return [] if annotation is type(None) else [annotation]


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _tag_field(members: list[Any]) -> str | None:
    """The field whose Literal value tells the models of a union apart (``kind`` of model specs and modes)."""
    if len(members) < 2 or not all(_is_model(member) for member in members):
        return None
    literal = [{name for name, field in member.model_fields.items() if get_origin(field.annotation) is Literal}
               for member in members]
    common = set.intersection(*literal)
    return "kind" if "kind" in common else min(common, default=None)


def _tag_of(model: type[BaseModel], tag: str) -> Any:
    return get_args(model.model_fields[tag].annotation)[0]


def _label(annotation: Any) -> str:
    """How pydantic names a union member in an error location: ``str``, ``list[str]``, ``dict[str,str]``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _label(get_args(annotation)[0])
    if origin is None:
        return getattr(annotation, "__name__", repr(annotation))
    return f"{origin.__name__}[{','.join(_label(argument) for argument in get_args(annotation))}]"


def _member_named(members: list[Any], part: Any) -> Any:
    """The member of a union that pydantic's location part names: by tag (``mlp``) or by type (``list[str]``)."""
    tag = _tag_field(members)
    for member in members:
        if (tag is not None and _tag_of(member, tag) == part) or _label(member) == part:
            return member
    return None


def _child(members: list[Any], part: Any) -> Any:
    """The annotation of ``part`` (a field, list index or dict key) inside a value typed ``members``."""
    for member in members:
        if _is_model(member) and isinstance(part, str) and part in member.model_fields:
            return member.model_fields[part].annotation
        origin = get_origin(member)
        if origin in (list, tuple) and isinstance(part, int):
            return get_args(member)[0]
        if origin is dict:
            return get_args(member)[1]
    return None


def _walk_location(loc: tuple[Any, ...]) -> tuple[list[str], Any]:
    """A pydantic error location as the recipe's dotted path, and the annotation of the value it reaches.

    Pydantic puts the union member it tried in the location (``teacher.model.mlp.hidden``,
    ``data.features.list[str].0``); those parts are read as a choice of member, not shown."""
    annotation: Any = Recipe
    parts: list[str] = []
    for part in loc:
        members = _members(annotation)
        chosen = _member_named(members, part) if len(members) > 1 else None
        if chosen is not None:
            annotation = chosen
            continue
        parts.append(str(part))
        annotation = _child(members, part)
    return parts, annotation


# --------------------------------------------------------------------------------------------------- messages
def _shown_value(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _unknown_key(loc: tuple[Any, ...]) -> str:
    """'unknown key LOCATION', with the closest field of the same section (never a key of another section)."""
    parts, annotation = _walk_location(loc[:-1])
    key = str(loc[-1])
    models = [member for member in _members(annotation) if _is_model(member)]
    valid = list(models[0].model_fields) if len(models) == 1 else []
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {_shown_value('.'.join([*parts, key]))}{hint}"


def format_validation_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        if item["type"] == "extra_forbidden":
            problems.append(_unknown_key(tuple(item["loc"])))
            continue
        location = ".".join(_walk_location(tuple(item["loc"]))[0])
        message = item["msg"].removeprefix("Value error, ")
        shown = f"{location}: " if location else ""
        given = item.get("input")
        # A type/range error shows the offending value; our own checks already name it, and a whole section
        # (a dict) would only be noise.
        if item["type"] != "value_error" and not isinstance(given, dict):
            message += f" (got {_shown_value(given)})"
        problems.append(shown + message)
    return f"invalid recipe {source}: " + "; ".join(problems)


# --------------------------------------------------------------------------------------------------- overrides
def parse_overrides(overrides: list[str] | tuple[str, ...] | None) -> list[tuple[str, Any]]:
    """``["training.lr=0.1", ...]`` as (dotted key, YAML value) pairs."""
    if overrides is None:
        return []
    if not isinstance(overrides, (list, tuple)):
        example = f" (write overrides=[{overrides!r}])" if isinstance(overrides, str) else ""
        raise RecipeArgumentError(f"overrides must be a list of 'key=value' strings, got {type(overrides).__name__} "
                                  f"{_shown_value(overrides)}{example}")
    return [_parse_override(item) for item in overrides]


def _parse_override(item: Any) -> tuple[str, Any]:
    if not isinstance(item, str):
        raise RecipeArgumentError(f"overrides must be 'key=value' strings, got {type(item).__name__} "
                                  f"{_shown_value(item)}")
    if "=" not in item:
        raise DistillError(f"--set expects key=value, got {_shown_value(item)}")
    key, text = item.split("=", 1)
    keys = [part.strip() for part in key.split(".")]
    if not all(keys):
        raise DistillError(f"--set {_shown_value(item)}: the key {key.strip()!r} has an empty part; give a dotted "
                           "path of recipe keys, e.g. --set training.lr=0.01")
    dotted = ".".join(keys)
    value = load_yaml(text, f"--set {dotted}") if text.strip() else None
    return dotted, value


def _annotation_at(raw: dict[str, Any], keys: list[str]) -> Any:
    """The annotation of the recipe value at ``keys``, union members chosen by the tags written in ``raw``."""
    annotation: Any = Recipe
    node: Any = raw
    for key in keys:
        members = _members(annotation)
        tag = _tag_field(members)
        if tag is not None:
            chosen = [member for member in members if isinstance(node, dict) and _tag_of(member, tag) == node.get(tag)]
            members = chosen[:1]
        part: Any = int(key) if key.isdigit() and isinstance(node, list) else key
        annotation = _child(members, part)
        node = _get(node, part)
    return annotation


def _get(node: Any, part: Any) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and part < len(node):
        return node[part]
    return None


def _container(raw: dict[str, Any], keys: list[str], dotted: str) -> dict[str, Any] | list[Any]:
    """The dict (or list) that holds ``keys[-1]``, created where missing. Every container on the way is copied, so
    a section shared through a YAML alias changes only where the override says."""
    node: Any = raw
    for depth, key in enumerate(keys[:-1]):
        where = ".".join(keys[:depth + 1])
        part = _list_index(node, key, where, dotted) if isinstance(node, list) else key
        child = node[part] if isinstance(node, list) else node.get(key)
        if child is None:
            child = {}
        elif isinstance(child, (dict, list)):
            child = copy.copy(child)
        else:
            raise DistillError(f"--set {dotted}: {where} is {_shown_value(child)}, not a section of the recipe")
        node[part] = child
        node = child
    return node


def _list_index(node: list[Any], key: str, where: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise DistillError(f"--set {dotted}: {where} is not an item of a list of {len(node)} (give an index from 0 "
                           f"to {len(node) - 1})")
    return int(key)


def _apply_overrides(raw: dict[str, Any], parsed: list[tuple[str, Any]]) -> None:
    """Set each override in ``raw``. Setting the tag of a union (``teacher.model.kind=saved``, ``mode.kind=mutual``)
    to another value replaces that spec instead of merging the old kind's fields into it; overrides given earlier
    in the same call for fields under it are applied again, so ``kind`` may come before or after them."""
    done: list[tuple[str, Any]] = []
    for dotted, value in parsed:
        keys = dotted.split(".")
        holder = _container(raw, keys, dotted)
        if isinstance(holder, dict) and _replaces_spec(raw, keys, holder, value):
            holder.clear()     # a copy made by _container: the recipe's other references keep their spec
            prefix = ".".join(keys[:-1]) + "."
            for earlier, earlier_value in done:
                if earlier.startswith(prefix):
                    _put(raw, earlier.split("."), earlier, earlier_value)
        _put(raw, keys, dotted, value)
        done.append((dotted, value))


def _replaces_spec(raw: dict[str, Any], keys: list[str], holder: dict[str, Any], value: Any) -> bool:
    if len(keys) < 2 or keys[-1] not in holder or holder[keys[-1]] == value:
        return False
    return _tag_field(_members(_annotation_at(raw, keys[:-1]))) == keys[-1]


def _put(raw: dict[str, Any], keys: list[str], dotted: str, value: Any) -> None:
    holder = _container(raw, keys, dotted)
    if isinstance(holder, list):
        holder[_list_index(holder, keys[-1], dotted, dotted)] = value
    else:
        holder[keys[-1]] = value


# --------------------------------------------------------------------------------------------------- recipes
def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in recipe."""
    path = Path(recipe)
    if _is_file(path):
        return path
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if _is_file(builtin):
        return builtin
    names = builtin_recipe_names()
    close = difflib.get_close_matches(str(recipe), names, n=1)
    hint = f" Did you mean the built-in recipe {close[0]!r}?" if close else ""
    raise DistillError(f"recipe file {_shown_value(str(recipe))} not found, and it is not a built-in recipe.{hint} "
                       f"Built-in recipes: {', '.join(names)} (see `distill recipes`).")


def _is_file(path: Path) -> bool:
    # Path.is_file raises on a name too long for the file system (ENAMETOOLONG) or holding a NUL byte
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def builtin_recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def _raw_recipe(recipe: Any) -> tuple[dict[str, Any], str]:
    """The recipe as a plain dict of sections, and how messages name it."""
    if isinstance(recipe, Recipe):
        return recipe.model_dump(mode="json"), f"{recipe.name!r}"
    if isinstance(recipe, dict):
        check_bounds(recipe, "(dict)")     # before deepcopy, which recurses
        return copy.deepcopy(recipe), "(dict)"
    if isinstance(recipe, (str, os.PathLike)) and not isinstance(recipe, bytes):
        path = resolve_recipe_path(recipe)
        raw = read_yaml(path)
        raw.setdefault("name", path.stem)
        return raw, str(path)
    raise RecipeArgumentError(f"recipe must be a recipe file path, a built-in recipe name, a dict or a Recipe; got "
                              f"{type(recipe).__name__} {_shown_value(recipe)}")


def _check_name(recipe: Recipe, source: str) -> None:
    """The name becomes a directory: refuse one no file system takes, or one that points outside runs/."""
    name = recipe.name
    if len(name.encode()) > MAX_NAME_BYTES:
        raise DistillError(f"invalid recipe {source}: name is {len(name.encode()):,} bytes long "
                           f"({_shown_value(name, 40)}); it names the run directory runs/<name>, so at most "
                           f"{MAX_NAME_BYTES} bytes")
    if name.strip() in ("", ".", "..") or any(ord(char) < 32 for char in name):
        raise DistillError(f"invalid recipe {source}: name {name!r} cannot name the run directory runs/<name>; "
                           "give a word such as my-kd")


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. Raises DistillError with one readable paragraph on any problem
    (a ``RecipeArgumentError``, also a ``TypeError``, for arguments of the wrong type)."""
    parsed = parse_overrides(overrides)
    raw, source = _raw_recipe(recipe)
    _apply_overrides(raw, parsed)
    check_bounds(raw, source)
    try:
        config = Recipe.model_validate(raw)
    except ValidationError as error:
        raise DistillError(format_validation_error(error, source)) from None
    _check_name(config, source)
    return config


def describe_builtin_recipes() -> list[tuple[str, str]]:
    rows = []
    for name in builtin_recipe_names():
        raw = read_yaml(RECIPES_DIR / f"{name}.yaml")
        rows.append((name, str(raw.get("description", "")).strip().split("\n")[0]))
    return rows
