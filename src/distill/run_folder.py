"""Where a run is written: a folder of its own, never overwritten; resumed only with the recipe it started with and
readable done markers; leftovers of interrupted writes removed first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from distill.checkpoint import PARTIAL, check_writable
from distill.config import Recipe, read_yaml
from distill.config.base import differences
from distill.errors import DistillError
from distill.stages import DONE_FILE, LOG_FILE, RECIPE_FILE, is_main_process, is_run_dir


def check_run_dir(recipe: Recipe, output: str | Path | None, resume: bool) -> Path:
    """Where the run goes; refuses to overwrite a run, to resume one started with another recipe, to write into a
    folder another command owns (a teacher cache), or a path that cannot be written. Writes nothing but removes
    leftovers: ``.partial`` files of interrupted writes, and a first attempt that failed before anything was
    trained or checkpointed (so that the corrected recipe can be run with the same --output)."""
    run_dir = Path(output or recipe.output.dir or Path("runs") / recipe.name)
    check_writable(run_dir, "--output")
    _refuse_foreign_folder(run_dir)
    saved = run_dir / RECIPE_FILE
    # decided by every process before any removal, so all see the same thing under DDP
    fresh = saved.is_file() and _failed_first_attempt(run_dir)
    if saved.is_file() and is_main_process():  # a folder a run owns; one process cleans it
        _remove_leftovers(run_dir, fresh)
    if saved.is_file() and not fresh:
        if not resume:
            raise DistillError(f"{run_dir} already holds a run; pass --resume to continue it, "
                               "or choose another --output")
        try:
            previous = read_yaml(saved)
        except DistillError as error:
            raise DistillError(f"cannot resume {run_dir}: {error}. {saved} records the recipe the run was started "
                               "with; restore it, or start a new --output.") from None
        # evaluation settings do not touch training (and gain fields over versions): they may change on resume
        differing = differences(previous, recipe.model_dump(mode="json"), ignore={"output", "evaluation"})
        if differing:
            raise DistillError(f"cannot resume {run_dir}: the recipe differs from the one it was started with at "
                               f"{', '.join(differing[:8])}. Resume with the same recipe, or start a new --output.")
        _check_done_markers(run_dir)
    elif resume and not fresh and run_dir.exists() and any(run_dir.iterdir()):
        raise DistillError(f"cannot resume {run_dir}: it holds no recipe.yaml, so it is not a distill run directory")
    return run_dir


def _refuse_foreign_folder(run_dir: Path) -> None:
    """A run is written only into a folder of its own: not into a teacher cache, nor inside another run."""
    from distill.cache.format import METADATA_FILE, PROGRESS_FILE

    if (run_dir / METADATA_FILE).is_file() or (run_dir / PROGRESS_FILE).is_file():
        raise DistillError(f"{run_dir} holds a teacher cache ({METADATA_FILE} or {PROGRESS_FILE}), not a run; a run is "
                           "not written into it. Choose another --output (the cache is used with "
                           f"--set teacher.cache={run_dir}).")
    owner = next((folder for folder in run_dir.absolute().parents if is_run_dir(folder)), None)
    if owner is not None:
        raise DistillError(f"{run_dir} is inside the run directory {owner}; a run is not written into another "
                           "run's folders. Choose an --output outside it.")


def _failed_first_attempt(run_dir: Path) -> bool:
    """Only a recipe and log lines, anywhere in the tree (``.partial`` files aside): no stage finished and no
    checkpoint exists, so nothing could be resumed, and the old recipe would only block a corrected retry."""
    files = [path for path in run_dir.rglob("*") if not path.is_dir() and not path.name.endswith(PARTIAL)]
    return (run_dir / RECIPE_FILE).is_file() and all(path.parent == run_dir and path.name in (RECIPE_FILE, LOG_FILE)
                                                     for path in files)


def _remove_leftovers(run_dir: Path, failed_first_attempt: bool) -> None:
    """``.partial`` files and folders (writes cut off by a kill or a full disk; no reader uses them) go, and so
    does a failed first attempt."""
    for path in sorted(run_dir.rglob(f"*{PARTIAL}"), key=lambda found: len(found.parts)):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)
    if failed_first_attempt:
        for path in (run_dir / RECIPE_FILE, run_dir / LOG_FILE):
            path.unlink(missing_ok=True)
        for folder in sorted((path for path in run_dir.rglob("*") if path.is_dir()), key=lambda f: -len(f.parts)):
            folder.rmdir()  # empty by now: those two files were all the tree held


def _check_done_markers(run_dir: Path) -> None:
    """Every stage's done marker must be readable before resuming trusts it (it holds the facts metrics.json
    reports, and says the stage need not run again)."""
    for marker in sorted(run_dir.glob(f"*/{DONE_FILE}")):
        try:
            facts = json.loads(marker.read_text())
        except (OSError, ValueError) as error:
            facts = error
        if not isinstance(facts, dict):
            reason = f"is not valid JSON ({facts})" if isinstance(facts, Exception) else "is not a JSON object"
            raise DistillError(f"cannot resume {run_dir}: {marker} {reason}. It marks stage {marker.parent.name!r} "
                               "as finished; delete it to run that stage again from its last checkpoint, or "
                               "restore it.")
