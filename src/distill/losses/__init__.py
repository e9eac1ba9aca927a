"""Loss functions by name.

A recipe term names a loss; what the loss compares is read off its signature: positional parameters named
``student_*`` take a student signal, ``teacher_*`` a teacher signal, ``labels`` the batch's labels, and
keyword-only parameters are the term's options (``temperature``, ``beta``, ...). Registering a function is all
a new method needs; the objective and trainer do not change.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from distill.errors import DistillError
from distill.losses import features, lm, logits, peers, relations

ROLES = ("student", "teacher", "labels")


@dataclass(frozen=True)
class LossInfo:
    name: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...]          # one role per positional parameter, in order
    options: dict[str, Any]          # keyword-only parameter -> default
    doc: str

    @property
    def needs_teacher(self) -> bool:
        return "teacher" in self.inputs


LOSSES: dict[str, LossInfo] = {}

# Losses whose ``temperature`` softens the teacher's distribution, and so follows ``objective.temperature``
# unless the term sets its own. Others (CRD's contrastive temperature) keep their own default.
SOFTENING_TEMPERATURE = {"soft_kl", "soft_cross_entropy", "multilabel_kd", "dkd", "token_kd", "peer_kl"}


def _role(parameter_name: str) -> str:
    for role in ROLES:
        if parameter_name == role or parameter_name.startswith(role + "_"):
            return role
    raise ValueError(f"cannot tell which signal parameter {parameter_name!r} takes: name it student_*, teacher_* or labels")


def register_loss(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(fn)
    inputs, options = [], {}
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            options[parameter.name] = parameter.default
        elif parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            inputs.append(_role(parameter.name))
    first_line = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
    LOSSES[name] = LossInfo(name, fn, tuple(inputs), options, first_line)
    return fn


def get_loss(name: str) -> LossInfo:
    if name not in LOSSES:
        close = difflib.get_close_matches(name, LOSSES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise DistillError(f"unknown loss {name!r}.{hint} Known losses: {', '.join(sorted(LOSSES))}.")
    return LOSSES[name]


for _name, _fn in {
    "cross_entropy": logits.cross_entropy,
    "soft_kl": logits.soft_kl,
    "soft_cross_entropy": logits.soft_cross_entropy,
    "teacher_label_ce": logits.teacher_label_ce,
    "logit_mse": logits.logit_mse,
    "hint": features.hint_loss,
    "cosine": features.cosine_loss,
    "attention_transfer": features.attention_transfer,
    "similarity_preserving": features.similarity_preserving,
    "regression_kd": features.regression_kd,
    "multilabel_kd": features.multilabel_kd,
    "rkd_distance": relations.rkd_distance,
    "rkd_angle": relations.rkd_angle,
    "crd": relations.crd_in_batch,
    "similarity_kl": relations.similarity_kl,
    "dkd": relations.dkd,
    "minilm_attention": relations.minilm_attention_kl,
    "minilm_value_relation": relations.minilm_value_relation,
    "attention_map": relations.attention_map_loss,
    "token_kd": lm.token_kd,
    "token_ce": lm.token_ce,
    "peer_kl": peers.peer_kl,
}.items():
    register_loss(_name, _fn)
