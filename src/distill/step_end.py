"""What follows a training step, shared by every loop (``distill.trainer`` and the regimes with loops of their
own): the run's log, a stage's atomic checkpoints and their restore on resume, and ``StepEnd`` (log line,
validation, checkpoint, progress bar, Ctrl-C)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from distill.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from distill.errors import DistillError


class Interrupted(DistillError):
    """Ctrl-C: a checkpoint was written and the run can be resumed."""


class RunLog:
    """``log.jsonl``: one line per logged step, every loss term by name. On resume, lines past the checkpoint
    are dropped, so the log reads like an uninterrupted run's."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, stage: str, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for number, line in enumerate(lines, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):  # only the last line can be cut off by a crash or a full disk
                    raise DistillError(f"{self.path}, line {number}, is not JSON; the log is damaged (delete that "
                                       "line to resume)") from None
        kept = [record for record in records if not (record.get("stage") == stage and record.get("step", 0) > step)]
        temporary = self.path.with_suffix(".partial")
        temporary.write_text("".join(json.dumps(record) + "\n" for record in kept))
        temporary.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


class StageCheckpoints:
    """A stage's atomic checkpoints in ``run_dir/checkpoints/<stage>``: the newest restored on resume, new ones
    written as it trains; under DDP by every process (each keeps its RNG state), without an accelerator by one."""

    def __init__(self, run_dir: Path, stage: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, total_steps: int, keep: int, accelerator: Accelerator | None = None):
        self.directory, self.stage, self.keep = run_dir / "checkpoints" / stage, stage, keep
        self.model, self.optimizer, self.scheduler, self.total_steps = model, optimizer, scheduler, total_steps
        self.process_index, self.is_main, self.barrier = (
            (accelerator.process_index, accelerator.is_main_process, accelerator.wait_for_everyone) if accelerator
            else (0, True, None))

    def restore(self, resume: bool, log: RunLog) -> int | None:
        """The step resumed from (None: a fresh start); the log lines past it go, as the run redoes them."""
        checkpoints = list_checkpoints(self.directory)
        if checkpoints and not resume:
            raise DistillError(f"{self.directory} already holds checkpoints; pass --resume to continue, or choose "
                               "another --output")
        if not checkpoints:
            return None
        state = load_checkpoint(checkpoints[-1], model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                process_index=self.process_index)
        log.truncate_after(self.stage, int(state["step"]))
        return int(state["step"])

    def saved_steps(self) -> set[int]:
        return {int(path.name.split("-")[-1]) for path in list_checkpoints(self.directory)}

    def save(self, step: int) -> None:
        save_checkpoint(self.directory, step=step, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        state={"stage": self.stage, "total_steps": self.total_steps}, process_index=self.process_index,
                        is_main=self.is_main, barrier=self.barrier, keep=self.keep)


class StepEnd:
    """What follows each optimizer step: log line, validation, checkpoint, progress bar, and the stop a first Ctrl-C
    asks for (a second aborts). Entered around the whole loop, it shows the bar and holds SIGINT."""

    def __init__(self, *, stage: str, label: str, log: RunLog, checkpoints: StageCheckpoints, completed: int,
                 log_every: int, checkpoint_every: int, show: bool,
                 evaluate: Callable[[], dict[str, float]] | None = None, eval_every: int = 1):
        self.stage, self.log, self.checkpoints, self.evaluate = stage, log, checkpoints, evaluate
        self.total_steps = checkpoints.total_steps
        self.log_every, self.checkpoint_every, self.eval_every = log_every, checkpoint_every, eval_every
        self.progress = Progress(TextColumn("[bold]{task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 # rich redraws from a thread that holds the GIL (~1 ms a frame on a terminal); its
                                 # default 10 frames/s cost ~2% of a 10 ms step. Two a second suffice for this bar.
                                 refresh_per_second=2, disable=not show, transient=False)
        self.task = self.progress.add_task("train", total=self.total_steps, completed=completed, stage=label, losses="")
        self.stop_requested, self._previous_handler = False, None

    def __enter__(self) -> "StepEnd":
        self.progress.__enter__()
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_ctrl_c)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
        self.progress.__exit__(*exc)

    def __call__(self, step: int, summary: Callable[[], dict[str, float]]) -> None:
        """``summary`` gives the log line's numbers; it is called only when a line is due, as it may sync."""
        stopping, last = self.stop_requested, step == self.total_steps  # read once: a later Ctrl-C waits a step
        if step % self.log_every == 0 or last:
            record = summary()
            self.log.write({"stage": self.stage, "step": step, **record})
            shown = {key.removeprefix("loss/"): value for key, value in record.items() if key.startswith("loss")}
            self.progress.update(self.task, losses="  ".join(f"{key}={value:.4f}" for key, value in shown.items()))
        if self.evaluate is not None and (step % self.eval_every == 0 or last):
            self.log.write({"stage": self.stage, "step": step, **self.evaluate()})
        if step % self.checkpoint_every == 0 or last or stopping:
            self.checkpoints.save(step)
        self.progress.update(self.task, completed=step)
        if stopping:
            raise Interrupted(f"stage {self.stage!r} interrupted at step {step}; checkpoint written to "
                              f"{self.checkpoints.directory}. Continue with --resume.")
