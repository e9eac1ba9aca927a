"""Property-based fuzzing of recipes (issue 14): random mutations of every built-in recipe (keys dropped, types
swapped, numbers made negative, huge, zero or nan, unknown keys added, lists made scalars) go through
``distill check`` and ``distill check --plan`` in-process. A recipe that is still valid exits 0 and its resolved
YAML reads back to the same recipe; an invalid one exits 2 with one message that names a mutated field, never a
traceback; and nothing is written into the working directory."""

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from distill.cli import main
from distill.config import RECIPES_DIR, builtin_recipe_names, load_recipe, read_yaml

# Hypothesis caches what it learns in ./.hypothesis; keep the checkout clean (the examples are derandomized anyway)
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "distill-hypothesis")
BUILTIN = {name: read_yaml(RECIPES_DIR / f"{name}.yaml") for name in builtin_recipe_names()}
UNKNOWN_KEY = "zz_unknown"
INT64_MAX = 2 ** 63 - 1
Path_ = tuple[Any, ...]


def _paths(node: Any, prefix: Path_ = ()) -> list[Path_]:
    """Every place in a recipe: the root, each mapping value and each list item."""
    found = [prefix]
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += _paths(child, (*prefix, index))
    return found


def _at(raw: Any, path: Path_) -> Any:
    for part in path:
        raw = raw[part]
    return raw


def _strings(node: Any) -> set[str]:
    if isinstance(node, dict):
        return {text for child in node.values() for text in _strings(child)}
    if isinstance(node, list):
        return {text for child in node for text in _strings(child)}
    return {node} if isinstance(node, str) and "\n" not in node else set()


# Strings of any built-in recipe (kinds, losses, signals, module paths): swapped in, they make recipes that are
# valid more often than random text, and so reach the planning code with unusual combinations.
STRINGS = sorted(set.union(*(_strings(raw) for raw in BUILTIN.values())))


def _mutations_for(value: Any, path: Path_) -> list[str]:
    """The mutations that change ``value`` (a bool is not treated as a number)."""
    kinds = ["drop"] if path else []
    if isinstance(value, dict):
        kinds += ["unknown_key", "dict_to_int"]
    elif isinstance(value, list):
        kinds += ["list_to_scalar", "to_str"]
    elif isinstance(value, str):
        kinds += ["str_to_list", "str_to_int", "other_str"]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        kinds += ["negative", "huge", "zero", "nan", "to_str"]
    else:
        kinds += ["to_str", "str_to_list"]
    return kinds


def _mutated(draw: Any, value: Any, kind: str) -> Any:
    if kind == "negative":
        return -abs(value) - 1
    if kind == "huge":
        return draw(st.sampled_from([INT64_MAX, INT64_MAX + 1, 10 ** 30])) if isinstance(value, int) else 1e300
    if kind == "unknown_key":
        return {**value, UNKNOWN_KEY: 1}
    if kind == "list_to_scalar":
        return value[0] if value else 1
    if kind == "other_str":
        return draw(st.sampled_from(STRINGS))
    return {"zero": 0, "nan": math.nan, "dict_to_int": 42, "to_str": "not-a-number", "str_to_list": [value],
            "str_to_int": 7}[kind]


def _apply(draw: Any, raw: dict[str, Any], path: Path_, kind: str) -> None:
    if not path:                                  # the root: only an unknown top-level key
        raw[UNKNOWN_KEY] = 1
        return
    holder = _at(raw, path[:-1])
    if kind == "drop":
        del holder[path[-1]]
    else:
        holder[path[-1]] = _mutated(draw, holder[path[-1]], kind)


@st.composite
def mutated_recipes(draw: Any) -> tuple[str, dict[str, Any], list[tuple[Path_, str]]]:
    name = draw(st.sampled_from(sorted(BUILTIN)))
    raw = copy.deepcopy(BUILTIN[name])
    applied = []
    for _ in range(draw(st.integers(1, 2))):
        path = draw(st.sampled_from(_paths(raw)))
        kind = draw(st.sampled_from(_mutations_for(_at(raw, path), path)))
        _apply(draw, raw, path, kind)
        applied.append((path, kind))
    return name, raw, applied


def _field_names(applied: list[tuple[Path_, str]]) -> set[str]:
    """What a message about these mutations may name: a dotted path, or one of its keys."""
    names = {UNKNOWN_KEY}
    for path, _ in applied:
        keys = [str(part) for part in path if isinstance(part, str)]
        names |= set(keys) | {".".join(str(part) for part in path[:end]) for end in range(1, len(path) + 1)}
    return {name for name in names if name}


def _check_in_empty_dir(raw: dict[str, Any], plan: bool) -> tuple[Any, list[str]]:
    """Run ``distill check`` on ``raw`` from a fresh directory; the result and what the directory holds after."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            Path("recipe.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
            result = CliRunner().invoke(main, ["check", "recipe.yaml", *(["--plan"] if plan else [])])
            return result, sorted(os.listdir("."))
        finally:
            os.chdir(previous)


def test_builtin_recipes_pass_check_and_plan():
    for name, raw in BUILTIN.items():
        result, left = _check_in_empty_dir(raw, plan=True)
        assert (result.exit_code, left) == (0, ["recipe.yaml"]), (name, result.output)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutated_recipes(), st.booleans())
def test_mutated_recipes_are_accepted_or_refused_cleanly(case, plan):
    name, raw, applied = case
    result, left = _check_in_empty_dir(raw, plan)
    context = f"{name} {applied}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), context
    assert "Traceback" not in result.output, context
    assert result.exit_code in (0, 2), context
    assert left == ["recipe.yaml"], context
    if result.exit_code == 2:
        assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1, context
        assert any(field in result.output for field in _field_names(applied)), context
    elif not plan:       # the resolved recipe is a fixed point: read back, it resolves to itself
        resolved = yaml.safe_load(result.output)
        assert load_recipe(resolved).model_dump(mode="json") == resolved, context
