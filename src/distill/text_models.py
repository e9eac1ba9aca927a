"""Checks of text models against the text data, made before any training: the context each model has, the
vocabulary its tokenizer needs, and objective terms that cannot compare two tokenisations token by token."""

from __future__ import annotations

from typing import Any

from torch import nn

from distill.errors import DistillError

# Signals with one value per text: the only ones two models that tokenise a text differently can be compared on.
PER_TEXT_SIGNALS = ("logits", "mean_pooled", "pooler_output")


def _check_context(model: nn.Module, role: str, max_length: int) -> None:
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise DistillError(f"data.max_length is {max_length} tokens, but the {role} has only {positions} positions "
                           f"(max_position_embeddings): lower data.max_length to {positions} or less")


def _check_vocabulary(model: nn.Module, role: str, tokenizer: Any, field: str) -> None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise DistillError(f"the {role}'s embedding table has {rows} rows, but its tokenizer ({field}) has "
                           f"{len(tokenizer)} tokens: it is not the tokenizer this model was trained with. Use the "
                           f"model's own tokenizer")


def check_text_models(config: Any, data: Any, models: dict[str, nn.Module | None]) -> None:
    """Refuse, before any training, what would fail or silently mislead later on text data."""
    two_tokenizers = data.student_view is not None
    if two_tokenizers and config.teacher.cache is not None:
        raise DistillError("teacher.cache with a student that reads the texts with its own tokenizer: the cache "
                           "holds the teacher's outputs for its own tokenisation only. Give the student the teacher's "
                           "tokenizer, or train with the live teacher")
    fields = {"teacher": "data.tokenizer" if config.data.tokenizer else "the teacher's own",
              "student": "data.student_tokenizer" if config.data.student_tokenizer else
              ("the student's own" if two_tokenizers else "the teacher's, which the student shares")}
    for role, model in models.items():
        if model is None:
            continue
        _check_context(model, role, config.data.max_length)
        tokenizer = data.for_student().tokenizer if role == "student" else data.tokenizer
        if tokenizer is not None:
            _check_vocabulary(model, role, tokenizer, fields[role])
    if not two_tokenizers:
        return
    general = config.student.general
    if general is not None and general.objective is None:
        raise DistillError("student.general's default objective matches hidden states token by token, but the "
                           "student reads the texts with a tokenizer of its own, whose tokens do not line up with "
                           "the teacher's. Give student.general.objective per-text terms "
                           f"({', '.join(PER_TEXT_SIGNALS)}), or give the student the teacher's tokenizer")
    from distill.config.loss_catalog import entry

    objectives = {"objective": config.objective, "student.general.objective": general and general.objective}
    for field, objective in objectives.items():
        for term in objective.terms if objective is not None else ():
            if "teacher" not in entry(term.loss).inputs:
                continue
            per_token = [signal for signal in (term.student, term.teacher) if signal not in PER_TEXT_SIGNALS]
            if per_token:
                signals = ", ".join(PER_TEXT_SIGNALS)
                raise DistillError(f"{field} term {term.display_name!r} compares {per_token[0]!r} token by token, "
                                   "but the student reads the texts with a tokenizer of its own, whose tokens do not "
                                   f"line up with the teacher's. Compare per-text signals ({signals}), or give the "
                                   "student the teacher's tokenizer")
