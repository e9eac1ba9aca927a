"""Reading a recipe: YAML parsed safely, ``--set`` overrides, built-in recipes by name, and validation errors
turned into one paragraph that names the field."""

from __future__ import annotations

import copy
import difflib
import inspect
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from distill.config.recipe import Recipe
from distill.errors import DistillError

RECIPES_DIR = Path(__file__).parent.parent / "recipes"


def _all_field_names(model: type[BaseModel], seen: set[type] | None = None) -> set[str]:
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    names = set(model.model_fields)
    for field in model.model_fields.values():
        for candidate in _classes_in(field.annotation):
            names |= _all_field_names(candidate, seen)
    return names


def _classes_in(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [found for argument in get_args(annotation) for found in _classes_in(argument)]


_UNION_TAGS = ("mlp", "cnn", "hf", "saved", "hf-config", "multi_teacher", "mutual", "born_again", "assistant_chain",
               "transfer_set", "counterfactual", "data_free", "self_distillation")


def format_validation_error(error: ValidationError, source: str) -> str:
    valid_keys = _all_field_names(Recipe)
    problems = []
    for item in error.errors():
        # drop the union tags pydantic puts in the location (teacher.model.mlp.hidden -> teacher.model.hidden)
        location = ".".join(str(part) for part in item["loc"] if str(part) not in _UNION_TAGS)
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][-1])
            close = difflib.get_close_matches(key, valid_keys, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown key {location!r}{hint}")
        else:
            message = item["msg"].removeprefix("Value error, ")
            shown = f"{location}: " if location else ""
            given = item.get("input")
            # A type/range error shows the offending value; our own checks already name it, and a whole section
            # (a dict) would only be noise.
            if item["type"] != "value_error" and not isinstance(given, dict):
                message += f" (got {given!r})"
            problems.append(shown + message)
    return f"invalid recipe {source}: " + "; ".join(problems)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise DistillError(f"--set {dotted}: {key!r} is not a section of the recipe")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise DistillError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise DistillError(f"--set {key}: cannot parse value {text!r}: {error}") from None
        parsed.append((key.strip(), value))
    return parsed


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path to a YAML file, or the name of a built-in recipe."""
    path = Path(recipe)
    if path.is_file():
        return path
    builtin = RECIPES_DIR / f"{recipe}.yaml"
    if builtin.is_file():
        return builtin
    names = builtin_recipe_names()
    close = difflib.get_close_matches(str(recipe), names, n=1)
    hint = f" Did you mean the built-in recipe {close[0]!r}?" if close else ""
    raise DistillError(f"recipe file {str(recipe)!r} not found, and it is not a built-in recipe.{hint} "
                       f"Built-in recipes: {', '.join(names)} (see `distill recipes`).")


def builtin_recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise DistillError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise DistillError(f"YAML syntax error in {path}{where}: {error.problem}") from None
    except yaml.YAMLError as error:
        raise DistillError(f"YAML error in {path}: {error}") from None
    if not isinstance(raw, dict):
        raise DistillError(f"recipe {path} must be a mapping of sections (data, teacher, student, ...), "
                           f"got {type(raw).__name__}")
    return raw


def load_recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe. Raises DistillError with one readable paragraph on any problem."""
    if isinstance(recipe, Recipe):
        raw, source = recipe.model_dump(mode="json"), f"{recipe.name!r}"
    elif isinstance(recipe, dict):
        raw, source = copy.deepcopy(recipe), "(dict)"
    else:
        path = resolve_recipe_path(recipe)
        raw, source = read_yaml(path), str(path)
        raw.setdefault("name", path.stem)
    for key, value in parse_overrides(overrides):
        _set_dotted(raw, key, value)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as error:
        raise DistillError(format_validation_error(error, source)) from None


def describe_builtin_recipes() -> list[tuple[str, str]]:
    rows = []
    for name in builtin_recipe_names():
        raw = read_yaml(RECIPES_DIR / f"{name}.yaml")
        rows.append((name, str(raw.get("description", "")).strip().split("\n")[0]))
    return rows
