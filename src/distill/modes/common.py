"""What every regime shares: building its models, stages trained with the ordinary trainer, and the final
evaluation of every model it produced side by side. Each regime file only says who teaches whom, as a list of
stages (``plan(config, mode, given)``)."""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from distill.checkpoint import write_json_atomic
from distill.errors import DistillError
from distill.evaluate.compare import evaluate_models
from distill.models import (
    TEACHER_SEED_OFFSET,
    build_seeded,
    build_teacher,
    check_outputs,
)
from distill.stages import RunContext, Stage, is_main_process, on_main
from distill.training_stage import export_trained, train_stage

Models = Callable[[RunContext], dict[str, nn.Module | None]]


def freeze(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def require_student_spec(config: Any, given: set[str]) -> None:
    if "student" not in given and config.student.model is None:
        raise DistillError(f"mode {config.mode.kind!r}: student.model is not set and no student module was passed")


def build_mode_student(context: RunContext) -> nn.Module:
    """The student module passed from Python, or the one ``student.model`` builds from the recipe's seed."""
    config = context.config
    if context.get("student") is not None:
        return context["student"]
    return build_seeded(config.student.model, context.data, config.seed, config.student.weights)


def build_mode_teacher(context: RunContext) -> nn.Module:
    """The teacher module passed from Python, or the one the recipe's teacher section builds (untrained when
    ``teacher.train`` trains it in a later stage; frozen otherwise)."""
    if context.get("teacher") is not None:
        teacher = context["teacher"]
    elif context.config.teacher.model is None:
        raise DistillError(f"mode {context.config.mode.kind!r}: teacher.model is not set and no teacher module "
                           "was passed")
    else:
        teacher = build_teacher(context.config, context.data)
    return teacher if context.config.teacher.train is not None else freeze(teacher)


def prepare_stage(does: str, run: Callable[[RunContext], None], writes: tuple[str, ...],
                  given: set[str]) -> Stage:
    """A regime's first stage: build its models and check them on two training samples (always runs)."""
    return Stage("prepare", does, run, reads=("data", *sorted(given)), writes=writes)


def require_classifier(data: Any, mode: str) -> None:
    if data.num_classes is None:
        raise DistillError(f"mode {mode!r} works on classification data (labels and a class count); this dataset "
                           "has none")


def checked(context: RunContext, models: dict[str, nn.Module | None], distilled: tuple[str, str] | None = None
            ) -> None:
    """The regime's models on two training samples; with ``distilled`` = (student, teacher) names of ``models``,
    also the recipe's objective between those two, before any of them trains."""
    require_classifier(context.data, context.config.mode.kind)
    if context.data.student_view is not None:
        raise DistillError(f"mode {context.config.mode.kind!r}: the student reads the texts with a tokenizer of its "
                           "own (data.student_tokenizer, or a pretrained student's folder); regimes run every model "
                           "on one tokenisation. Use the teacher's tokenizer for the student, or a plain run")
    check_outputs(models, context.data)
    if distilled is not None:
        probe_recipe_objective(context, *(models[name] for name in distilled))  # type: ignore[arg-type]


def probe_recipe_objective(context: RunContext, student: nn.Module, teacher: nn.Module) -> None:
    """The recipe's objective tried between ``student`` and ``teacher`` as built, before either trains (see
    ``distill.trainer.probe_objective``)."""
    if context.config.objective is None:
        return
    from distill.data.tokens import probe_batch
    from distill.objective import Objective
    from distill.trainer import probe_objective

    probe_objective(student, Objective(context.config.objective), teacher, probe_batch(context.data.train))


def teacher_stages(config: Any, name: str = "teacher", train: Any = None, data: str = "data") -> list[Stage]:
    """Train the teacher artifact ``name`` here on hard labels when ``train`` (default ``teacher.train``) is set."""
    train = train if train is not None else config.teacher.train
    if train is None:
        return []
    return [train_stage(name, model=name, does="train the teacher on hard labels", training=train,
                        seed=config.seed + TEACHER_SEED_OFFSET, spec=config.teacher.model, data=data, frozen=True)]


def baseline_stages(config: Any, *, model: str = "student", data: str = "data", training: Any = None,
                    spec: Any = "recipe", name: str = "baseline", seed: int | None = None) -> list[Stage]:
    """The student's architecture from the same initial weights, trained on hard labels alone."""
    if not config.baseline:
        return []
    return [train_stage(name, model=model, copy_model=True, data=data, training=training or config.training,
                        seed=config.seed if seed is None else seed,
                        spec=config.student.model if spec == "recipe" else spec,
                        does="the student's architecture on hard labels alone, from the same initial weights")]


def distil_stage(config: Any, name: str, *, model: str, teacher: str, seed: int, spec: Any = "recipe",
                 objective: Any = None, data: str = "data", frozen: bool = False, does: str = "") -> Stage:
    """``model`` distilled from ``teacher`` with the recipe's objective (or ``objective``)."""
    return train_stage(name, model=model, teacher=teacher, data=data, training=config.training, seed=seed,
                       spec=config.student.model if spec == "recipe" else spec,
                       objective=objective or config.objective, frozen=frozen,
                       does=does or f"distil {model} from {teacher}")


def finish_stage(config: Any, models: Models, *, reads: tuple[str, ...],
                 extra: Callable[[RunContext], dict] | None = None, student_stage: str = "student",
                 student_spec: Any = "recipe") -> Stage:
    """Evaluate every model on the test set (``teacher`` is the reference for agreement and gap recovered) and
    write ``metrics.json``. A final student trained under another stage name is also exported to ``student/``,
    where every run keeps it."""
    def run(context: RunContext) -> None:
        run_dir, data = context.run_dir, context.data
        present = {name: model.eval() for name, model in models(context).items() if model is not None}
        if student_stage != "student" and "student" in present:
            export_trained(present["student"], config.student.model if student_spec == "recipe" else student_spec,
                           context, "student", data)
        # exported stages have a folder under their name (size on disk); combinations built in the run do not
        metrics = evaluate_models(present, data.test, evaluation=config.evaluation,
                                  model_dirs={name: run_dir / name for name in present if (run_dir / name).is_dir()})
        metrics.update({
            "recipe": config.name, "seed": config.seed, "mode": config.mode.kind,
            "steps": context.stages.get(student_stage, {}).get("steps"), "stages": dict(context.stages),
            "data": data.summary, "wall_seconds": round(time.perf_counter() - context.started, 3),
            **(extra(context) if extra else {}),
        })
        on_main(lambda: write_json_atomic(run_dir / "metrics.json", metrics))
        context.artifacts.update(metrics=metrics, student=present.get("student"), teacher=present.get("teacher"),
                                 baseline=present.get("baseline"))
        if context.show_progress and is_main_process():
            print_models(metrics, list(present), run_dir)
    return Stage("evaluate", "evaluate every model on the test set side by side", run, reads=reads,
                 writes=("metrics",), files=("metrics.json",) + (("student/",) if student_stage != "student" else ()))


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


def print_models(metrics: dict[str, Any], names: list[str], run_dir: Any) -> None:
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
