"""The training loop, on Hugging Face Accelerate: one stage (teacher, baseline or student) of a run.

Accelerate owns devices, DDP/FSDP wrapping, mixed precision and gradient accumulation; this file owns what a
distillation step is (frozen teacher under ``no_grad``, objective of named terms), the data order, logging,
evaluation, and atomic checkpoints that make ``--resume`` continue exactly where a killed run stopped.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from distill.augment import random_shift
from distill.capture import SignalCapture
from distill.data.tokens import collate_fn_of
from distill.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint, write_json_atomic
from distill.config import TrainingConfig
from distill.errors import DistillError
from distill.objective import Objective

DONE_FILE = "stage_done.json"


class NonFiniteLoss(DistillError):
    """A loss term became NaN or infinite; the run stopped and kept its last good checkpoint."""


class Interrupted(DistillError):
    """Ctrl-C: a checkpoint was written and the run can be resumed."""


class EpochSampler(Sampler[int]):
    """A fresh permutation each epoch, drawn from (seed, epoch) alone: the data order is a function of the step,
    so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class DistillationStep(nn.Module):
    """The trainable part of a step: the student, its signal capture and the objective (with its adapters).
    One module, so DDP/FSDP wrap and synchronise the adapters with the student."""

    def __init__(self, student: nn.Module, capture: SignalCapture, objective: Objective):
        super().__init__()
        self.student, self.objective = student, objective
        self.capture = capture

    def forward(self, batch: dict[str, Any], teacher_signals: dict[str, Tensor] | None,
                normalizer: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(self.capture.forward(self.student, batch), teacher_signals, batch, normalizer)

    def loss(self, student_signals: dict[str, Tensor], teacher_signals: dict[str, Tensor] | None,
             batch: dict[str, Any], normalizer: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(student_signals, teacher_signals, batch.get("labels"),
                              attention_mask=batch.get("attention_mask"), normalizer=normalizer)


def probe_batch(dataset: Dataset) -> dict[str, Any]:
    collate = collate_fn_of(dataset) or default_collate
    return collate([dataset[index] for index in range(min(2, len(dataset)))])  # type: ignore[arg-type]


def prepare_step(model: nn.Module, objective: Objective, teacher: nn.Module | None, probe: dict[str, Any]
                 ) -> tuple[DistillationStep, SignalCapture | None]:
    """Hook both models for the signals the objective reads and build adapters from a probe batch, before any
    training: an unknown module path or shapes no projection can reconcile fail here."""
    # The output ("logits") is kept for validation accuracy, where it costs nothing; not for LMs read through
    # final_hidden, whose full logits are exactly what must not be built.
    student_names = objective.signals("student")
    student_capture = SignalCapture(model, student_names | ({"logits"} if "final_hidden" not in student_names
                                                            else set()), role="student")
    teacher_capture = (SignalCapture(teacher, objective.signals("teacher"), role="teacher")
                       if objective.needs_teacher and teacher is not None else None)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        student_signals = student_capture.forward(model, probe)
        teacher_signals = teacher_capture.forward(teacher, probe) if teacher_capture is not None else None
    objective.build_adapters(student_signals, teacher_signals, probe.get("labels"), probe.get("attention_mask"))
    model.train(was_training)
    return DistillationStep(model, student_capture, objective), teacher_capture


@torch.no_grad()
def validate(step_module: DistillationStep, teacher: nn.Module | None, teacher_capture: SignalCapture | None,
             dataset: Dataset, training: TrainingConfig, device: torch.device) -> dict[str, float]:
    """The objective's terms on held-out data (``eval/loss``, ``eval/loss/<term>``), and accuracy when the data
    has labels: the same numbers as training, without dropout or augmentation."""
    step_module.eval()
    sums: dict[str, float] = {}
    correct = count = 0
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    for batch in loader:
        batch = _to_device(batch, device)
        teacher_signals = teacher_capture.forward(teacher, batch) if teacher_capture is not None else None
        # One student forward gives both the objective's signals and the logits for accuracy.
        student_signals = step_module.capture.forward(step_module.student, batch)
        total, terms = step_module.loss(student_signals, teacher_signals, batch)
        size = next(iter(batch.values())).shape[0]
        for name, value in (("eval/loss", total), *((f"eval/loss/{key}", value) for key, value in terms.items())):
            sums[name] = sums.get(name, 0.0) + float(value) * size
        count += size
        if "labels" in batch and "logits" in student_signals:
            correct += int((student_signals["logits"].argmax(-1) == batch["labels"]).sum())
    step_module.train()
    result = {name: round(value / max(count, 1), 6) for name, value in sums.items()}
    if "labels" in dataset[0] and any(spec.kind == "logits" for spec in step_module.capture.specs):  # type: ignore[index]
        result["eval/accuracy"] = round(correct / max(count, 1), 6)
    return result


@dataclass
class StageResult:
    model: nn.Module
    steps: int
    wall_seconds: float
    resumed_from_step: int | None


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(1.0, progress)
        return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return multiplier


def make_optimizer(parameters: list[nn.Parameter], training: TrainingConfig) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=training.lr, momentum=training.momentum, nesterov=training.nesterov
                               and training.momentum > 0, weight_decay=training.weight_decay)
    optimizer_class = torch.optim.AdamW if training.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(parameters, lr=training.lr, weight_decay=training.weight_decay)


def resolve_mixed_precision(setting: str, device: str) -> str:
    if setting != "auto":
        return setting
    if device != "cpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def make_accelerator(training: TrainingConfig) -> Accelerator:
    # Each stage may ask for its own precision/accumulation; Accelerate keeps them in a process-wide singleton,
    # so it is reset between stages (the distributed process group, held by PartialState, is kept).
    launched_processes = int(os.environ.get("WORLD_SIZE", "1"))
    # A PartialState made earlier without cpu=True on a GPU-less machine ignores the launcher; rebuild it then.
    stale = bool(PartialState._shared_state) and PartialState().num_processes != launched_processes
    AcceleratorState._reset_state(reset_partial_state=stale)
    return Accelerator(
        mixed_precision=resolve_mixed_precision(training.mixed_precision, training.device),
        # Under torchrun on a machine without a GPU, Accelerate only sets up CPU DDP (gloo) when told cpu=True.
        cpu=training.device == "cpu" or not torch.cuda.is_available(),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=training.grad_accum,
                                                                sync_with_dataloader=False),
    )


