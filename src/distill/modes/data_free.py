"""Data-free distillation with DeepInversion (Yin et al. 2020): the student never sees a real training input.

Inputs are optimised from noise so that the frozen teacher (1) puts a chosen class first (cross-entropy to a
balanced set of target classes) and (2) sees, at every batch-norm layer, batch statistics that match the running
statistics it stored during training; total-variation and L2 priors keep them smooth and small. The student then
learns from the teacher on these inputs alone with the recipe's objective. The synthetic set is written to the
run directory (safetensors, atomically), so a resumed run does not make it again.

A teacher without batch-norm layers has nothing to match and is refused before anything runs, pointing to
``method: adversarial`` (``distill.modes.adversarial``), which needs no statistics."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from distill.config import DataFreeMode, Recipe
from distill.data import ArrayDataset
from distill.errors import DistillError
from distill.modes.common import (
    build_mode_student,
    build_mode_teacher,
    checked,
    distil_stage,
    finish_stage,
    prepare_stage,
    require_classifier,
    teacher_stages,
)
from distill.stages import RunContext, Stage, on_main
from distill.training_stage import export_trained

SYNTHETIC_FILE = "synthetic.safetensors"


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.track_running_stats and module.running_mean is not None]


def require_batch_norm(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    layers = batch_norm_layers(model)
    if not layers:
        raise DistillError("data_free: the teacher has no batch-norm layers with running statistics, and "
                           "DeepInversion synthesises inputs by matching those statistics; without them only the "
                           "teacher's confidence constrains the inputs, which gives adversarial noise rather than "
                           "data. Use mode.method: adversarial (a generator trained against the student, no "
                           "statistics needed), a teacher with batch norm (e.g. {kind: cnn, batch_norm: true}), or an "
                           "unlabeled transfer set (mode: {kind: transfer_set}).")
    return layers


def statistics_loss(inputs: Tensor, layer: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """||batch mean - running mean||_2 + ||batch variance - running variance||_2 at one batch-norm layer."""
    dims = [0, *range(2, inputs.dim())]
    mean = inputs.mean(dims)
    variance = inputs.var(dims, unbiased=False)
    return torch.linalg.vector_norm(mean - layer.running_mean) + torch.linalg.vector_norm(variance - layer.running_var)


def total_variation(inputs: Tensor) -> Tensor:
    """Mean absolute difference between neighbours along every spatial axis (length, or height and width)."""
    return sum((inputs.diff(dim=axis).abs().mean() for axis in range(2, inputs.dim())), torch.zeros(()))


def _jittered(inputs: Tensor, jitter: int, generator: torch.Generator) -> Tensor:
    """``inputs`` rolled by a random offset in [-jitter, jitter] along every spatial axis (one offset per batch)."""
    if jitter == 0:
        return inputs
    axes = tuple(range(2, inputs.dim()))
    shifts = torch.randint(-jitter, jitter + 1, (len(axes),), generator=generator).tolist()
    return torch.roll(inputs, shifts=shifts, dims=axes)


def synthesise(teacher: nn.Module, *, input_shape: tuple[int, ...], num_classes: int, mode: DataFreeMode,
               seed: int, show_progress: bool = False) -> tuple[Tensor, Tensor]:
    """``mode.samples`` synthetic inputs and the teacher's class for each."""
    layers = require_batch_norm(teacher)
    teacher.eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    losses: list[Tensor] = []
    handles = [layer.register_forward_hook(lambda module, args, output: losses.append(statistics_loss(args[0], module)))
               for layer in layers]
    made_inputs, made_labels = [], []
    try:
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("synthesising inputs", total=mode.samples)
            while sum(len(batch) for batch in made_inputs) < mode.samples:
                size = min(mode.batch_size, mode.samples - sum(len(batch) for batch in made_inputs))
                targets = (torch.arange(size) + len(made_inputs) * mode.batch_size) % num_classes
                inputs = torch.randn((size, *input_shape), generator=generator).requires_grad_(True)
                optimizer = torch.optim.Adam([inputs], lr=mode.lr)
                for _ in range(mode.steps):
                    losses.clear()
                    logits = teacher(_jittered(inputs, mode.jitter, generator))
                    loss = (F.cross_entropy(logits, targets) + mode.bn_weight * torch.stack(losses).sum()
                            + mode.tv_weight * total_variation(inputs) + mode.l2_weight * inputs.pow(2).mean())
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                with torch.no_grad():
                    made_labels.append(teacher(inputs).argmax(-1))
                made_inputs.append(inputs.detach())
                progress.update(task, advance=size)
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(made_inputs), torch.cat(made_labels)


