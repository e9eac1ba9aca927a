"""The training loop, on Hugging Face Accelerate: one stage (teacher, baseline or student) of a run.

Accelerate owns devices, DDP/FSDP wrapping, mixed precision and gradient accumulation; this file owns what a
distillation step is (frozen teacher under ``no_grad``, objective of named terms), the data order, logging,
evaluation, and atomic checkpoints that make ``--resume`` continue exactly where a killed run stopped.

``fit`` = ``start_stage`` (set-up and resume, giving a ``StageRun``), ``train_loop(run, train_step, batches)`` and
``finish_stage``. The loop takes (batch, normalizer) pairs from ``batches(run)``, trains on each with
``train_step(run, batch, normalizer)`` and, after each optimizer step, has ``run.after`` (a ``StepEnd``) log,
validate, checkpoint and stop on Ctrl-C: a regime passes its own step or batch source and keeps checkpoints,
resume, logging and DDP.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from distill.augment import batch_generator, random_shift
from distill.capture import SignalCapture
from distill.checkpoint import list_checkpoints
from distill.config import TrainingConfig
from distill.data.tokens import collate_fn_of, probe_batch
from distill.errors import DistillError
from distill.objective import Objective
from distill.step_end import RunLog, StageCheckpoints, StepEnd
from distill.teachers import TeacherSource, teacher_source


class NonFiniteLoss(DistillError):
    """A loss term became NaN or infinite; the run stopped and kept its last good checkpoint."""


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
        self.student, self.objective, self.capture = student, objective, capture

    def forward(self, batch: dict[str, Any], teacher_signals: dict[str, Tensor] | None,
                normalizer: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(self.capture.forward(self.student, batch), teacher_signals, batch, normalizer)

    def loss(self, student_signals: dict[str, Tensor], teacher_signals: dict[str, Tensor] | None,
             batch: dict[str, Any], normalizer: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return self.objective(student_signals, teacher_signals, batch.get("labels"),
                              attention_mask=batch.get("attention_mask"), normalizer=normalizer)


def prepare_step(model: nn.Module, objective: Objective, teacher: nn.Module | TeacherSource | None,
                 probe: dict[str, Any]) -> tuple[DistillationStep, TeacherSource | None]:
    """Hook both models for the signals the objective reads and build adapters from a probe batch, before any
    training: an unknown module path or shapes no projection can reconcile fail here."""
    # The output ("logits") is kept for validation accuracy, where it costs nothing; not for LMs read through
    # final_hidden, whose full logits are exactly what must not be built.
    student_names = objective.signals("student")
    student_capture = SignalCapture(model, student_names | ({"logits"} if "final_hidden" not in student_names
                                                            else set()), role="student")
    # A module runs live (hooked for the signals the objective reads); a cache is looked up by sample id.
    teacher_signals_from = teacher_source(teacher, objective.signals("teacher")) if objective.needs_teacher else None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        student_signals = student_capture.forward(model, probe)
        teacher_signals = teacher_signals_from.signals(probe) if teacher_signals_from is not None else None
    objective.build_adapters(student_signals, teacher_signals, probe.get("labels"), probe.get("attention_mask"))
    model.train(was_training)
    return DistillationStep(model, student_capture, objective), teacher_signals_from


def probe_objective(model: nn.Module, objective: Objective, teacher: nn.Module | TeacherSource | None,
                    probe: dict[str, Any]) -> None:
    """``prepare_step``'s checks, run on models before any of them trains (a run's prepare stage): every term's
    signals resolve on both models and their shapes fit the loss, with a projection where one can be learned.
    The hooks and adapters go again, and so do the random numbers the adapters' initialisation drew, so a run
    trains exactly as it would without the probe."""
    try:
        with torch.random.fork_rng(devices=[]):
            step_module, teacher_signals_from = prepare_step(model, objective, teacher, probe)
    except DistillError as error:
        if str(error).startswith("objective term"):
            raise
        # a capture error names the signal; say which terms read it
        named = [term.name for term in objective.terms
                 if any(f"'{name}'" in str(error) for signal in (term.student_signal, term.teacher_signal)
                        for name in (signal, signal.split("[")[0]))]
        prefix = f"objective term{'s' * (len(named) > 1)} {', '.join(map(repr, named))}: " if named else ""
        raise DistillError(f"{prefix}{error} (checked before any training)") from None
    step_module.capture.remove()
    if teacher_signals_from is not None:
        teacher_signals_from.remove()


@torch.no_grad()
def validate(step_module: DistillationStep, teacher_signals_from: TeacherSource | None,
             dataset: Dataset, training: TrainingConfig, device: torch.device) -> dict[str, float]:
    """The objective's terms on held-out data (``eval/loss``, ``eval/loss/<term>``), and accuracy when the data
    has labels: the same numbers as training, without dropout or augmentation."""
    step_module.eval()
    sums: dict[str, float] = {}
    correct = count = 0
    loader = DataLoader(dataset, batch_size=training.batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    for batch in loader:
        batch = _to_device(batch, device)
        teacher_signals = teacher_signals_from.signals(batch, "val") if teacher_signals_from is not None else None
        # One student forward gives both the objective's signals and the logits for accuracy.
        student_signals = step_module.capture.forward(step_module.student, batch)
        total, terms = step_module.loss(student_signals, teacher_signals, batch)
        size = next(iter(batch.values())).shape[0]
        for name, value in (("eval/loss", total), *((f"eval/loss/{key}", value) for key, value in terms.items())):
            sums[name] = sums.get(name, 0.0) + float(value) * size
        count += size
        class_ids = "labels" in batch and batch["labels"].dim() == 1 and not batch["labels"].is_floating_point()
        if class_ids and "logits" in student_signals:  # accuracy of single-label classifiers only
            correct += int((student_signals["logits"].argmax(-1) == batch["labels"]).sum())
    step_module.train()
    result = {name: round(value / max(count, 1), 6) for name, value in sums.items()}
    first = dataset[0]  # type: ignore[index]
    if ("labels" in first and first["labels"].dim() == 0 and not first["labels"].is_floating_point()
            and any(spec.kind == "logits" for spec in step_module.capture.specs)):
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
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device, non_blocking=True) if isinstance(value, Tensor) else value
            for key, value in batch.items()}


def with_token_counts(batches: Any, grad_accum: int, accelerator: Accelerator
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


@dataclass(eq=False)
class StageRun:
    """One stage being trained: what ``start_stage`` set up, and how far the loop got."""
    training: TrainingConfig
    accelerator: Accelerator
    wrapped: nn.Module  # the step module as Accelerate prepared it (under DDP, the wrapper that syncs gradients)
    step_module: DistillationStep  # unwrapped: what checkpoints hold and validation runs
    teacher_signals_from: TeacherSource | None
    optimizer: AcceleratedOptimizer  # see optimizer_step
    scheduler: torch.optim.lr_scheduler.LambdaLR
    loader: DataLoader
    steps_per_epoch: int
    total_steps: int
    checkpoints: StageCheckpoints
    after: StepEnd
    loss_names: list[str]  # what a step's (total, terms) are logged as: "loss", then "loss/<term>"
    started: float
    seed: int  # of the stage: its data order and each batch's augmentation are drawn from it and the step
    step: int = 0
    resumed_from: int | None = None
    window: list[Tensor] = field(default_factory=list)  # [total, *terms] per micro-batch since the last log line
    extras: Callable[[], dict[str, float]] | None = None  # a batch source's own figures for each log line

    def log_summary(self) -> dict[str, float]:
        """Each loss's mean over the micro-batches since the last log line (one sync); starts a new window."""
        means = (torch.stack(self.window).sum(0) / len(self.window)).tolist()
        self.window = []
        return {"epoch": round(self.step / self.steps_per_epoch, 4), "lr": self.scheduler.get_last_lr()[0],
                **{key: round(value, 6) for key, value in zip(self.loss_names, means)},
                **(self.extras() if self.extras is not None else {})}


