"""Teacher-assistant chains (Mirzadeh et al. 2020): teacher -> assistant(s) -> student, each stage an ordinary
distillation run with the recipe's objective whose result is the next stage's teacher. A chain only makes sense
if every stage is smaller than the one that teaches it, which is checked before anything trains."""

from __future__ import annotations

from distill.config import AssistantChainMode, Recipe
from distill.errors import DistillError
from distill.models import build_seeded, check_outputs, count_parameters
from distill.modes.common import (
    baseline_stages,
    build_mode_student,
    build_mode_teacher,
    distil_stage,
    finish_stage,
    prepare_stage,
    teacher_stages,
)
from distill.stages import RunContext, Stage


def check_shrinks(sizes: list[tuple[str, int]]) -> None:
    for (bigger_name, bigger), (smaller_name, smaller) in zip(sizes, sizes[1:]):
        if smaller >= bigger:
            chain = " -> ".join(f"{name} ({count:,})" for name, count in sizes)
            raise DistillError(f"assistant chain does not shrink: {smaller_name} has {smaller:,} parameters, not "
                               f"fewer than {bigger_name} ({bigger:,}) which teaches it. Parameters along the chain: "
                               f"{chain}. Order mode.assistants from largest to smallest, each smaller than the "
                               "teacher and larger than the student.")


def plan(config: Recipe, mode: AssistantChainMode, given: set[str]) -> list[Stage]:
    assistants = [f"assistant-{index + 1}" for index in range(len(mode.assistants))]
    names = ["teacher", *assistants, "student"]

    def prepare(context: RunContext) -> None:
        artifacts = context.artifacts
        artifacts["teacher"] = build_mode_teacher(context)
        for index, (name, spec) in enumerate(zip(assistants, mode.assistants)):
            artifacts[name] = build_seeded(spec, context.data, config.seed + 100 + index)
        artifacts["student"] = build_mode_student(context)
        check_shrinks([(name, count_parameters(context[name])) for name in names])
        check_outputs({name: context[name] for name in names}, context.data)

    stages = [prepare_stage("build the teacher, the assistants and the student; check that the chain shrinks",
                            prepare, tuple(names), given),
              *teacher_stages(config), *baseline_stages(config)]
    for index, (name, spec) in enumerate(zip(assistants, mode.assistants)):
        stages.append(distil_stage(config, name, model=name, teacher=names[index], seed=config.seed + 100 + index,
                                   spec=spec, frozen=True, does=f"distil {name} from {names[index]}"))
    stages.append(distil_stage(config, "student", model="student", teacher=names[-2], seed=config.seed,
                               does=f"distil the student from {names[-2]}"))
    stages.append(finish_stage(
        config, lambda context: {**{name: context[name] for name in names[:-1]}, "baseline": context.get("baseline"),
                                 "student": context["student"]},
        reads=tuple(names),
        extra=lambda context: {"chain": [[name, count_parameters(context[name])] for name in names]}))
    return stages
