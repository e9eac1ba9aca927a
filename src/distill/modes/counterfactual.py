"""Interchange-intervention ("causal") distillation, Wu et al. 2022. For an aligned pair of locations, each
model is run on a second input (the source: the batch rolled by one, so teacher and student see the same pairs),
its representation at the location is kept, and the model is run again on the base input with that
representation swapped in. The student learns to give the teacher's output under the same intervention (term
``interchange``), besides the recipe's own terms and, as in the paper, a cosine term on the aligned
representations (term ``aligned``).

The intervention is attached with hooks: a forward pre-hook on the model runs the source pass and the
intervened pass before the ordinary one, and hands the intervened output to an added parameter-free
``counterfactual`` module, which the trainer's signal capture reads like any module output. The ordinary pass
runs last, so every other captured signal belongs to it. Nothing is added to the model's weights."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from distill.config import CounterfactualMode, ObjectiveConfig, Recipe, TermConfig
from distill.data.tokens import probe_batch
from distill.errors import DistillError
from distill.modes.common import (
    baseline_stages,
    build_mode_student,
    build_mode_teacher,
    checked,
    distil_stage,
    finish_stage,
    prepare_stage,
    require_classifier,
    teacher_stages,
)
from distill.stages import RunContext, Stage

SIGNAL = "counterfactual"


def source_of(inputs: Tensor) -> Tensor:
    """The second input of each example: the batch rolled by one."""
    return inputs.roll(1, dims=0)


class Interchange:
    """Attach an interchange intervention at module ``location`` of ``model``; ``remove()`` detaches it."""

    def __init__(self, model: nn.Module, location: str, role: str):
        modules = dict(model.named_modules())
        if location not in modules or not location:
            raise DistillError(f"the {role} has no module {location!r} to intervene on (mode.{role}); some module "
                               f"names: {', '.join(list(modules)[1:10])}")
        if hasattr(model, SIGNAL):
            raise DistillError(f"the {role} already has an attribute {SIGNAL!r}")
        self.model, self.module = model, modules[location]
        model.add_module(SIGNAL, nn.Identity())
        self._busy = False
        self._handle = model.register_forward_pre_hook(self._before)

    def intervened(self, inputs: Tensor) -> Tensor:
        """The model's output on ``inputs`` with the representation at the location taken from ``source_of``."""
        kept: dict[str, Any] = {}
        keep = self.module.register_forward_hook(lambda module, args, output: kept.__setitem__("value", output))
        try:
            self.model(source_of(inputs))
        finally:
            keep.remove()
        swap = self.module.register_forward_hook(lambda module, args, output: kept["value"])
        try:
            return self.model(inputs)
        finally:
            swap.remove()

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            getattr(self.model, SIGNAL)(self.intervened(args[0]))
        finally:
            self._busy = False

    def remove(self) -> None:
        self._handle.remove()
        delattr(self.model, SIGNAL)


def location_shape(model: nn.Module, location: str, batch: dict[str, Tensor]) -> tuple[int, ...]:
    module = dict(model.named_modules())[location]
    seen: dict[str, Tensor] = {}
    handle = module.register_forward_hook(lambda module, args, output: seen.__setitem__("value", output))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(batch["inputs"])
    finally:
        handle.remove()
        model.train(was_training)
    value = seen["value"]
    return tuple(value.shape[1:]) if isinstance(value, Tensor) else ()


def objective_with_interchange(config: ObjectiveConfig, mode: CounterfactualMode) -> ObjectiveConfig:
    terms = [*config.terms, TermConfig(name="interchange", loss="soft_kl", weight=mode.weight, student=SIGNAL,
                                       teacher=SIGNAL)]
    if mode.align_weight > 0:
        terms.append(TermConfig(name="aligned", loss="cosine", weight=mode.align_weight, student=mode.student,
                                teacher=mode.teacher))
    return ObjectiveConfig(temperature=config.temperature, terms=terms)


def _check_locations(context: RunContext, mode: CounterfactualMode) -> None:
    teacher, student = context["teacher"], context["student"]
    probe = probe_batch(context.data.train)
    if "inputs" not in probe:
        raise DistillError("counterfactual: interventions are implemented for models called on one input tensor "
                           "(array datasets); this dataset gives keyword inputs (tokenised text)")
    for role, model, location in (("teacher", teacher, mode.teacher), ("student", student, mode.student)):
        if location not in dict(model.named_modules()) or not location:
            Interchange(model, location, role)  # raises, naming the missing module
    student_shape = location_shape(student, mode.student, probe)
    teacher_shape = location_shape(teacher, mode.teacher, probe)
    if mode.align_weight > 0 and student_shape != teacher_shape and not mode.adapter:
        raise DistillError(f"counterfactual: the aligned locations differ in shape, student {mode.student!r} "
                           f"{student_shape} vs teacher {mode.teacher!r} {teacher_shape}, and mode.adapter is false. "
                           "Choose locations of the same shape, set mode.adapter: true to learn a projection for the "
                           "aligned term, or mode.align_weight: 0 to intervene without comparing representations.")


def plan(config: Recipe, mode: CounterfactualMode, given: set[str]) -> list[Stage]:
    def prepare(context: RunContext) -> None:
        require_classifier(context.data, "counterfactual")
        context.artifacts["teacher"] = build_mode_teacher(context)
        context.artifacts["student"] = build_mode_student(context)
        _check_locations(context, mode)
        checked(context, {"student": context["student"]})

    distil = distil_stage(config, "student", model="student", teacher="teacher", seed=config.seed,
                          objective=objective_with_interchange(config.objective, mode),
                          does="distil the student, matching the teacher under interchange interventions")

    def intervened(context: RunContext) -> dict[str, Any] | None:
        attached = [Interchange(context["teacher"], mode.teacher, "teacher"),
                    Interchange(context["student"], mode.student, "student")]
        try:
            return distil.run(context)
        finally:
            for intervention in attached:
                intervention.remove()

    def agreement(context: RunContext) -> dict[str, Any]:
        return {"interchange_agreement": interchange_agreement(context["teacher"], context["student"], mode,
                                                               context.data.test.inputs)}

    return [prepare_stage("build teacher and student; check the aligned locations", prepare, ("teacher", "student"),
                          given),
            *teacher_stages(config), *baseline_stages(config), replace(distil, run=intervened),
            finish_stage(config, lambda context: {"teacher": context["teacher"], "baseline": context.get("baseline"),
                                                  "student": context["student"]},
                         reads=("teacher", "student"), extra=agreement)]


@torch.no_grad()
def interchange_agreement(teacher: nn.Module, student: nn.Module, mode: CounterfactualMode, inputs: Tensor) -> float:
    """Share of examples where student and teacher predict the same class under the intervention (the paper's
    interchange-intervention accuracy, measured against the teacher)."""
    attached = [Interchange(teacher, mode.teacher, "teacher"), Interchange(student, mode.student, "student")]
    try:
        was_training = [teacher.training, student.training]
        teacher.eval(), student.eval()
        same = attached[0].intervened(inputs).argmax(-1) == attached[1].intervened(inputs).argmax(-1)
        teacher.train(was_training[0]), student.train(was_training[1])
    finally:
        for intervention in attached:
            intervention.remove()
    return round(float(same.float().mean()), 6)
