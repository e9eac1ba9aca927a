"""The objective: a weighted sum of named terms, each a registered loss over named signals.

``Objective(config)(student_signals, teacher_signals, labels)`` returns the total and every term by name (the
unweighted value), so the trainer logs each one without knowing what they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from distill.config import ObjectiveConfig, TermConfig
from distill.errors import DistillError
from distill.losses import SOFTENING_TEMPERATURE, LossInfo, get_loss


@dataclass(frozen=True)
class Term:
    name: str
    weight: float
    loss: LossInfo
    student_signal: str
    teacher_signal: str
    options: dict[str, Any]


class Objective:
    def __init__(self, config: ObjectiveConfig):
        self.terms: list[Term] = []
        for term in config.terms:
            info = get_loss(term.loss)
            options = dict(term.options)
            if term.temperature is not None:
                options["temperature"] = term.temperature
            elif info.name in SOFTENING_TEMPERATURE:
                options["temperature"] = config.temperature
            self.terms.append(Term(term.display_name, term.weight, info, term.student, term.teacher, options))

    @classmethod
    def hard_labels(cls) -> "Objective":
        """Plain supervised training: what the teacher and the baseline student learn from."""
        return cls(ObjectiveConfig(terms=[TermConfig(name="hard", loss="cross_entropy")]))

    @property
    def needs_teacher(self) -> bool:
        return any(term.loss.needs_teacher for term in self.terms)

    @property
    def needs_labels(self) -> bool:
        return any("labels" in term.loss.inputs for term in self.terms)

    def signals(self, role: str) -> set[str]:
        """Names of the signals this objective reads from the student or the teacher."""
        attribute = "student_signal" if role == "student" else "teacher_signal"
        return {getattr(term, attribute) for term in self.terms if role in term.loss.inputs}

    def __call__(self, student_signals: dict[str, Tensor], teacher_signals: dict[str, Tensor] | None,
                 labels: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term in self.terms:
            arguments = []
            for role in term.loss.inputs:
                if role == "student":
                    arguments.append(student_signals[term.student_signal])
                elif role == "teacher":
                    if teacher_signals is None:
                        raise DistillError(f"objective term {term.name!r} needs a teacher, and there is none")
                    arguments.append(teacher_signals[term.teacher_signal])
                else:
                    if labels is None:
                        raise DistillError(f"objective term {term.name!r} needs labels, and the batch has none")
                    arguments.append(labels)
            value = term.loss.fn(*arguments, **term.options)
            values[term.name] = value
            weighted = value * term.weight
            total = weighted if total is None else total + weighted
        assert total is not None  # config validation guarantees at least one term
        return total, values
