"""The stage contract: every run, regime and pipeline is an ordered list of stages.

A **stage** has a name (its folder under the run directory and its key in ``metrics.json``'s ``stages``), a line
saying what it does, the artifacts it **reads** (models, datasets, caches: by name, from earlier stages or the
user) and **writes** (into the run's artifacts, and files under the run directory), and a function that does the
work. A stage that can be resumed also has a ``restore``: once it has run, a done marker
(``<stage>/stage_done.json``) holds the facts it returned, and a resumed run restores its artifacts from disk
instead of running it again. A stage cut off half-way continues from its own checkpoint (the trainer's, or a
cache's shards). Stages without ``restore`` (building and checking models, evaluation) are cheap and always run.

``run_stages`` checks the plan (every read has an earlier writer) before any stage runs, then runs the stages in
order. Under DDP every process runs every stage (training needs them all), but only the main process writes
artifacts to disk; the others wait at a barrier, so no two processes ever write the same file.

Where a stage list comes from: ``distill.run.plan`` for a plain run, ``distill.modes.<mode>.plan`` for a regime.
Adding a capability means writing a function ``run(context) -> facts`` and putting a ``Stage`` in such a list.
"""

from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distill.checkpoint import DISK_FULL, WriteFailed, write_failed, write_json_atomic, writing
from distill.errors import DistillError

DONE_FILE = "stage_done.json"
RECIPE_FILE = "recipe.yaml"
LOG_FILE = "log.jsonl"


@dataclass(frozen=True)
class Stage:
    name: str
    does: str
    run: Callable[["RunContext"], dict[str, Any] | None]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()       # what it leaves under the run directory (shown by --plan)
    restore: Callable[["RunContext", dict[str, Any]], None] | None = None  # None: always runs, no done marker