def _train_loader(dataset: Dataset, training: TrainingConfig, stage: str, seed: int, processes: int) -> DataLoader:
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise DistillError(f"stage {stage!r}: the training set is empty")
    examples_per_step = training.batch_size * training.grad_accum * processes
    if size < examples_per_step:
        raise DistillError(f"stage {stage!r}: the training set has {size} examples, fewer than one optimizer step "
                           f"needs ({examples_per_step} = batch_size x grad_accum x processes); lower "
                           "training.batch_size")
    # The loader gets its own generator: each new iterator draws a base seed from it, and drawn from the global
    # RNG that draw would land at a different point of a resumed run (mid-epoch) than of an uninterrupted one,
    # shifting every later dropout mask.
    return DataLoader(dataset, batch_size=training.batch_size, sampler=EpochSampler(size, seed), drop_last=True,
                      collate_fn=collate_fn_of(dataset), generator=torch.Generator().manual_seed(seed))


def start_stage(model: nn.Module, train_dataset: Dataset, *, objective: Objective, training: TrainingConfig,
                stage: str, run_dir: Path, seed: int, teacher: nn.Module | TeacherSource | None = None,
                val_dataset: Dataset | None = None, resume: bool = False, show_progress: bool = True) -> StageRun:
    """``fit``'s set-up, same arguments: accelerator, seeded data order, step module with its adapters, optimizer
    and schedule, prepared by Accelerate, and restored from the stage's newest checkpoint on ``resume``."""
    if objective.needs_teacher and teacher is None:
        raise DistillError(f"stage {stage!r}: the objective compares with a teacher, and none was given")
    started = time.perf_counter()
    accelerator = make_accelerator(training)
    set_seed(seed, device_specific=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(run_dir / "log.jsonl", accelerator.is_main_process)
    loader = _train_loader(train_dataset, training, stage, seed, accelerator.num_processes)
    if isinstance(teacher, nn.Module):
        teacher.eval().requires_grad_(False)
    step_module, teacher_signals_from = prepare_step(model, objective, teacher, probe_batch(train_dataset))
    step_module.train()
    optimizer = make_optimizer([parameter for parameter in step_module.parameters() if parameter.requires_grad],
                               training)
    wrapped, optimizer, loader = accelerator.prepare(step_module, optimizer, loader)
    steps_per_epoch = len(loader) // training.grad_accum
    total_steps = training.max_steps or max(1, math.ceil((training.epochs or 1) * steps_per_epoch))
    warmup = training.warmup_steps if training.warmup_steps is not None else int(training.warmup_ratio * total_steps)
    # The loop steps the schedule once per optimizer step, not Accelerate (which steps it once per process to
    # stretch a single-process schedule): total_steps already counts steps across processes.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer.optimizer,
                                                  lr_multiplier(training.schedule, warmup, total_steps))
    if isinstance(teacher, nn.Module):
        teacher.to(accelerator.device)
    unwrapped = accelerator.unwrap_model(wrapped)
    checkpoints = StageCheckpoints(run_dir, stage, model=unwrapped, optimizer=optimizer.optimizer, scheduler=scheduler,
                                   total_steps=total_steps, keep=training.keep_checkpoints, accelerator=accelerator)
    resumed_from = checkpoints.restore(resume, log)
    evaluate = None if val_dataset is None else (
        lambda: validate(unwrapped, teacher_signals_from, val_dataset, training, accelerator.device))
    after = StepEnd(stage=stage, label=stage, log=log, checkpoints=checkpoints, completed=resumed_from or 0,
                    log_every=training.log_every, checkpoint_every=training.checkpoint_every or steps_per_epoch,
                    show=show_progress and accelerator.is_main_process, evaluate=evaluate,
                    eval_every=training.eval_every or steps_per_epoch)
    return StageRun(training, accelerator, wrapped, unwrapped, teacher_signals_from, optimizer, scheduler, loader,
                    steps_per_epoch, total_steps, checkpoints, after,
                    ["loss", *(f"loss/{term.name}" for term in objective.terms)], started, seed,
                    step=resumed_from or 0, resumed_from=resumed_from)


