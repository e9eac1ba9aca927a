"""What every regime shares: its run directory, data, stages trained with the ordinary trainer, and the final
evaluation of every model it produced side by side. Each regime file only says who teaches whom."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from distill.checkpoint import write_json_atomic
from distill.config import Recipe, TrainingConfig
from distill.errors import DistillError
from distill.evaluate.report import evaluate_models
from distill.models import build_model, count_parameters, export_model, load_weights
from distill.objective import Objective
from distill.run import TEACHER_SEED_OFFSET, RunData, RunResult, _check_outputs, _save_recipe, _stage


@dataclass
class ModeRun:
    """One regime's run: the validated recipe, where it writes, its data, and the stages done so far."""
    config: Recipe
    run_dir: Path
    data: RunData
    resume: bool
    show_progress: bool
    given_teacher: nn.Module | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def build(self, spec: Any, seed: int, weights: str | None = None) -> nn.Module:
        """A model from its spec, initialised from ``seed`` alone (so resuming rebuilds the same weights)."""
        torch.manual_seed(seed)
        model = build_model(spec, input_shape=self.data.input_shape, num_classes=self.data.num_classes)
        if weights:
            load_weights(model, weights)
        return model

    def check(self, models: dict[str, nn.Module | None]) -> None:
        _check_outputs(models, self.data)
        _save_recipe(self.config, self.run_dir)

    def stage(self, name: str, model: nn.Module, spec: Any, *, objective: Objective, seed: int,
              teacher: nn.Module | None = None, training: TrainingConfig | None = None,
              data: RunData | None = None) -> nn.Module:
        """Train (or, when resuming a finished stage, reload) one model with the ordinary trainer and export it
        to ``run_dir/<name>``."""
        trained, self.stages[name] = _stage(
            name, model, spec, data or self.data, objective=objective, run_dir=self.run_dir, seed=seed,
            resume=self.resume, teacher=teacher, training=training or self.config.training,
            show_progress=self.show_progress)
        return trained

    def teacher(self, mode: str) -> tuple[nn.Module, Any]:
        """The teacher module passed from Python, or the one the recipe's teacher section builds (untrained)."""
        if self.given_teacher is not None:
            return self.given_teacher, None
        if self.config.teacher.model is None:
            raise DistillError(f"mode {mode!r}: teacher.model is not set and no teacher module was passed")
        spec = self.config.teacher.model
        return self.build(spec, self.config.seed + TEACHER_SEED_OFFSET, self.config.teacher.weights), spec

    def teacher_stage(self, name: str, teacher: nn.Module, spec: Any, train: TrainingConfig | None,
                      data: RunData | None = None) -> nn.Module:
        """Train ``teacher`` here on hard labels when ``train`` is given, then freeze it."""
        self.check({name: teacher})
        if train is not None:
            teacher = self.stage(name, teacher, spec, objective=Objective.hard_labels(),
                                 seed=self.config.seed + TEACHER_SEED_OFFSET, training=train, data=data)
        return freeze(teacher)

    def baseline(self, student: nn.Module, data: RunData | None = None) -> nn.Module | None:
        """The student architecture from the same initial weights, trained on hard labels alone."""
        if not self.config.baseline:
            return None
        return self.stage("baseline", copy.deepcopy(student), self.config.student.model,
                          objective=Objective.hard_labels(), seed=self.config.seed, data=data)

    def finish(self, models: dict[str, nn.Module | None], *, extra: dict[str, Any] | None = None,
               student_stage: str = "student", student_spec: Any = None) -> RunResult:
        """Evaluate every model on the test set (``teacher`` is the reference for agreement and gap recovered),
        write ``metrics.json`` and return the run. A final student trained under another stage name is also
        exported to ``student/``, where every run keeps it."""
        present = {name: model.eval() for name, model in models.items() if model is not None}
        if student_stage != "student" and "student" in present:
            export_model(present["student"], student_spec, self.run_dir / "student",
                         input_shape=self.data.input_shape, num_classes=self.data.num_classes)
        # exported stages have a folder under their name (size on disk); combinations built in the run do not
        metrics = evaluate_models(present, self.data.test, evaluation=self.config.evaluation,
                                  model_dirs={name: self.run_dir / name for name in present
                                              if (self.run_dir / name).is_dir()})
        metrics.update({
            "recipe": self.config.name, "seed": self.config.seed, "mode": self.config.mode.kind,  # type: ignore[union-attr]
            "steps": self.stages.get(student_stage, {}).get("steps"), "stages": self.stages,
            "data": self.data.summary, "wall_seconds": round(time.perf_counter() - self.started, 3), **(extra or {}),
        })
        write_json_atomic(self.run_dir / "metrics.json", metrics)
        if self.show_progress:
            print_models(metrics, list(present), self.run_dir)
        return RunResult(self.run_dir, metrics, present.get("student"), present.get("teacher"),  # type: ignore[arg-type]
                         present.get("baseline"))


def freeze(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


class ProbabilityEnsemble(nn.Module):
    """Frozen models combined as one teacher: the weighted mean of their probabilities at ``temperature``,
    returned as logits ``T * log(p)``, so that any loss softening by T recovers exactly that mean."""

    def __init__(self, members: dict[str, nn.Module], temperature: float = 1.0, weights: list[float] | None = None,
                 combine: str = "fixed"):
        super().__init__()
        weights = weights or [1.0] * len(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))
        self.temperature, self.combine = temperature, combine
        # Each member is a direct child named as given, so the signal ``<name>`` is its logits and
        # ``<name>.<path>`` any of its modules.
        self.member_names = list(members)
        for name, member in members.items():
            if hasattr(self, name):
                raise DistillError(f"a teacher may not be called {name!r} (a reserved name); rename it")
            self.add_module(name, member)

    def members(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.member_names]

    def member_weights(self, member_logits: Tensor) -> Tensor:
        """[members, batch] weights summing to one over members."""
        if self.combine == "confidence":
            log_probs = torch.log_softmax(member_logits.float(), dim=-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return torch.softmax(-entropy, dim=0)
        return self.weights[:, None].expand(member_logits.shape[:2])

    def forward(self, inputs: Tensor) -> Tensor:
        member_logits = torch.stack([member(inputs) for member in self.members()])
        weights = self.member_weights(member_logits)
        log_probs = torch.log_softmax(member_logits.float() / self.temperature, dim=-1)
        combined = torch.logsumexp(log_probs + weights.clamp_min(1e-30).log()[..., None], dim=0)
        return combined * self.temperature


def print_models(metrics: dict[str, Any], names: list[str], run_dir: Path) -> None:
    table = Table(title=f"{metrics.get('recipe')} ({metrics.get('mode')}; test set of {metrics.get('test_size')}, "
                        f"seed {metrics.get('seed')})")
    for column in ("model", "errors", "accuracy", "agrees w/ teacher", "params"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in names:
        row = metrics[name]
        table.add_row(name, str(row["errors"]), f"{row['accuracy']:.2%}",
                      f"{row['agreement']:.2%}" if "agreement" in row else "-", f"{row['params']:,}")
    console = Console()
    console.print(table)
    if metrics.get("gap_recovered") is not None:
        console.print(f"gap recovered: {metrics['gap_recovered']:.1%}")
    console.print(f"results: {run_dir}/metrics.json  log: {run_dir}/log.jsonl")


def parameter_count(model: nn.Module) -> int:
    return count_parameters(model)


def require_classifier(data: RunData, mode: str) -> None:
    if data.num_classes is None:
        raise DistillError(f"mode {mode!r} works on classification data (labels and a class count); this dataset "
                           "has none")
