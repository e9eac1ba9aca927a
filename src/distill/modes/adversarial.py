"""Data-free adversarial distillation (Fang et al. 2019, DFAD; Micaelli & Storkey 2019): a generator maps noise
to inputs on which the student and the frozen teacher disagree most (L1 between logits), and the student learns
to agree with the teacher on them. No real input and no batch-norm statistics are needed, so it works with any
teacher.

The two players alternate, which the ordinary trainer cannot express, so this is a loop of its own; it keeps the
trainer's contract: one optimizer over both players (each step only updates the player whose gradients are
present), atomic checkpoints in ``checkpoints/student``, and ``resume`` from the newest one."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor, nn

from distill.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from distill.config import DataFreeMode, TrainingConfig
from distill.trainer import RunLog


class Generator(nn.Module):
    """Noise -> an input of ``input_shape``: two hidden layers with batch norm."""

    def __init__(self, latent_size: int, input_shape: tuple[int, ...], width: int = 256):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.net = nn.Sequential(nn.Linear(latent_size, width), nn.BatchNorm1d(width), nn.ReLU(),
                                 nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                                 nn.Linear(width, math.prod(self.input_shape)))

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise).reshape(len(noise), *self.input_shape)


def disagreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """DFAD's mean absolute difference between logits."""
    return (student_logits.float() - teacher_logits.float()).abs().mean()


def train_adversarial(student: nn.Module, teacher: nn.Module, *, input_shape: tuple[int, ...], mode: DataFreeMode,
                      training: TrainingConfig, run_dir: Path, seed: int, resume: bool,
                      show_progress: bool = False) -> dict[str, float | int | None]:
    """Train ``student`` in place; returns the stage facts (steps, wall seconds, resumed-from step)."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    teacher.eval().requires_grad_(False)
    players = nn.ModuleDict({"student": student, "generator": Generator(mode.latent_size, input_shape)})
    optimizer = torch.optim.Adam([
        {"params": list(student.parameters()), "lr": training.lr, "weight_decay": training.weight_decay},
        {"params": list(players["generator"].parameters()), "lr": mode.generator_lr}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / mode.iterations)))
    directory = run_dir / "checkpoints" / "student"
    log = RunLog(run_dir / "log.jsonl", True)
    step = resumed_from = 0
    checkpoints = list_checkpoints(directory)
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model=players, optimizer=optimizer, scheduler=scheduler)
        step = resumed_from = int(state["step"])
        log.truncate_after("student", step)
    every = training.checkpoint_every or max(1, mode.iterations // 10)
    generator = torch.Generator().manual_seed(seed)
    progress = Progress(TextColumn("[bold]student (adversarial)"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[gap]}"), TimeElapsedColumn(), disable=not show_progress)
    with progress:
        task = progress.add_task("train", total=mode.iterations, completed=step, gap="")
        while step < mode.iterations:
            # noise drawn from (seed, step) alone, so a resumed run sees the same noise
            generator.manual_seed(seed * 100_003 + step)
            student.train(), players["generator"].train()
            for _ in range(mode.student_steps):
                noise = torch.randn(mode.batch_size, mode.latent_size, generator=generator)
                with torch.no_grad():
                    inputs = players["generator"](noise)
                    teacher_logits = teacher(inputs)
                student_loss = disagreement(student(inputs), teacher_logits)
                optimizer.zero_grad(set_to_none=True)
                student_loss.backward()
                optimizer.step()
            noise = torch.randn(mode.batch_size, mode.latent_size, generator=generator)
            inputs = players["generator"](noise)
            generator_loss = -disagreement(student(inputs), teacher(inputs))
            optimizer.zero_grad(set_to_none=True)
            generator_loss.backward()
            for parameter in student.parameters():
                parameter.grad = None  # this step moves the generator only
            optimizer.step()
            scheduler.step()
            step += 1
            if step % training.log_every == 0 or step == mode.iterations:
                log.write({"stage": "student", "step": step, "lr": scheduler.get_last_lr()[0],
                           "loss": round(float(student_loss.detach()), 6),
                           "loss/disagreement": round(float(student_loss.detach()), 6),
                           "loss/generator": round(float(generator_loss.detach()), 6)})
                progress.update(task, gap=f"disagreement={float(student_loss.detach()):.4f}")
            if step % every == 0 or step == mode.iterations:
                save_checkpoint(directory, step=step, model=players, optimizer=optimizer, scheduler=scheduler,
                                state={"stage": "student", "total_steps": mode.iterations},
                                keep=training.keep_checkpoints)
            progress.update(task, completed=step)
    student.eval()
    return {"steps": step, "wall_seconds": round(time.perf_counter() - started, 3),
            "resumed_from_step": resumed_from or None}