class RunLog:
    """``log.jsonl``: one line per logged step, every loss term by name. On resume, lines past the checkpoint
    are dropped, so the log reads like an uninterrupted run's."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, stage: str, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        kept = [record for record in records if not (record.get("stage") == stage and record.get("step", 0) > step)]
        temporary = self.path.with_suffix(".partial")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        temporary.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


class _StopFlag:
    """First Ctrl-C asks the loop to checkpoint and stop at the next step boundary; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_StopFlag":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in batch.items()}


def _with_token_counts(batches: Any, grad_accum: int, accelerator: Accelerator
                       ) -> Iterator[tuple[dict[str, Any], float]]:
    """Each micro-batch with the normaliser of token-level losses: the supervised tokens (labels != -100) of
    its whole accumulation window on all processes, counted before any backward pass, divided by
    grad_accum x processes (Accelerate divides each micro-batch loss by grad_accum and DDP averages over
    processes). Per-token losses then sum to one mean over the window, however it is split into micro-batches
    and whatever their share of padding or prompt tokens. Incomplete windows (an epoch's tail) are not trained
    on, so they are not yielded."""
    window: list[dict[str, Any]] = []
    for batch in batches:
        window.append(batch)
        if len(window) < grad_accum:
            continue
        count = torch.tensor(float(sum(int((item["labels"] != -100).sum()) for item in window)),
                             device=accelerator.device)
        if accelerator.num_processes > 1:
            count = accelerator.reduce(count, reduction="sum")
        normalizer = max(float(count), 1.0) / (grad_accum * accelerator.num_processes)
        for item in window:
            yield item, normalizer
        window = []


