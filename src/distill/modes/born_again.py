"""Born-again networks (Furlanello et al. 2018): generation 0 is trained on labels; generation g+1, the same
architecture from a fresh initialisation, learns from generation g with the recipe's objective. Optionally the
generations' mean probability is evaluated as an ensemble (their "BAN ensemble")."""

from __future__ import annotations

from typing import Any

from distill.config import BornAgainMode, Recipe
from distill.models import TEACHER_SEED_OFFSET, build_seeded, build_teacher
from distill.modes.common import (
    ProbabilityEnsemble,
    baseline_stages,
    build_mode_student,
    checked,
    distil_stage,
    finish_stage,
    prepare_stage,
)
from distill.stages import RunContext, Stage
from distill.training_stage import train_stage


def _initial(index: int) -> str:
    return "student" if index == 1 else f"generation-{index}-initial"


def plan(config: Recipe, mode: BornAgainMode, given: set[str]) -> list[Stage]:
    # generation 0 is the teacher's architecture when the recipe has one, else the student's
    zero_spec = (config.teacher.model if ("teacher" in given or config.teacher.model is not None)
                 else config.student.model)

    def prepare(context: RunContext) -> None:
        artifacts = context.artifacts
        if "teacher" in given:
            artifacts["generation-0"] = artifacts["teacher"]
        elif config.teacher.model is not None:
            artifacts["generation-0"] = build_teacher(config, context.data)
        else:
            artifacts["generation-0"] = build_seeded(config.student.model, context.data,
                                                     config.seed + TEACHER_SEED_OFFSET, config.teacher.weights)
        artifacts["student"] = build_mode_student(context)
        # each generation starts from its own initial weights; generation 1 from the student's
        for index in range(2, mode.generations + 1):
            artifacts[_initial(index)] = build_seeded(config.student.model, context.data, config.seed + index)
        checked(context, {"generation-0": artifacts["generation-0"], "student": artifacts["student"]},
                distilled=("student", "generation-0"))

    stages = [prepare_stage("build generation 0, the student and every generation's initial weights; check them",
                            prepare, ("generation-0", "student", *map(_initial, range(2, mode.generations + 1))),
                            given),
              train_stage("generation-0", model="generation-0", does="train generation 0 on hard labels",
                          training=config.teacher.train or config.training, seed=config.seed + TEACHER_SEED_OFFSET,
                          spec=zero_spec, frozen=True),
              *baseline_stages(config)]
    for index in range(1, mode.generations + 1):
        stages.append(distil_stage(config, f"generation-{index}", model=_initial(index),
                                   teacher=f"generation-{index - 1}", seed=config.seed + index, frozen=True,
                                   does=f"generation {index} learns from generation {index - 1}"))
    last = f"generation-{mode.generations}"

    def models(context: RunContext) -> dict[str, Any]:
        generations = {f"generation-{index}": context[f"generation-{index}"] for index in range(mode.generations + 1)}
        found = {"teacher": generations["generation-0"], **generations, "baseline": context.get("baseline"),
                 "student": generations[last]}
        if mode.ensemble and mode.generations > 1:
            found["ensemble"] = ProbabilityEnsemble({name.replace("-", "_"): model for name, model in
                                                     generations.items() if name != "generation-0"})
        return found

    teachers_of = {f"generation-{index}": f"generation-{index - 1}" for index in range(1, mode.generations + 1)}
    stages.append(finish_stage(config, models, reads=(last,), student_stage=last,
                               extra=lambda context: {"teachers_of": teachers_of}))
    return stages
