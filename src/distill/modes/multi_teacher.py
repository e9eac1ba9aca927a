"""Several teachers into one student (Hinton 2015's ensemble; You et al. 2017; per-teacher terms as in
multi-task distillation). The teachers become one frozen module: its ``logits`` are their combination, and each
teacher's own outputs stay addressable as signals ``<name>`` and ``<name>.<module path>``."""

from __future__ import annotations

from distill.config import MultiTeacherMode
from distill.modes.common import ModeRun, ProbabilityEnsemble, freeze, require_classifier
from distill.objective import Objective
from distill.run import RunResult


def run(job: ModeRun, student, mode: MultiTeacherMode) -> RunResult:
    config = job.config
    require_classifier(job.data, "multi_teacher")
    built = {spec.name: job.build(spec.model, config.seed + 1000 + 17 * index, spec.weights)
             for index, spec in enumerate(mode.teachers)}
    # Every teacher, and the student, must speak the data's label set: checked before anything trains.
    job.check({f"teacher {name!r}": model for name, model in built.items()} | {"student": student})
    teachers = {}
    for index, spec in enumerate(mode.teachers):
        model = built[spec.name]
        if spec.train is not None:
            model = job.stage(f"teacher-{spec.name}", model, spec.model, objective=Objective.hard_labels(),
                              seed=config.seed + 1000 + 17 * index, training=spec.train)
        teachers[spec.name] = freeze(model)
    ensemble = freeze(ProbabilityEnsemble(teachers, temperature=config.objective.temperature, weights=mode.weights,
                                          combine=mode.combine))
    baseline = job.baseline(student)
    trained = job.stage("student", student, config.student.model, objective=Objective(config.objective),
                        seed=config.seed, teacher=ensemble)
    return job.finish({"teacher": ensemble, **{f"teacher-{name}": model for name, model in teachers.items()},
                       "baseline": baseline, "student": trained})