BatchSource = Callable[[StageRun], Iterable[tuple[dict[str, Any], "float | None"]]]
TrainStep = Callable[[StageRun, dict[str, Any], "float | None"], tuple[Tensor, dict[str, Tensor]]]


def epoch_windows(run: StageRun) -> Iterator[list[dict[str, Any]]]:
    """The training set in its (seed, epoch) order from ``run.step`` on (a resumed run skips what it trained on),
    one accumulation window (``grad_accum`` micro-batches, on the device, augmented) per optimizer step; an epoch's
    tail that does not fill a window is dropped."""
    training, accelerator = run.training, run.accelerator
    micro_per_epoch = run.steps_per_epoch * training.grad_accum
    while True:
        epoch, micro_offset = divmod(run.step * training.grad_accum, micro_per_epoch)
        run.loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(run.loader, micro_offset) if micro_offset else run.loader
        window: list[dict[str, Any]] = []
        for micro_index, batch in enumerate(batches, start=micro_offset):
            if micro_index >= micro_per_epoch:
                break
            batch = _to_device(batch, accelerator.device)
            if training.augment.shift and "inputs" in batch:
                generator = batch_generator(run.seed, accelerator.process_index, epoch * micro_per_epoch + micro_index)
                batch["inputs"] = random_shift(batch["inputs"], training.augment.shift, generator)
            window.append(batch)
            if len(window) == training.grad_accum:
                yield window
                window = []


def epoch_batches(run: StageRun) -> Iterator[tuple[dict[str, Any], float | None]]:
    """The default batch source: ``epoch_windows``' micro-batches, each with its window's token normaliser when the
    objective counts tokens (else None). A source that makes batches as it goes (on-policy samples) makes a whole
    window first, as the normaliser counts its supervised tokens: ``with_token_counts(window, ...)``."""
    counts_tokens = run.step_module.objective.counts_tokens
    for window in epoch_windows(run):
        if counts_tokens:
            yield from with_token_counts(window, run.training.grad_accum, run.accelerator)
        else:
            yield from ((batch, None) for batch in window)


