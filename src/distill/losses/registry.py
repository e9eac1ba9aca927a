"""The registry of losses by name, filled by ``@register_loss`` where each loss is defined.

A recipe term names a loss; what the loss compares is read off its signature: positional parameters named
``student_*`` take a student signal, ``teacher_*`` a teacher signal, ``labels`` the batch's labels, and
keyword-only parameters are the term's options (``temperature``, ``beta``, ...). What the signature cannot say
the loss declares next to its definition, so no list elsewhere has to be kept in step with it:

* ``softens=True``: its ``temperature`` softens the teacher's distribution, so it follows
  ``objective.temperature`` unless the term sets its own (CRD's contrastive temperature does not, and keeps its
  own default);
* ``query_mask=True``: its ``mask`` is ``[batch, tokens]`` over the query rows of a
  ``[batch, heads, tokens, tokens]`` attention signal, so the objective passes the attention mask for 4-d
  signals too (other losses compare an attention map whole).

An option's annotation is also its check: ``temperature: Positive``, ``beta: UnitInterval``,
``divergence: Literal[...]``, ``top_k: PositiveInt | None``. A recipe's option values are validated against
them (pydantic, no infinities or NaN) when the recipe is read, before anything is built, through
``distill/config/loss_catalog.json``, generated from this registry (so reading a recipe imports no torch; a test
fails when it is out of date). Options the run supplies itself (``mask``, ``normalizer``) are not for recipes.

This module imports no loss, so every loss module can import it.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Annotated, Any, Callable, TypeVar

from annotated_types import Ge, Gt, Interval

from distill.errors import DistillError

ROLES = ("student", "teacher", "labels")
# options the objective or the trainer fills in per batch (the attention mask, the token normaliser)
RUNTIME_OPTIONS = frozenset({"mask", "normalizer"})

# Option types a loss signature uses: each a check on the value a recipe gives.
Positive = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
UnitInterval = Annotated[float, Interval(ge=0, le=1)]
PositiveInt = Annotated[int, Gt(0)]

LossFn = TypeVar("LossFn", bound=Callable[..., Any])


@dataclass(frozen=True)
class LossInfo:
    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]          # one role per positional parameter, in order
    options: dict[str, Any]          # keyword-only parameter -> default
    doc: str
    softens: bool = False            # temperature follows objective.temperature
    query_mask: bool = False         # mask selects the query rows of [B, H, T, T] attention

    @property
    def needs_teacher(self) -> bool:
        return "teacher" in self.inputs

    @property
    def settable(self) -> list[str]:
        """The options a recipe term may set (the others are filled in by the run)."""
        return [name for name in self.options if name not in RUNTIME_OPTIONS]


LOSSES: dict[str, LossInfo] = {}


def _role(parameter_name: str) -> str:
    for role in ROLES:
        if parameter_name == role or parameter_name.startswith(role + "_"):
            return role
    raise ValueError(f"cannot tell which signal parameter {parameter_name!r} takes: "
                     "name it student_*, teacher_* or labels")


def _describe(name: str, fn: Callable[..., Any], softens: bool, query_mask: bool) -> LossInfo:
    inputs, options = [], {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            options[parameter.name] = parameter.default
        elif parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            inputs.append(_role(parameter.name))
    # a flag without the option it is about would be silently ignored by the objective
    for flag, flagged, option in (("softens", softens, "temperature"), ("query_mask", query_mask, "mask")):
        if flagged and option not in options:
            raise ValueError(f"loss {name!r} is registered with {flag}=True but has no keyword-only {option!r}")
    first_line = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
    return LossInfo(name, fn, tuple(inputs), options, first_line, softens=softens, query_mask=query_mask)


def _where(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def register_loss(name: str, *, softens: bool = False, query_mask: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator: register the function under ``name`` (see the module docstring for the flags)."""
    def register(fn: LossFn) -> LossFn:
        # the same definition again is a module reload; another one is a name clash that would shadow a loss
        if name in LOSSES and _where(LOSSES[name].fn) != _where(fn):
            raise ValueError(f"two losses registered as {name!r}: {_where(LOSSES[name].fn)} and {_where(fn)}")
        LOSSES[name] = _describe(name, fn, softens, query_mask)
        return fn
    return register


def get_loss(name: str) -> LossInfo:
    if name not in LOSSES:
        close = difflib.get_close_matches(name, LOSSES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DistillError(f"unknown loss {name!r}.{hint} Known losses: {', '.join(sorted(LOSSES))}.")
    return LOSSES[name]
