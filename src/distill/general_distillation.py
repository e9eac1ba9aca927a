"""TinyBERT's two steps in one run: ``student.general`` puts a general-distillation stage before the task's.

The student first learns the teacher's intermediate representations (hidden states by default, attentions with
``minilm_attention`` terms) on unlabelled text, against the teacher as loaded: before ``teacher.train``
fine-tunes it, so the student inherits the encoder rather than the task. Then the run goes on as usual: the
teacher is fine-tuned, the task's objective distils the (generally distilled) student, the baseline starts from
the same weights.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Any

from torch import nn

from distill.errors import DistillError
from distill.stages import RunContext, Stage
from distill.training_stage import train_stage

STAGE = "general"


def general_texts(config: Any, data: Any) -> list[Any]:
    """The general step's texts: its file's, or the task's training texts without their labels."""
    source = config.student.general.texts
    task_texts = data.for_student().train.texts
    if source.path is None:
        return list(task_texts)
    from distill.data.labelled_text import read_text_source

    return read_text_source(source, default_text=config.data.text, field="student.general.texts", like=task_texts)


def general_data(config: Any, data: Any) -> Any:
    """The run's data with the general step's texts as unlabelled train and validation splits, tokenised as the
    student reads them (the test split stays the task's; nothing evaluates on it here)."""
    from distill.data.tokens import TokenizedTexts

    general = config.student.general
    texts = general_texts(config, data)
    if len(texts) < 2:
        raise DistillError(f"student.general.texts: {len(texts)} text; the general step needs at least 2 (one to "
                           "train on, one to validate)")
    order = list(range(len(texts)))
    random.Random(config.seed).shuffle(order)
    held_out = min(general.val_texts, len(texts) // 5 or 1)
    task = data.for_student().train

    def split(indices: list[int]) -> TokenizedTexts:
        return TokenizedTexts([texts[index] for index in indices], task.tokenizer, max_length=config.data.max_length,
                              teacher_tokenizer=task.teacher_tokenizer)

    data.summary["general"] = {"texts": len(texts), "validation": held_out,
                               "source": general.texts.path or "the task's training texts"}
    return replace(data.for_student(), train=split(order[held_out:]), val=split(order[:held_out]))


def hidden_state_pairs(student_layers: int, teacher_layers: int, origin: list[int] | None = None
                       ) -> list[tuple[int, int]]:
    """Which teacher hidden state each student hidden state learns (index 0: the embeddings' output, i: block i's).
    A student derived from the teacher learns the blocks it was copied from (``origin``); any other student
    TinyBERT's uniform mapping, block m to teacher block m * N / M."""
    if origin is not None:
        return [(0, 0), *((block + 1, layer + 1) for block, layer in enumerate(origin))]
    return [(0, 0), *((block, math.floor(block * teacher_layers / student_layers + 0.5))
                      for block in range(1, student_layers + 1))]


def default_objective(config: Any, teacher: nn.Module, student: nn.Module) -> Any:
    """An MSE hint per student hidden state (``hidden_state_pairs``), learned projections where widths differ."""
    from distill.config import ObjectiveConfig
    from distill.derive import chosen_layers, find_layer_stack

    origin = chosen_layers(config.student.from_teacher, teacher) if config.student.from_teacher else None
    pairs = hidden_state_pairs(len(find_layer_stack(student)[1]), len(find_layer_stack(teacher)[1]), origin)
    return ObjectiveConfig(terms=[{"name": f"hidden{student_index}", "loss": "hint",
                                   "student": f"hidden_states[{student_index}]",
                                   "teacher": f"hidden_states[{teacher_index}]"}
                                  for student_index, teacher_index in pairs])


def general_objective(context: RunContext) -> Any:
    """The recipe's general objective, or the default one for these two models."""
    general = context.config.student.general
    if general.objective is not None:
        return general.objective
    return default_objective(context.config, context["teacher"], context["student"])


def general_stage(config: Any) -> Stage:
    """The general step: the student trained on the general texts against the teacher as loaded; it replaces
    artifact ``student`` for every later stage."""
    from distill.objective import Objective

    general = config.student.general
    stage = train_stage(STAGE, model="student", teacher="teacher", data="general-data", output="student",
                        training=general.training or config.training, seed=config.seed, spec=config.student.model,
                        objective=lambda context: Objective(general_objective(context)),
                        does="general distillation: the student matches the teacher's "
                             + ("hidden states" if general.objective is None else "signals")
                             + " on unlabelled text, before the task")

    def run(context: RunContext) -> dict[str, Any] | None:
        # the trainer freezes the teacher it distils from; this one may be fine-tuned next (teacher.train)
        trainable = [parameter for parameter in context["teacher"].parameters() if parameter.requires_grad]
        try:
            return stage.run(context)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)
    return replace(stage, run=run)