def _synthesise_stage(config: Recipe, mode: DataFreeMode) -> Stage:
    """DeepInversion inputs written to ``run_dir/synthetic.safetensors`` (atomically); on resume read back."""
    def adopt(context: RunContext, inputs: Tensor, labels: Tensor) -> dict[str, Any]:
        # The student sees synthetic inputs only; real validation data is left out of training as well.
        context.artifacts["synthetic-data"] = replace(context.data, train=ArrayDataset(inputs.numpy(), labels.numpy()),
                                                      val=None)
        return {"samples": int(len(labels)),
                "teacher_classes": torch.bincount(labels, minlength=context.data.num_classes).tolist()}

    def run(context: RunContext) -> dict[str, Any]:
        inputs, labels = synthesise(context["teacher"], input_shape=tuple(context.data.input_shape),
                                    num_classes=context.data.num_classes, mode=mode, seed=config.seed,
                                    show_progress=context.show_progress)
        path = context.run_dir / SYNTHETIC_FILE

        def write() -> None:
            partial = path.with_suffix(".partial")
            save_file({"inputs": inputs.contiguous(), "labels": labels.contiguous()}, str(partial))
            os.replace(partial, path)
        on_main(write)
        return adopt(context, inputs, labels)

    def restore(context: RunContext, done: dict[str, Any]) -> None:
        stored = load_file(str(context.run_dir / SYNTHETIC_FILE))
        adopt(context, stored["inputs"], stored["labels"])

    return Stage("synthesise", f"DeepInversion: {mode.samples} inputs optimised from noise against the teacher's "
                 "batch-norm statistics", run, reads=("teacher",), writes=("synthetic-data",),
                 files=(SYNTHETIC_FILE,), restore=restore)


def _adversarial_stage(config: Recipe, mode: DataFreeMode) -> Stage:
    from distill.models import load_saved
    from distill.modes.adversarial import train_adversarial

    def run(context: RunContext) -> dict[str, Any]:
        student = context["student"]
        facts = train_adversarial(student, context["teacher"], input_shape=tuple(context.data.input_shape),
                                  mode=mode, training=config.training, run_dir=context.run_dir, seed=config.seed,
                                  resume=context.resume, show_progress=context.show_progress)
        export_trained(student, config.student.model, context, "student", context.data)
        return facts

    def restore(context: RunContext, done: dict[str, Any]) -> None:
        context.artifacts["student"] = load_saved(context.run_dir / "student").eval()

    return Stage("student", "a generator searches for inputs where student and teacher disagree; the student "
                 "learns to agree on them", run, reads=("teacher", "student"), writes=("student",),
                 files=("student/", "checkpoints/student/"), restore=restore)


def plan(config: Recipe, mode: DataFreeMode, given: set[str]) -> list[Stage]:
    def prepare(context: RunContext) -> None:
        require_classifier(context.data, "data_free")
        context.artifacts["teacher"] = build_mode_teacher(context)
        if mode.method == "deep_inversion":
            require_batch_norm(context["teacher"])  # before training it, not after
        context.artifacts["student"] = build_mode_student(context)
        checked(context, {"teacher": context["teacher"], "student": context["student"]},
                distilled=("student", "teacher") if mode.method == "deep_inversion" else None)

    stages = [prepare_stage("build teacher and student; check them", prepare, ("teacher", "student"), given),
              *teacher_stages(config)]
    if mode.method == "adversarial":
        return [*stages, _adversarial_stage(config, mode),
                finish_stage(config, lambda context: {"teacher": context["teacher"], "student": context["student"]},
                             reads=("teacher", "student"), extra=lambda context: {"method": "adversarial"})]
    return [*stages, _synthesise_stage(config, mode),
            distil_stage(config, "student", model="student", teacher="teacher", seed=config.seed,
                         data="synthetic-data", does="distil the student on the synthetic inputs alone"),
            finish_stage(config, lambda context: {"teacher": context["teacher"], "student": context["student"]},
                         reads=("teacher", "student"),
                         extra=lambda context: {"synthetic": context.stages["synthesise"]})]