def optimizer_step(accelerator: Accelerator, optimizer: AcceleratedOptimizer) -> None:
    """Call on every micro-batch: steps and clears the optimizer at the end of each accumulation window.

    Accelerate's AcceleratedOptimizer is bypassed unless fp16's GradScaler needs it: all its wrapper adds otherwise
    is skipping the non-sync micro-steps, done here, and it costs ~0.3 ms a call (step() looks up the lomo_optim
    package twice, importlib.util.find_spec over sys.path, and zero_grad() runs inspect.signature)."""
    if accelerator.scaler is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    elif accelerator.sync_gradients:
        optimizer.optimizer.step()
        optimizer.optimizer.zero_grad(set_to_none=True)


def distillation_losses(run: StageRun, batch: dict[str, Any],
                        normalizer: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The objective's total and terms on one micro-batch: the frozen teacher under ``no_grad``, then the student."""
    with run.accelerator.autocast():
        with torch.no_grad():
            teacher_signals = run.teacher_signals_from.signals(batch) if run.teacher_signals_from is not None else None
        return run.wrapped(batch, teacher_signals, normalizer)


def apply_gradients(run: StageRun, total: Tensor, terms: dict[str, Tensor]) -> None:
    """Backward of ``total``; at a window's end, clipping and the optimizer step. A NaN or infinite loss stops the
    stage before it touches the weights, naming the term and the checkpoint to resume from."""
    if not torch.isfinite(total):
        bad = [name for name, value in terms.items() if not torch.isfinite(value)]
        kept = list_checkpoints(run.checkpoints.directory)
        raise NonFiniteLoss(
            f"stage {run.checkpoints.stage!r}: loss term {', '.join(map(repr, bad)) or 'total'} became "
            f"{'NaN' if torch.isnan(total) else 'infinite'} at step {run.step + 1}; training stopped. "
            + (f"The last good checkpoint is {kept[-1]} (resume from it with --resume after lowering training.lr or "
               "fixing the data)." if kept else "No checkpoint was written yet."))
    run.accelerator.backward(total)
    if run.accelerator.sync_gradients and run.training.max_grad_norm:
        run.accelerator.clip_grad_norm_(run.wrapped.parameters(), run.training.max_grad_norm)
    optimizer_step(run.accelerator, run.optimizer)


def distillation_step(run: StageRun, batch: dict[str, Any],
                      normalizer: float | None) -> tuple[Tensor, dict[str, Tensor]]:
    """The default step. A replacement trains on the micro-batch as it likes (``apply_gradients`` does the usual
    rest) and returns the (total, terms) to log, in ``run.loss_names`` order."""
    total, terms = distillation_losses(run, batch, normalizer)
    apply_gradients(run, total, terms)
    return total, terms


def train_loop(run: StageRun, train_step: TrainStep = distillation_step,
               batches: BatchSource = epoch_batches) -> None:
    """Train to ``run.total_steps``: ``train_step`` on each micro-batch of ``batches(run)`` inside Accelerate's
    accumulation window (under DDP, gradients are all-reduced at its end only); after each optimizer step the
    schedule advances and ``run.after`` logs, validates and checkpoints. A source that runs dry ends the stage."""
    accelerator = run.accelerator
    with run.after:
        if run.step >= run.total_steps:
            return  # resumed from the stage's last checkpoint
        for batch, normalizer in batches(run):
            with accelerator.accumulate(run.wrapped):
                total, terms = train_step(run, batch, normalizer)
            run.window.append(torch.stack([value.detach().float() for value in (total, *terms.values())]))
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            run.step += 1
            run.after(run.step, run.log_summary)
            if run.step >= run.total_steps:
                break


def finish_stage(run: StageRun) -> StageResult:
    """Unhooks student and teacher and hands back the trained student, in eval mode."""
    run.accelerator.wait_for_everyone()
    run.step_module.capture.remove()
    if run.teacher_signals_from is not None:
        run.teacher_signals_from.remove()
    return StageResult(run.step_module.student.eval(), run.step, time.perf_counter() - run.started, run.resumed_from)


def fit(model: nn.Module, train_dataset: Dataset, *, objective: Objective, training: TrainingConfig, stage: str,
        run_dir: Path, seed: int, teacher: nn.Module | TeacherSource | None = None, val_dataset: Dataset | None = None,
        resume: bool = False, show_progress: bool = True, batches: BatchSource = epoch_batches) -> StageResult:
    """Train ``model`` on ``train_dataset`` with ``objective`` (against ``teacher`` when it needs one), on the
    micro-batches of ``batches`` (default: the training set in its seeded order).

    Writes checkpoints to ``run_dir/checkpoints/<stage>`` and log lines to ``run_dir/log.jsonl``; with
    ``resume`` it continues from the newest complete checkpoint of this stage."""
    run = start_stage(model, train_dataset, objective=objective, training=training, stage=stage, run_dir=run_dir,
                      seed=seed, teacher=teacher, val_dataset=val_dataset, resume=resume, show_progress=show_progress)
    train_loop(run, batches=batches)
    return finish_stage(run)