@dataclass
class RunContext:
    """What stages share: the validated recipe, where the run is written, its data, and the artifacts (models,
    datasets, caches) that stages read and write by name."""
    config: Any
    run_dir: Path
    data: Any
    resume: bool = False
    show_progress: bool = True
    artifacts: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def __getitem__(self, name: str) -> Any:
        if name not in self.artifacts:
            raise DistillError(f"no earlier stage produced {name!r} (produced so far: {', '.join(self.artifacts)})")
        return self.artifacts[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.artifacts.get(name, default)


# ------------------------------------------------------------------------------------------ processes
def is_main_process() -> bool:
    """Rank 0 of a launched job, or the only process. Read from the launcher's environment, so it is right
    before the process group exists (the recipe is saved before the first stage trains)."""
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def ensure_process_group() -> None:
    """Under a launcher (``WORLD_SIZE`` > 1), join the process group before any stage that writes, so that the
    other processes can wait for the main one at a barrier. Training stages join it through Accelerate anyway."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())


def on_main(write: Callable[[], Any]) -> None:
    """Run ``write`` on the main process only, then let every process continue together."""
    if is_main_process():
        write()
    wait_for_everyone()


# ------------------------------------------------------------------------------------------ done markers
def stage_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """The facts a finished stage recorded, or None when it has not finished."""
    path = Path(run_dir) / stage / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def mark_stage_done(run_dir: Path, stage: str, info: dict[str, Any]) -> None:
    def write() -> None:
        folder = Path(run_dir) / stage
        folder.mkdir(parents=True, exist_ok=True)  # a stage may export nothing of its own (synthesise)
        write_json_atomic(folder / DONE_FILE, info)
    on_main(write)


def save_recipe(config: Any, run_dir: Path) -> None:
    """The resolved recipe, written once (a resumed run keeps the one it started with)."""
    def write() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved = run_dir / RECIPE_FILE
        if not saved.is_file():
            temporary = saved.with_suffix(".partial")
            try:
                with writing(saved):
                    temporary.write_text(config.to_yaml())
                    os.replace(temporary, saved)
            except WriteFailed:
                temporary.unlink(missing_ok=True)
                raise
    on_main(write)


def is_run_dir(folder: Path) -> bool:
    """A folder a distill run wrote: its recipe plus a log or a finished stage (a recipe file alone may be the
    user's own). Other commands never write into one."""
    folder = Path(folder)
    return (folder / RECIPE_FILE).is_file() and ((folder / LOG_FILE).is_file() or any(folder.glob(f"*/{DONE_FILE}")))


# ------------------------------------------------------------------------------------------ plans
def check_plan(stages: list[Stage], provided: set[str] | frozenset[str] = frozenset()) -> None:
    """Every artifact a stage reads is ``provided`` (by the user) or written by an earlier stage; stage names are
    unique. Fails naming the stage and, where one exists, the later stage that writes what it needs."""
    available, seen = set(provided), set()
    for position, stage in enumerate(stages):
        if stage.name in seen:
            raise DistillError(f"the plan has two stages named {stage.name!r}; each stage needs its own folder")
        seen.add(stage.name)
        for needed in stage.reads:
            if needed in available:
                continue
            later = next((other.name for other in stages[position + 1:] if needed in other.writes), None)
            raise DistillError(f"stage {stage.name!r} reads {needed!r}, which "
                               + (f"only the later stage {later!r} writes" if later else "no earlier stage writes")
                               + "; reorder the stages or provide it")
        available.update(stage.writes)


def describe_plan(stages: list[Stage], provided: set[str] | frozenset[str] = frozenset()) -> str:
    """The stages in order, with what each reads and writes: what ``distill train RECIPE --plan`` prints."""
    lines = []
    if provided:
        lines.append(f"given: {', '.join(sorted(provided))}")
    width = max((len(stage.name) for stage in stages), default=0)
    for index, stage in enumerate(stages, start=1):
        resumable = "" if stage.restore is not None else "  (always runs)"
        lines.append(f"{index}. {stage.name:<{width}}  {stage.does}{resumable}")
        if stage.reads:
            lines.append(f"   {'':<{width}}  reads:  {', '.join(stage.reads)}")
        written = [*stage.writes, *(f"{stage.name}/{DONE_FILE}",) * (stage.restore is not None), *stage.files]
        if written:
            lines.append(f"   {'':<{width}}  writes: {', '.join(dict.fromkeys(written))}")
    return "\n".join(lines)


def run_stages(stages: list[Stage], context: RunContext) -> RunContext:
    """Run ``stages`` in order in ``context``. The recipe is saved before the first resumable stage (so a recipe
    whose models fail their checks leaves no run directory behind); on resume a finished stage is restored,
    not run."""
    check_plan(stages, set(context.artifacts))
    ensure_process_group()
    recipe_saved = False
    for stage in stages:
        try:
            if stage.restore is not None and not recipe_saved:
                save_recipe(context.config, context.run_dir)
                recipe_saved = True
            _run_or_restore(stage, context)
        except WriteFailed as error:
            raise DistillError(f"{error} {_after_write_fault(context, stage, recipe_saved, error.disk_full)}") from None
        except OSError as error:
            if error.errno not in (*DISK_FULL, errno.EROFS):
                raise
            # a write no layer below named (a log line, a library's own file): named as the system gives it
            fault = write_failed(error, error.filename or context.run_dir)
            raise DistillError(f"{fault} {_after_write_fault(context, stage, recipe_saved, fault.disk_full)}") from None
        missing = [name for name in stage.writes if name not in context.artifacts]
        if missing:
            raise DistillError(f"stage {stage.name!r} did not produce {', '.join(missing)}, which it declares")
    return context


def _run_or_restore(stage: Stage, context: RunContext) -> None:
    done = stage_done(context.run_dir, stage.name) if context.resume and stage.restore is not None else None
    if done is not None:
        stage.restore(context, done)  # type: ignore[misc]
        context.stages[stage.name] = done
        return
    facts = stage.run(context) or {}
    if stage.restore is not None:
        mark_stage_done(context.run_dir, stage.name, facts)
        context.stages[stage.name] = facts


def _after_write_fault(context: RunContext, stage: Stage, recipe_saved: bool, disk_full: bool) -> str:
    """What a failed write cost and how to continue: nothing finished is lost, the run resumes where it stopped."""
    fix = "Free space" if disk_full else "Fix that"
    if not recipe_saved:
        return (f"Nothing was trained yet; {fix.lower()} and run the same command again ({context.run_dir} holds "
                "nothing that blocks it).")
    finished = list(context.stages)
    kept = f"the finished stages ({', '.join(finished)}) and " if finished else "the "
    return (f"Stage {stage.name!r} stopped there; {kept}checkpoints written so far are kept in {context.run_dir}. "
            f"{fix}, then run the same command again with --resume (distill.train(..., resume=True)) to continue "
            "from there.")
