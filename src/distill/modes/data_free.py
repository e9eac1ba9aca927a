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

import torch
import torch.nn.functional as F
from rich.progress import Progress
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from distill.config import DataFreeMode
from distill.data import ArrayDataset
from distill.errors import DistillError
from distill.modes.common import ModeRun, require_classifier
from distill.objective import Objective
from distill.run import RunResult

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


def run(job: ModeRun, student, mode: DataFreeMode) -> RunResult:
    config = job.config
    require_classifier(job.data, "data_free")
    teacher, teacher_spec = job.teacher("data_free")
    if mode.method == "deep_inversion":
        require_batch_norm(teacher)  # before training it, not after
    teacher = job.teacher_stage("teacher", teacher, teacher_spec, config.teacher.train)
    job.check({"teacher": teacher, "student": student})
    if mode.method == "adversarial":
        return run_adversarial(job, student, teacher, mode)
    path = job.run_dir / SYNTHETIC_FILE
    if job.resume and path.is_file():
        stored = load_file(str(path))
        inputs, labels = stored["inputs"], stored["labels"]
    else:
        inputs, labels = synthesise(teacher, input_shape=tuple(job.data.input_shape), num_classes=job.data.num_classes,
                                    mode=mode, seed=config.seed, show_progress=job.show_progress)
        partial = path.with_suffix(".partial")
        save_file({"inputs": inputs.contiguous(), "labels": labels.contiguous()}, str(partial))
        os.replace(partial, path)
    # The student sees synthetic inputs only; real validation data is left out of training as well.
    synthetic = replace(job.data, train=ArrayDataset(inputs.numpy(), labels.numpy()), val=None)
    trained = job.stage("student", student, config.student.model, objective=Objective(config.objective),
                        seed=config.seed, teacher=teacher, data=synthetic)
    counts = torch.bincount(labels, minlength=job.data.num_classes).tolist()
    return job.finish({"teacher": teacher, "student": trained},
                      extra={"synthetic": {"samples": int(len(labels)), "teacher_classes": counts}})


def run_adversarial(job: ModeRun, student, teacher, mode: DataFreeMode) -> RunResult:
    from distill.models import export_model, load_saved
    from distill.modes.adversarial import train_adversarial
    from distill.trainer import mark_stage_done, stage_done

    config = job.config
    done = stage_done(job.run_dir, "student")
    if done is not None and job.resume:
        trained, job.stages["student"] = load_saved(job.run_dir / "student").eval(), done
    else:
        job.stages["student"] = train_adversarial(
            student, teacher, input_shape=tuple(job.data.input_shape), mode=mode, training=config.training,  # type: ignore[arg-type]
            run_dir=job.run_dir, seed=config.seed, resume=job.resume, show_progress=job.show_progress)
        export_model(student, config.student.model, job.run_dir / "student", input_shape=job.data.input_shape,
                     num_classes=job.data.num_classes)
        mark_stage_done(job.run_dir, "student", job.stages["student"])
        trained = student
    return job.finish({"teacher": teacher, "student": trained}, extra={"method": "adversarial"})
