"""Several teachers into one student (Hinton 2015's ensemble; You et al. 2017; per-teacher terms as in
multi-task distillation). The teachers become one frozen module: its ``logits`` are their combination, and each
teacher's own outputs stay addressable as signals ``<name>`` and ``<name>.<module path>``."""

from __future__ import annotations

from torch import nn

from distill.config import MultiTeacherMode, Recipe
from distill.models import TEACHER_SEED_OFFSET, build_seeded
from distill.modes.common import (
    ProbabilityEnsemble,
    baseline_stages,
    build_mode_student,
    checked,
    distil_stage,
    finish_stage,
    freeze,
    prepare_stage,
    probe_recipe_objective,
)
from distill.stages import RunContext, Stage
from distill.training_stage import train_stage


def plan(config: Recipe, mode: MultiTeacherMode, given: set[str]) -> list[Stage]:
    names = [f"teacher-{spec.name}" for spec in mode.teachers]
    seeds = [config.seed + TEACHER_SEED_OFFSET + 17 * index for index in range(len(mode.teachers))]

    def prepare(context: RunContext) -> None:
        for name, seed, spec in zip(names, seeds, mode.teachers):
            context.artifacts[name] = build_seeded(spec.model, context.data, seed, spec.weights)
        context.artifacts["student"] = build_mode_student(context)
        # every teacher, and the student, must speak the data's label set: checked before anything trains
        checked(context, {f"teacher {spec.name!r}": context[name] for name, spec in zip(names, mode.teachers)}
                | {"student": context["student"]})
        # the objective against the teachers combined as they are now (untrained), before any of them trains
        probe_recipe_objective(context, context["student"], ensemble({spec.name: context[name]
                                                                      for name, spec in zip(names, mode.teachers)}))

    def ensemble(members: dict[str, nn.Module]) -> ProbabilityEnsemble:
        return ProbabilityEnsemble(members, temperature=config.objective.temperature, weights=mode.weights,
                                   combine=mode.combine)

    def combine(context: RunContext) -> None:
        members = {spec.name: freeze(context[name]) for name, spec in zip(names, mode.teachers)}
        context.artifacts["teacher"] = freeze(ensemble(members))

    stages = [prepare_stage("build every teacher and the student; check them", prepare, (*names, "student"), given)]
    stages += [train_stage(name, model=name, does=f"train teacher {spec.name!r} on hard labels", training=spec.train,
                           seed=seed, spec=spec.model, frozen=True)
               for name, seed, spec in zip(names, seeds, mode.teachers) if spec.train is not None]
    stages += [Stage("ensemble", f"combine the teachers ({mode.combine} weights) into one frozen teacher", combine,
                     reads=tuple(names), writes=("teacher",)),
               *baseline_stages(config),
               distil_stage(config, "student", model="student", teacher="teacher", seed=config.seed,
                            does="distil the student from the combined teachers"),
               finish_stage(config, lambda context: {"teacher": context["teacher"],
                                                     **{name: context[name] for name in names},
                                                     "baseline": context.get("baseline"),
                                                     "student": context["student"]},
                            reads=("teacher", "student"))]
    return stages
