"""In-model self-distillation (Zhang et al. 2019, "Be your own teacher"): classifiers attached to intermediate
layers of the student learn from the labels and from the student's own final output.

The student and its exits are one module for the ordinary trainer. Signal ``heads.<i>`` is exit i's logits and
``stacked`` all exits then the final output as [exits + 1, batch, classes]. The recipe's objective is each
exit's: cross_entropy terms on its logits (and the final output's), soft_kl terms against the final output
(detached), through ``peer_kl`` with the last entry as the target. The feature-hint term of the paper is left out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from distill.config import ObjectiveConfig, Recipe, SelfDistillationMode, TermConfig
from distill.data.tokens import probe_batch
from distill.errors import DistillError
from distill.modes.common import (
    baseline_stages,
    build_mode_student,
    checked,
    finish_stage,
    prepare_stage,
    require_classifier,
)
from distill.stages import RunContext, Stage
from distill.training_stage import train_stage


def exit_head(feature: Tensor, num_classes: int) -> nn.Module:
    """Global average pooling over every axis after the channels, then a linear classifier."""
    if feature.dim() == 2:
        return nn.Linear(feature.shape[1], num_classes)
    if feature.dim() in (3, 4):
        return nn.Sequential(nn.Flatten(2), _MeanLast(), nn.Linear(feature.shape[1], num_classes))
    raise DistillError(f"an exit needs features shaped [batch, channels, ...] with 2 to 4 axes, got "
                       f"{tuple(feature.shape)}")


class _MeanLast(nn.Module):
    def forward(self, inputs: Tensor) -> Tensor:
        return inputs.mean(-1)


class WithExits(nn.Module):
    def __init__(self, model: nn.Module, exits: list[str], probe_inputs: Tensor, num_classes: int):
        super().__init__()
        modules = dict(model.named_modules())
        for path in exits:
            if path not in modules or not path:
                raise DistillError(f"the student has no module {path!r} for an exit (mode.exits); some module names: "
                                   f"{', '.join(list(modules)[1:10])}")
        self.model, self.paths = model, list(exits)
        self._features: dict[str, Tensor] = {}
        self._handles = [modules[path].register_forward_hook(self._keep(path)) for path in exits]
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(probe_inputs)
        model.train(was_training)
        self.heads = nn.ModuleList([exit_head(self._features[path], num_classes) for path in exits])
        self.stacked = nn.Identity()

    def _keep(self, path: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            self._features[path] = output if isinstance(output, Tensor) else output[0]
        return hook

    def forward(self, inputs: Tensor) -> Tensor:
        final = self.model(inputs)
        exits = [head(self._features[path]) for head, path in zip(self.heads, self.paths)]
        self._features = {}
        self.stacked(torch.stack([*exits, final]))
        return final

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class ExitView(nn.Module):
    """One exit as a classifier of its own, for evaluation."""

    def __init__(self, wrapped: WithExits, index: int):
        super().__init__()
        self.wrapped, self.index = wrapped, index

    def forward(self, inputs: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = self.wrapped.stacked.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            self.wrapped(inputs)
        finally:
            handle.remove()
        return captured[0][self.index]


def exit_objective(objective: ObjectiveConfig, exits: int) -> ObjectiveConfig:
    terms = []
    for term in objective.terms:
        if term.loss == "cross_entropy":
            terms.append(term.model_copy(update={"name": f"{term.display_name}/final", "student": "logits"}))
            terms += [term.model_copy(update={"name": f"{term.display_name}/exit{index}", "student": f"heads.{index}"})
                      for index in range(exits)]
        elif term.loss == "soft_kl" and term.student == "logits" and term.teacher == "logits":
            terms += [TermConfig(name=f"{term.display_name}/exit{index}", loss="peer_kl", weight=term.weight,
                                 student="stacked", temperature=term.temperature or objective.temperature,
                                 options={"peer": index, "target": -1}) for index in range(exits)]
        else:
            raise DistillError(f"self_distillation: objective term {term.display_name!r} ({term.loss}) is not "
                               "supported; use cross_entropy terms for labels and soft_kl terms for the exits")
    return ObjectiveConfig(temperature=objective.temperature, terms=terms)


def plan(config: Recipe, mode: SelfDistillationMode, given: set[str]) -> list[Stage]:
    objective = exit_objective(config.objective, len(mode.exits))  # refused here, before anything is built

    def attach(context: RunContext) -> None:
        probe = probe_batch(context.data.train)
        if "inputs" not in probe:
            raise DistillError("self_distillation: exits are implemented for models called on one input tensor")
        context.artifacts["student-with-exits"] = WithExits(context["student"], mode.exits, probe["inputs"],
                                                            context.data.num_classes)

    def prepare(context: RunContext) -> None:
        require_classifier(context.data, "self_distillation")
        context.artifacts["student"] = build_mode_student(context)
        attach(context)  # exits checked before anything trains
        context["student-with-exits"].remove()
        checked(context, {"student": context["student"]})

    def exits_seeded(context: RunContext) -> None:
        torch.manual_seed(config.seed + 7)  # the exits' initial weights depend on the seed alone
        attach(context)

    def models(context: RunContext) -> dict[str, Any]:
        trained = context["self-distillation"]
        return {**{f"exit-{index}": ExitView(trained, index) for index in range(len(mode.exits))},
                "baseline": context.get("baseline"), "student": trained.model}

    def finish(context: RunContext) -> None:
        evaluate.run(context)
        context["self-distillation"].remove()

    evaluate = finish_stage(config, models, reads=("self-distillation",), student_stage="self-distillation",
                            extra=lambda context: {"exits": list(mode.exits)})
    return [prepare_stage("build the student; check its exits", prepare, ("student",), given),
            *baseline_stages(config),
            Stage("exits", "attach the exits to the student (initial weights from the seed)", exits_seeded,
                  reads=("student",), writes=("student-with-exits",)),
            train_stage("self-distillation", model="student-with-exits", objective=objective,
                        training=config.training, seed=config.seed,
                        does="train the student and its exits, each exit against the final output"),
            replace(evaluate, run=finish)]
