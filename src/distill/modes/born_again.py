"""Born-again networks (Furlanello et al. 2018): generation 0 is trained on labels; generation g+1, the same
architecture from a fresh initialisation, learns from generation g with the recipe's objective. Optionally the
generations' mean probability is evaluated as an ensemble (their "BAN ensemble")."""

from __future__ import annotations

from distill.config import BornAgainMode
from distill.modes.common import ModeRun, ProbabilityEnsemble, freeze, require_classifier
from distill.objective import Objective
from distill.run import RunResult


def run(job: ModeRun, student, mode: BornAgainMode) -> RunResult:
    config = job.config
    require_classifier(job.data, "born_again")
    if job.given_teacher is not None or config.teacher.model is not None:
        first, spec = job.teacher("born_again")
    else:  # generation 0 is the student's architecture
        spec = config.student.model
        first = job.build(spec, config.seed + 1000, config.teacher.weights)
    generation = job.teacher_stage("generation-0", first, spec, config.teacher.train or config.training)
    job.check({"generation-0": generation, "student": student})
    baseline = job.baseline(student)
    generations = {"generation-0": generation}
    teachers_of = {}
    for index in range(1, mode.generations + 1):
        # Each generation starts from its own initial weights; generation 1 from the student's.
        fresh = student if index == 1 else job.build(config.student.model, config.seed + index)
        name = f"generation-{index}"
        teachers_of[name] = f"generation-{index - 1}"
        generation = freeze(job.stage(name, fresh, config.student.model, objective=Objective(config.objective),
                                      seed=config.seed + index, teacher=generation))
        generations[name] = generation
    models = {"teacher": generations["generation-0"], **generations, "baseline": baseline, "student": generation}
    if mode.ensemble and mode.generations > 1:
        models["ensemble"] = ProbabilityEnsemble({name.replace("-", "_"): model for name, model in generations.items()
                                                  if name != "generation-0"})
    return job.finish(models, student_stage=f"generation-{mode.generations}",
                      student_spec=config.student.model, extra={"teachers_of": teachers_of})
