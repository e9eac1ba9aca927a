"""Data-free adversarial distillation (Fang et al. 2019, DFAD; Micaelli & Storkey 2019): a generator maps noise
to inputs on which the student and the frozen teacher disagree most (L1 between logits), and the student learns
to agree with the teacher on them. No real input and no batch-norm statistics are needed, so it works with any
teacher.

The two players alternate on generated noise, so the step and the source of inputs are this module's own; what
follows a step is the trainer's: ``StageCheckpoints`` (atomic checkpoints of both players in
``checkpoints/student``, ``resume`` from the newest) and ``StepEnd`` (log line, checkpoint cadence, progress bar,
Ctrl-C). It does not run through ``train_loop``, whose step is Accelerate's: the players are plain modules with
one plain optimizer over both (each update only moves the player whose gradients are present), there is no
accumulation window, and its log lines hold the step's last losses rather than means since the last line."""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.config import DataFreeMode, TrainingConfig
from distill.step_end import RunLog, StageCheckpoints, StepEnd


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


def adversarial_step(players: nn.ModuleDict, teacher: nn.Module, optimizer: torch.optim.Optimizer, mode: DataFreeMode,
                     noise: torch.Generator) -> tuple[Tensor, Tensor]:
    """``mode.student_steps`` student updates, then one generator update, each on fresh noise; returns the last
    student loss (the disagreement) and the generator's."""
    student, generator = players["student"], players["generator"]
    student.train(), generator.train()
    for _ in range(mode.student_steps):
        with torch.no_grad():
            inputs = generator(torch.randn(mode.batch_size, mode.latent_size, generator=noise))
            teacher_logits = teacher(inputs)
        student_loss = disagreement(student(inputs), teacher_logits)
        optimizer.zero_grad(set_to_none=True)
        student_loss.backward()
        optimizer.step()
    inputs = generator(torch.randn(mode.batch_size, mode.latent_size, generator=noise))
    generator_loss = -disagreement(student(inputs), teacher(inputs))
    optimizer.zero_grad(set_to_none=True)
    generator_loss.backward()
    for parameter in student.parameters():
        parameter.grad = None  # this update moves the generator only
    optimizer.step()
    return student_loss.detach(), generator_loss.detach()


def _log_record(scheduler: Any, student_loss: Tensor, generator_loss: Tensor) -> dict[str, float]:
    """The step's own losses (not a mean since the last line): read only when a line is due."""
    gap = round(float(student_loss), 6)
    return {"lr": scheduler.get_last_lr()[0], "loss": gap, "loss/disagreement": gap,
            "loss/generator": round(float(generator_loss), 6)}


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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  lambda step: 0.5 * (1 + math.cos(math.pi * step / mode.iterations)))
    log = RunLog(run_dir / "log.jsonl", True)
    checkpoints = StageCheckpoints(run_dir, "student", model=players, optimizer=optimizer, scheduler=scheduler,
                                   total_steps=mode.iterations, keep=training.keep_checkpoints)
    resumed_from = checkpoints.restore(resume, log)
    step = resumed_from or 0
    after = StepEnd(stage="student", label="student (adversarial)", log=log, checkpoints=checkpoints, completed=step,
                    log_every=training.log_every, show=show_progress,
                    checkpoint_every=training.checkpoint_every or max(1, mode.iterations // 10))
    noise = torch.Generator()
    with after:
        while step < mode.iterations:
            noise.manual_seed(seed * 100_003 + step)  # from (seed, step) alone, so a resumed run sees the same noise
            student_loss, generator_loss = adversarial_step(players, teacher, optimizer, mode, noise)
            scheduler.step()
            step += 1
            after(step, partial(_log_record, scheduler, student_loss, generator_loss))
    student.eval()
    return {"steps": step, "wall_seconds": round(time.perf_counter() - started, 3), "resumed_from_step": resumed_from}
