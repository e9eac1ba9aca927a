"""Training regimes that are more than one frozen teacher -> student pass. Each is one short module whose
``plan(config, mode, given)`` returns its list of stages (see ``distill.stages``), every model trained by the
ordinary trainer (``distill.training_stage``) with the ordinary objective:

- ``multi_teacher``: several teachers combined by fixed weights or per-sample confidence, or each with its own terms;
- ``mutual``: peers trained together, each against the others' current outputs (deep mutual learning);
- ``born_again``: generation g+1 learns from generation g, with an optional ensemble of generations;
- ``assistant_chain``: teacher -> assistants -> student, every stage smaller than the last;
- ``transfer_set``: the student keeps only a fraction of the labels, the teacher labels the rest;
- ``counterfactual``: interchange-intervention distillation at aligned locations (Wu et al. 2022);
- ``data_free``: DeepInversion inputs synthesised from the teacher's batch-norm statistics, or a generator trained
  against the student (``adversarial``, any teacher);
- ``self_distillation``: auxiliary exits inside the student learn from its own final output.

A recipe picks one with a ``mode:`` section; ``distill.run.plan`` dispatches here.
"""

from __future__ import annotations

from importlib import import_module

from distill.config import Recipe
from distill.errors import DistillError
from distill.modes.common import require_student_spec
from distill.stages import Stage

MODES = ("multi_teacher", "mutual", "born_again", "assistant_chain", "transfer_set", "counterfactual", "data_free",
         "self_distillation")
# regimes with several teachers or peers take them from the recipe only
_BUILD_THEIR_TEACHERS = ("multi_teacher", "mutual", "self_distillation")


def plan(config: Recipe, given: set[str] | frozenset[str] = frozenset()) -> list[Stage]:
    """The stages of ``config``'s regime; ``given`` names the modules passed from Python (``teacher``,
    ``student``)."""
    assert config.mode is not None
    kind = config.mode.kind
    if "teacher" in given and kind in _BUILD_THEIR_TEACHERS:
        raise DistillError(f"mode {kind!r} builds its models from the recipe; a teacher module cannot be "
                           "passed (export it with distill.models.export_model and name it with kind: saved)")
    require_student_spec(config, set(given))
    if config.objective is None:
        raise DistillError(f"mode {kind!r} trains its models with the recipe's objective, and the recipe has none: "
                           "add an objective section (e.g. objective: {alpha: 0.9, temperature: 4})")
    return import_module(f"distill.modes.{kind}").plan(config, config.mode, set(given))
