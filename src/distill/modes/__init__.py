"""Training regimes that are more than one frozen teacher -> student pass. Each is one short module that says
who teaches whom and trains every model with the ordinary trainer (``distill.trainer.fit``) and objective:

- ``multi_teacher``: several teachers combined by fixed weights or per-sample confidence, or each with its own terms;
- ``mutual``: peers trained together, each against the others' current outputs (deep mutual learning);
- ``born_again``: generation g+1 learns from generation g, with an optional ensemble of generations;
- ``assistant_chain``: teacher -> assistants -> student, every stage smaller than the last;
- ``transfer_set``: the student keeps only a fraction of the labels, the teacher labels the rest;
- ``counterfactual``: interchange-intervention distillation at aligned locations (Wu et al. 2022);
- ``data_free``: DeepInversion inputs synthesised from the teacher's batch-norm statistics, or a generator trained
  against the student (``adversarial``, any teacher);
- ``self_distillation``: auxiliary exits inside the student learn from its own final output.

A recipe picks one with a ``mode:`` section; ``distill.train(recipe)`` dispatches here.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from torch import nn

from distill.config import Recipe
from distill.errors import DistillError
from distill.modes.common import ModeRun
from distill.run import RunData, RunResult

MODES = ("multi_teacher", "mutual", "born_again", "assistant_chain", "transfer_set", "counterfactual", "data_free",
         "self_distillation")


def run_mode(config: Recipe, run_dir: Path, data: RunData, *, resume: bool = False, student: nn.Module | None = None,
             teacher: nn.Module | None = None, show_progress: bool = True) -> RunResult:
    """Run ``config`` (which has a ``mode``) in ``run_dir`` on ``data``; ``student``/``teacher`` modules replace
    what the recipe would build (regimes with several teachers or peers take them from the recipe only)."""
    assert config.mode is not None
    if teacher is not None and config.mode.kind in ("multi_teacher", "mutual", "self_distillation"):
        raise DistillError(f"mode {config.mode.kind!r} builds its models from the recipe; a teacher module cannot be "
                           "passed (export it with distill.models.export_model and name it with kind: saved)")
    job = ModeRun(config, run_dir, data, resume, show_progress, given_teacher=teacher)
    if student is None:
        if config.student.model is None:
            raise DistillError(f"mode {config.mode.kind!r}: student.model is not set and no student module was passed")
        student = job.build(config.student.model, config.seed, config.student.weights)
    module = import_module(f"distill.modes.{config.mode.kind}")
    return module.run(job, student, config.mode)
