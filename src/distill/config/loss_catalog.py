"""What a recipe may say about each registered loss, readable without importing the losses (and torch with them):
its signal roles, its options with their defaults and checks, its flags.

The registry (``@register_loss`` and each loss's annotated signature) stays the one source; ``loss_catalog.json`` is
generated from it so that reading and checking a recipe (``distill check``) costs no torch import, and a test
fails when the file is out of date. Regenerate it with::

    .venv/bin/python -m distill.config.loss_catalog
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError

CATALOG_FILE = Path(__file__).with_name("loss_catalog.json")
_BASES = {"float": float, "int": int, "bool": bool, "str": str}
_BOUNDS = ("gt", "ge", "lt", "le")


@dataclass(frozen=True)
class LossEntry:
    name: str
    inputs: tuple[str, ...]
    options: dict[str, dict[str, Any]]  # option -> {"default": ..., "required": bool, "type": {...}}
    settable: tuple[str, ...]
    softens: bool

    @property
    def needs_teacher(self) -> bool:
        return "teacher" in self.inputs

    def check_option(self, option: str, value: Any) -> None:
        """Raise ValueError naming the option when ``value`` does not fit its declared type, range or choices
        (floats must be finite)."""
        from pydantic import ValidationError

        try:
            _validator(json.dumps(self.options[option]["type"], sort_keys=True)).validate_python(value)
        except ValidationError as error:
            problem = error.errors()[0]["msg"].removeprefix("Input ")
            raise ValueError(f"loss {self.name!r}: option {option!r} {problem} (got {value!r})") from None


@functools.lru_cache(maxsize=1)
def entries() -> dict[str, LossEntry]:
    raw = json.loads(CATALOG_FILE.read_text())
    return {name: LossEntry(name, tuple(item["inputs"]), item["options"], tuple(item["settable"]), item["softens"])
            for name, item in raw.items()}


def entry(name: str) -> LossEntry:
    """The catalog entry of loss ``name``; an unknown name is refused with the closest one."""
    known = entries()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DistillError(f"unknown loss {name!r}.{hint} Known losses: {', '.join(sorted(known))}.")
    return known[name]


@functools.lru_cache(maxsize=None)
def _validator(described: str) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(_annotation(json.loads(described)), config=ConfigDict(allow_inf_nan=False))


def _annotation(described: dict[str, Any]) -> Any:
    """The Python type a described option type stands for (the inverse of ``describe_type``)."""
    from pydantic import Field

    if "any" in described:
        return Any
    if "choices" in described:
        base: Any = typing.Literal[tuple(described["choices"])]
    else:
        base = _BASES[described["type"]]
        bounds = {key: described[key] for key in _BOUNDS if key in described}
        if bounds:
            base = typing.Annotated[base, Field(**bounds)]
    return typing.Optional[base] if described.get("nullable") else base


def describe_type(annotation: Any) -> dict[str, Any]:
    """A JSON description of an option's annotation: ``{"type": "float", "gt": 0}``, ``{"choices": [...]}``, with
    ``"nullable": true`` for ``X | None``; ``{"any": true}`` for what cannot be described (no check)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return {"any": True}
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        rest = [argument for argument in arguments if argument is not type(None)]
        if len(rest) == 1 and len(rest) < len(arguments):
            inner = describe_type(rest[0])
            return inner if "any" in inner else {**inner, "nullable": True}
        return {"any": True}
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": list(arguments)}
    if typing.get_origin(annotation) is typing.Annotated:
        described = describe_type(arguments[0])
        for metadata in arguments[1:]:
            for key in _BOUNDS:
                if getattr(metadata, key, None) is not None:
                    described[key] = getattr(metadata, key)
        return described
    name = getattr(annotation, "__name__", "")
    return {"type": name} if name in _BASES else {"any": True}


def build_catalog() -> dict[str, Any]:
    """The catalog as the registry says it now (imports every loss)."""
    from distill.losses import LOSSES

    catalog = {}
    for name in sorted(LOSSES):
        info = LOSSES[name]
        hints = typing.get_type_hints(info.fn, include_extras=True)
        options = {option: {"default": None if default is inspect.Parameter.empty else default,
                            "required": default is inspect.Parameter.empty,
                            "type": describe_type(hints.get(option, inspect.Parameter.empty))}
                   for option, default in info.options.items()}
        catalog[name] = {"inputs": list(info.inputs), "options": options, "settable": list(info.settable),
                         "softens": info.softens}
    return catalog


def render_catalog() -> str:
    return json.dumps(build_catalog(), indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover
    CATALOG_FILE.write_text(render_catalog())
    print(f"wrote {CATALOG_FILE}")
