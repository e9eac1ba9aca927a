"""The objective: a weighted sum of named terms, each a registered loss over named signals.

``objective(student_signals, teacher_signals, labels)`` returns the total and every term by name (unweighted),
so the trainer logs each one without knowing what they are. The objective is a module because it owns the
adapters (learned projections) of terms whose student and teacher signals differ in width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from distill.adapters import make_adapter
from distill.config import ObjectiveConfig, TermConfig
from distill.errors import DistillError
from distill.losses import LossInfo, get_loss


@dataclass(frozen=True)
class Term:
    name: str
    weight: float
    loss: LossInfo
    student_signal: str
    teacher_signal: str
    options: dict[str, Any]


class Objective(nn.Module):
    def __init__(self, config: ObjectiveConfig):
        super().__init__()
        self.terms: list[Term] = []
        for term in config.terms:
            info = get_loss(term.loss)
            options = dict(term.options)
            if term.temperature is not None:
                options["temperature"] = term.temperature
            elif info.softens:
                options["temperature"] = config.temperature
            self.terms.append(Term(term.display_name, term.weight, info, term.student, term.teacher, options))
        self.adapters = nn.ModuleDict()

    @classmethod
    def hard_labels(cls, language_model: bool = False, target_kind: str = "class") -> "Objective":
        """Plain supervised training: what the teacher and the baseline student learn from (for causal LMs,
        next-token cross-entropy computed chunk by chunk from the final hidden states; binary cross-entropy for
        multi-label data, mean squared error for regression)."""
        if language_model:
            return cls(ObjectiveConfig(terms=[TermConfig(name="hard", loss="token_ce", student="final_hidden")]))
        loss = {"multi_label": "multilabel_bce", "regression": "regression_mse"}.get(target_kind, "cross_entropy")
        return cls(ObjectiveConfig(terms=[TermConfig(name="hard", loss=loss)]))

    @property
    def needs_teacher(self) -> bool:
        return any(term.loss.needs_teacher for term in self.terms)

    @property
    def counts_tokens(self) -> bool:
        """Whether some term sums over tokens and divides by a ``normalizer`` the trainer should provide (the
        supervised-token count of the whole accumulated batch)."""
        return any("normalizer" in term.loss.options for term in self.terms)

    def signals(self, role: str) -> set[str]:
        """Names of the signals this objective reads from the student or the teacher."""
        attribute = "student_signal" if role == "student" else "teacher_signal"
        return {getattr(term, attribute) for term in self.terms if role in term.loss.inputs}

    @staticmethod
    def _options(term: Term, student_signals: dict[str, Tensor], attention_mask: Tensor | None) -> dict[str, Any]:
        """The term's options, plus the batch's attention mask for token-level signals of losses that take one
        (so padding never counts), unless the recipe set the mask itself. Per-position losses (cosine, hint) get it
        for [batch, tokens, features] signals only: an attention map [batch, heads, tokens, tokens] is compared
        whole, except by losses registered with ``query_mask`` (MiniLM's), whose mask selects its query rows."""
        options = term.options
        student = student_signals.get(term.student_signal)
        if ("mask" in term.loss.options and "mask" not in options and attention_mask is not None
                and student is not None and student.shape[0] == attention_mask.shape[0]
                and (student.dim() == 3 or (student.dim() == 4 and term.loss.query_mask))):
            options = {**options, "mask": attention_mask.bool()}
        return options

    def _arguments(self, term: Term, student_signals: dict[str, Tensor], teacher_signals: dict[str, Tensor] | None,
                   labels: Tensor | None) -> list[Tensor]:
        arguments = []
        for role in term.loss.inputs:
            if role == "student":
                value = student_signals[term.student_signal]
                if term.name in self.adapters:
                    value = self.adapters[term.name](value)
                arguments.append(value)
            elif role == "teacher":
                if teacher_signals is None:
                    raise DistillError(f"objective term {term.name!r} needs a teacher, and there is none")
                arguments.append(teacher_signals[term.teacher_signal])
            else:
                if labels is None:
                    raise DistillError(f"objective term {term.name!r} needs labels, and the batch has none")
                arguments.append(labels)
        return arguments

    def build_adapters(self, student_signals: dict[str, Tensor], teacher_signals: dict[str, Tensor] | None,
                       labels: Tensor | None, attention_mask: Tensor | None = None) -> None:
        """Try every term on a probe batch; give a term an adapter when its shapes need one, and fail now,
        naming the term and both shapes, when none can reconcile them."""
        for term in self.terms:
            if not term.loss.needs_teacher or term.name in self.adapters:
                continue
            arguments = self._arguments(term, student_signals, teacher_signals, labels)
            options = self._options(term, student_signals, attention_mask)
            try:
                term.loss.fn(*arguments, **options)
                continue
            except ValueError as error:
                first_error = str(error)
            student, teacher = student_signals[term.student_signal], teacher_signals[term.teacher_signal]  # type: ignore[index]
            adapter = make_adapter(student, teacher)
            if adapter is None:
                raise DistillError(f"objective term {term.name!r}: student signal {term.student_signal!r} "
                                   f"{tuple(student.shape)} and teacher signal {term.teacher_signal!r} "
                                   f"{tuple(teacher.shape)} cannot be compared and no projection can reconcile "
                                   f"them ({first_error})")
            self.adapters[term.name] = adapter.to(student.device)
            try:
                term.loss.fn(*self._arguments(term, student_signals, teacher_signals, labels), **options)
            except ValueError as error:
                raise DistillError(f"objective term {term.name!r}: even after a projection the signals do not fit "
                                   f"the {term.loss.name!r} loss: {error}") from None

    def forward(self, student_signals: dict[str, Tensor], teacher_signals: dict[str, Tensor] | None,
                labels: Tensor | None, attention_mask: Tensor | None = None, normalizer: float | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        for term in self.terms:
            options = self._options(term, student_signals, attention_mask)
            if normalizer is not None and "normalizer" in term.loss.options:
                options = {**options, "normalizer": normalizer}
            value = term.loss.fn(*self._arguments(term, student_signals, teacher_signals, labels), **options)
            values[term.name] = value
            weighted = value * term.weight
            total = weighted if total is None else total + weighted
        assert total is not None  # config validation guarantees at least one term
        return total, values
