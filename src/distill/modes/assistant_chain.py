"""Teacher-assistant chains (Mirzadeh et al. 2020): teacher -> assistant(s) -> student, each stage an ordinary
distillation run with the recipe's objective whose result is the next stage's teacher. A chain only makes sense
if every stage is smaller than the one that teaches it, which is checked before anything trains."""

from __future__ import annotations

from distill.config import AssistantChainMode
from distill.errors import DistillError
from distill.modes.common import ModeRun, freeze, parameter_count
from distill.objective import Objective
from distill.run import RunResult


def check_shrinks(sizes: list[tuple[str, int]]) -> None:
    for (bigger_name, bigger), (smaller_name, smaller) in zip(sizes, sizes[1:]):
        if smaller >= bigger:
            chain = " -> ".join(f"{name} ({count:,})" for name, count in sizes)
            raise DistillError(f"assistant chain does not shrink: {smaller_name} has {smaller:,} parameters, not "
                               f"fewer than {bigger_name} ({bigger:,}) which teaches it. Parameters along the chain: "
                               f"{chain}. Order mode.assistants from largest to smallest, each smaller than the "
                               "teacher and larger than the student.")


def run(job: ModeRun, student, mode: AssistantChainMode) -> RunResult:
    config = job.config
    teacher, teacher_spec = job.teacher("assistant_chain")
    assistants = [job.build(spec, config.seed + 100 + index) for index, spec in enumerate(mode.assistants)]
    names = ["teacher", *(f"assistant-{index + 1}" for index in range(len(assistants))), "student"]
    check_shrinks([(name, parameter_count(model)) for name, model in zip(names, [teacher, *assistants, student])])
    job.check({"teacher": teacher, **dict(zip(names[1:-1], assistants)), "student": student})
    teacher = job.teacher_stage("teacher", teacher, teacher_spec, config.teacher.train)
    baseline = job.baseline(student)
    chain = {"teacher": teacher}
    current = teacher
    for index, (name, spec, model) in enumerate(zip(names[1:-1], mode.assistants, assistants)):
        current = freeze(job.stage(name, model, spec, objective=Objective(config.objective),
                                   seed=config.seed + 100 + index, teacher=current))
        chain[name] = current
    trained = job.stage("student", student, config.student.model, objective=Objective(config.objective),
                        seed=config.seed, teacher=current)
    return job.finish({**chain, "baseline": baseline, "student": trained},
                      extra={"chain": [[name, parameter_count(model)] for name, model in
                                       zip(names, [*chain.values(), trained])]})