def fit(model: nn.Module, train_dataset: Dataset, *, objective: Objective, training: TrainingConfig, stage: str,
        run_dir: Path, seed: int, teacher: nn.Module | None = None, val_dataset: Dataset | None = None,
        resume: bool = False, show_progress: bool = True) -> StageResult:
    """Train ``model`` on ``train_dataset`` with ``objective`` (against ``teacher`` when it needs one).

    Writes checkpoints to ``run_dir/checkpoints/<stage>`` and log lines to ``run_dir/log.jsonl``; with
    ``resume`` it continues from the newest complete checkpoint of this stage."""
    if objective.needs_teacher and teacher is None:
        raise DistillError(f"stage {stage!r}: the objective compares with a teacher, and none was given")
    started = time.perf_counter()
    accelerator = make_accelerator(training)
    set_seed(seed, device_specific=True)
    checkpoint_dir = run_dir / "checkpoints" / stage
    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir / "log.jsonl", accelerator.is_main_process)

    size = len(train_dataset)  # type: ignore[arg-type]
    if size == 0:
        raise DistillError(f"stage {stage!r}: the training set is empty")
    examples_per_step = training.batch_size * training.grad_accum * accelerator.num_processes
    if size < examples_per_step:
        raise DistillError(f"stage {stage!r}: the training set has {size} examples, fewer than one optimizer step "
                           f"needs ({examples_per_step} = batch_size x grad_accum x processes); lower "
                           "training.batch_size")
    loader = DataLoader(train_dataset, batch_size=training.batch_size, sampler=EpochSampler(size, seed),
                        drop_last=True, collate_fn=collate_fn_of(train_dataset))
    if teacher is not None:
        teacher.eval().requires_grad_(False)
    step_module, teacher_capture = prepare_step(model, objective, teacher, probe_batch(train_dataset))
    step_module.train()
    optimizer = make_optimizer([parameter for parameter in step_module.parameters() if parameter.requires_grad],
                               training)
    wrapped, optimizer, loader = accelerator.prepare(step_module, optimizer, loader)
    steps_per_epoch = len(loader) // training.grad_accum
    total_steps = training.max_steps or max(1, math.ceil((training.epochs or 1) * steps_per_epoch))
    warmup = training.warmup_steps if training.warmup_steps is not None else int(training.warmup_ratio * total_steps)
    # The scheduler is stepped here, once per optimizer step, rather than by Accelerate (which steps it once per
    # process to stretch a single-process schedule): our total_steps already counts steps across processes.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer, lr_multiplier(training.schedule, warmup, total_steps))
    if teacher is not None:
        teacher.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(wrapped)

    step, resumed_from = 0, None
    checkpoints = list_checkpoints(checkpoint_dir)
    if resume and checkpoints:
        state = load_checkpoint(checkpoints[-1], model=unwrapped, optimizer=optimizer.optimizer, scheduler=scheduler,
                                process_index=accelerator.process_index)
        step = resumed_from = int(state["step"])
        log.truncate_after(stage, step)
    elif checkpoints and not resume:
        raise DistillError(f"{checkpoint_dir} already holds checkpoints; pass --resume to continue, or choose "
                           "another --output")
    eval_every = training.eval_every or steps_per_epoch
    checkpoint_every = training.checkpoint_every or steps_per_epoch

    def checkpoint() -> None:
        save_checkpoint(checkpoint_dir, step=step, model=unwrapped, optimizer=optimizer.optimizer, scheduler=scheduler,
                        state={"stage": stage, "total_steps": total_steps}, process_index=accelerator.process_index,
                        is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone,
                        keep=training.keep_checkpoints)

    # One stacked [total, *terms] per micro-batch; summed (one sync) only when a log line is written.
    window: list[Tensor] = []
    window_keys = ["loss", *(f"loss/{term.name}" for term in objective.terms)]
    window_steps = 0
    progress = Progress(TextColumn("[bold]{task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        # rich redraws from a thread that holds the GIL (~1 ms a frame on a terminal); its default
                        # 10 frames/s cost ~2% of a 10 ms step. Two a second suffice for a bar that counts seconds.
                        refresh_per_second=2,
                        disable=not (show_progress and accelerator.is_main_process), transient=False)
    task = progress.add_task("train", total=total_steps, completed=step, stage=stage, losses="")
    with progress, _StopFlag() as stop:
        while step < total_steps:
            epoch, micro_offset = divmod(step * training.grad_accum, steps_per_epoch * training.grad_accum)
            loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, micro_offset) if micro_offset else loader
            windows = (_with_token_counts(batches, training.grad_accum, accelerator) if objective.counts_tokens
                       else ((batch, None) for batch in batches))
            for micro_index, (batch, normalizer) in enumerate(windows, start=micro_offset):
                if micro_index >= steps_per_epoch * training.grad_accum:
                    break  # the epoch's tail that does not fill an optimizer step is dropped
                batch = _to_device(batch, accelerator.device)
                if training.augment.shift and "inputs" in batch:
                    batch["inputs"] = random_shift(batch["inputs"], training.augment.shift)
                with accelerator.accumulate(wrapped):
                    with accelerator.autocast():
                        teacher_signals = None
                        if teacher_capture is not None:
                            with torch.no_grad():
                                teacher_signals = teacher_capture.forward(teacher, batch)
                        total, terms = wrapped(batch, teacher_signals, normalizer)
                    if not torch.isfinite(total):
                        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
                        kept = list_checkpoints(checkpoint_dir)
                        raise NonFiniteLoss(
                            f"stage {stage!r}: loss term {', '.join(map(repr, bad)) or 'total'} became "
                            f"{'NaN' if torch.isnan(total) else 'infinite'} at step {step + 1}; training stopped. "
                            + (f"The last good checkpoint is {kept[-1]} (resume from it with --resume after "
                               "lowering training.lr or fixing the data)." if kept else "No checkpoint was written yet."))
                    accelerator.backward(total)
                    if accelerator.sync_gradients and training.max_grad_norm:
                        accelerator.clip_grad_norm_(wrapped.parameters(), training.max_grad_norm)
                    if accelerator.scaler is not None:  # fp16: Accelerate's wrapper runs the GradScaler
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    elif accelerator.sync_gradients:
                        # Otherwise the AcceleratedOptimizer wrapper only skips non-sync micro-steps (done here) but
                        # costs ~0.3 ms a call: step() looks up the lomo_optim package twice
                        # (importlib.util.find_spec over sys.path) and zero_grad() runs inspect.signature.
                        optimizer.optimizer.step()
                        optimizer.optimizer.zero_grad(set_to_none=True)
                window.append(torch.stack([value.detach().float() for value in (total, *terms.values())]))
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                window_steps += 1
                if step % training.log_every == 0 or step == total_steps:
                    means = (torch.stack(window).sum(0) / (training.grad_accum * window_steps)).tolist()
                    record = {key: round(value, 6) for key, value in zip(window_keys, means)}
                    log.write({"stage": stage, "step": step, "epoch": round(step / steps_per_epoch, 4),
                               "lr": scheduler.get_last_lr()[0], **record})
                    progress.update(task, losses="  ".join(f"{key.removeprefix('loss/')}={value:.4f}"
                                                           for key, value in record.items()))
                    window, window_steps = [], 0
                if val_dataset is not None and (step % eval_every == 0 or step == total_steps):
                    log.write({"stage": stage, "step": step, **validate(unwrapped, teacher, teacher_capture, val_dataset,
                                                                         training, accelerator.device)})
                if step % checkpoint_every == 0 or step == total_steps or stop.requested:
                    checkpoint()
                progress.update(task, completed=step)
                if stop.requested:
                    raise Interrupted(f"stage {stage!r} interrupted at step {step}; checkpoint written to "
                                      f"{checkpoint_dir}. Continue with --resume.")
                if step >= total_steps:
                    break
    accelerator.wait_for_everyone()
    student_capture = unwrapped.capture
    student_capture.remove()
    if teacher_capture is not None:
        teacher_capture.remove()
    return StageResult(unwrapped.student.eval(), step, time.perf_counter() - started, resumed_from)


def mark_stage_done(run_dir: Path, stage: str, info: dict[str, Any]) -> None:
    write_json_atomic(run_dir / stage / DONE_FILE, info)


def stage_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
