"""Atomic, resumable training checkpoints that never unpickle code, and the write helpers every command shares.

A checkpoint is a folder ``step-00000123`` holding the model (safetensors), optimizer and scheduler state
(``torch.load(weights_only=True)``), every process's RNG states (safetensors) and ``state.json``. It is written
under a ``.partial`` name and renamed when complete, so a kill at any moment leaves either the previous
checkpoint or the new one, never half of one. A write that fails (disk full, permission denied, a path too long)
removes what it had half-written and raises ``WriteFailed``: one paragraph naming the file, and the previous
state on disk untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from distill.errors import DistillError

PARTIAL = ".partial"
STATE_FILE = "state.json"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# What a failed write means to the user, by errno (the rest: the system's own words)
_WRITE_REASONS = {
    errno.ENOSPC: "the disk is full (no space left on the device)",
    errno.EDQUOT: "the disk is full for this user (the disk quota is used up)",
    errno.EFBIG: "the disk is full for a file this large (EFBIG: larger than the file system or its limits allow)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the path is too long for the file system",
}
# room kept below PATH_MAX for what a command writes inside its output folder
# (checkpoints/student_pruned_int8/step-00000000.partial/training_state.pt and the like)
_DEEPEST_FILE = 128


# ------------------------------------------------------------------------------------------ write faults
class WriteFailed(DistillError):
    """A file could not be written. ``path`` is that file and ``errno`` the system's error number (None when the
    writer gave none); everything written before it is untouched."""

    def __init__(self, path: str | Path, reason: str, error_number: int | None = None):
        self.path, self.reason, self.errno = Path(path), reason, error_number
        super().__init__(f"cannot write {path}: {reason}.")

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL


def write_error_number(error: BaseException) -> int | None:
    """The errno of a failed write: OSError carries it, safetensors' Rust errors only in their text."""
    if isinstance(error, OSError):
        return error.errno
    found = re.search(r"os error (\d+)", str(error))
    return int(found.group(1)) if found else None


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free
    return None


def write_failed(error: BaseException, path: str | Path) -> WriteFailed:
    """``error`` raised while writing ``path``, as one paragraph naming the file and why."""
    number = write_error_number(error)
    if number is None and isinstance(error, RuntimeError):  # torch.save's writer, on the file it half wrote
        number = _probe_write(Path(path))
    if number is None and _disk_nearly_full(Path(path)):
        number = errno.ENOSPC
    reason = _WRITE_REASONS.get(number) if number is not None else None
    reason = reason or (os.strerror(number) if number else str(error).split("\n")[0])
    return WriteFailed(path, reason, number)


def _probe_write(path: Path) -> int | None:
    """The errno a write to the half-written ``path`` meets now: torch.save says only "unexpected pos" when the
    disk fills (or the file size limit is reached) under it."""
    if not path.is_file():
        return None
    try:
        with open(path, "ab") as handle:
            handle.write(b"\0")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error.errno
    return None


def _disk_nearly_full(path: Path) -> bool:
    free = _free_bytes(path)
    return free is not None and free < (1 << 20)


# how torch.save's writer reports a failed write (it gives no errno)
_TORCH_WRITE_FAILURE = re.compile(r"unexpected pos|file write failed|PytorchStreamWriter failed")


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write of ``path`` (OSError, safetensors' I/O error, torch.save's RuntimeError) into
    WriteFailed; their other errors are not write faults and pass through."""
    try:
        yield
    except WriteFailed:
        raise
    except OSError as error:
        raise write_failed(error, path) from None
    except (SafetensorError, RuntimeError) as error:
        if write_error_number(error) is None and not _TORCH_WRITE_FAILURE.search(str(error)) \
                and not _disk_nearly_full(Path(path)):
            raise
        raise write_failed(error, path) from None


def check_writable(directory: str | Path, what: str) -> None:
    """Before any compute: ``directory`` (created later if need be) fits the file system's name limits, is not a
    file, and can be written, so that an hour of training never ends in a refused first write."""
    directory = Path(directory).absolute()
    shown = str(directory) if len(str(directory)) <= 100 else f"{str(directory)[:60]}...{str(directory)[-30:]}"
    existing = next(folder for folder in (directory, *directory.parents) if _exists(folder))
    if not existing.is_dir():
        raise DistillError(f"{what} {shown}: {existing} is a file, not a folder; choose another path")
    name_max, path_max = _limit(existing, "PC_NAME_MAX", 255), _limit(existing, "PC_PATH_MAX", 4096)
    long_name = next((part for part in directory.parts if len(os.fsencode(part)) > name_max), None)
    if long_name is not None:
        raise DistillError(f"{what} {shown}: the path is too long, a folder name in it is "
                           f"{len(os.fsencode(long_name))} bytes and this file system allows {name_max} per name; "
                           "choose a shorter path")
    if len(os.fsencode(str(directory))) + _DEEPEST_FILE > path_max:
        raise DistillError(f"{what} {shown}: the path is too long ({len(os.fsencode(str(directory)))} bytes; this "
                           f"file system allows {path_max} per path, and up to {_DEEPEST_FILE} more are written "
                           "inside it); choose a shorter path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DistillError(f"{what} {shown}: permission denied, {existing} is not writable by this user; "
                           "choose a folder you can write to, or change its permissions")


def _exists(path: Path) -> bool:
    try:  # Path.exists raises on a name too long for the file system
        os.stat(path)
    except OSError:
        return False
    return True


def _limit(folder: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(folder, name))
    except (OSError, ValueError):
        return default


# ------------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict[str, Tensor]:
    """Every random generator the training step may draw from, as plain tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda_{index}"] = cuda_state
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    state["numpy_position"] = torch.tensor([position, has_gauss], dtype=torch.int64)
    state["numpy_gaussian"] = torch.tensor([cached_gaussian], dtype=torch.float64)
    version, internal, gauss_next = random.getstate()
    state["python"] = torch.tensor(internal, dtype=torch.int64)
    state["python_meta"] = torch.tensor([version, gauss_next is not None], dtype=torch.int64)
    state["python_gauss"] = torch.tensor([gauss_next or 0.0], dtype=torch.float64)
    return state


def set_rng_state(state: dict[str, Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    cuda_states = [state[key] for key in sorted(k for k in state if k.startswith("cuda_"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    position, has_gauss = (int(value) for value in state["numpy_position"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), position, has_gauss,
                         float(state["numpy_gaussian"][0])))
    version, has_gauss_next = (int(value) for value in state["python_meta"])
    gauss_next = float(state["python_gauss"][0]) if has_gauss_next else None
    random.setstate((version, tuple(int(value) for value in state["python"]), gauss_next))


def fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``path`` whole or not at all: a failed write leaves the previous file as it was."""
    path = Path(path)
    temporary = path.with_name(path.name + PARTIAL)
    try:
        with writing(path):
            with open(temporary, "w") as handle:
                json.dump(data, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
    except WriteFailed:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)  # no half-written file left to fill the disk
        raise


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(directory: Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], process_index: int = 0, is_main: bool = True,
                    barrier: Any = None, keep: int = 2) -> Path:
    """Write a checkpoint atomically. In multi-process runs every process calls this (each saves its own RNG
    state); ``barrier`` is the launcher's wait-for-everyone. A failed write removes the partial folder (the
    space it took is freed) and raises ``WriteFailed``; the previous checkpoints stay."""
    barrier = barrier or (lambda: None)
    final = directory / checkpoint_name(step)
    partial = final.with_name(final.name + PARTIAL)
    try:
        if is_main:
            shutil.rmtree(partial, ignore_errors=True)
            with writing(partial):
                partial.mkdir(parents=True)
        barrier()
        rng_file = partial / f"rng-{process_index}.safetensors"
        with writing(rng_file):
            save_file(rng_state(), str(rng_file))
        if is_main:
            _write_training_files(partial, model, optimizer, scheduler, {**state, "step": step})
        barrier()
        if is_main:
            _publish(partial, final)
    except WriteFailed as error:
        if is_main:  # the folder is the main process's; the space it took is freed
            shutil.rmtree(partial, ignore_errors=True)
        # named as the checkpoint it was to be: the partial folder is gone
        inside = error.path.relative_to(partial) if partial in error.path.parents else None
        raise WriteFailed(final / inside if inside else final, error.reason, error.errno) from None
    if is_main:
        for old in list_checkpoints(directory)[:-keep]:
            remove_checkpoint(old)
    barrier()
    return final


def _write_training_files(partial: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                          state: dict[str, Any]) -> None:
    with writing(partial / "model.safetensors"):
        save_model(model, str(partial / "model.safetensors"))
    with writing(partial / "training_state.pt"):
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   partial / "training_state.pt")
    with writing(partial / STATE_FILE):
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2))  # last: a folder without it is incomplete


def _publish(partial: Path, final: Path) -> None:
    """Make the complete partial folder the checkpoint, durably."""
    for file in partial.iterdir():
        with writing(file), open(file, "rb") as handle:
            os.fsync(handle.fileno())
    if final.exists():
        remove_checkpoint(final)
    with writing(final):
        os.replace(partial, final)
    fsync_dir(final.parent)


def remove_checkpoint(path: Path) -> None:
    """Renamed to a partial name first, so that a kill half-way through the removal leaves a folder every reader
    ignores, never a step folder with some of its files gone."""
    doomed = path.with_name(path.name + ".old" + PARTIAL)  # not the name a checkpoint being written has
    shutil.rmtree(doomed, ignore_errors=True)
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial ones are ignored)."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir()
             if path.is_dir() and path.name.startswith("step-") and not path.name.endswith(PARTIAL)
             and (path / STATE_FILE).is_file()]
    return sorted(found, key=lambda path: int(path.name.split("-")[1]))


def incomplete_checkpoints(directory: Path) -> list[Path]:
    """Step folders that are not partial yet lack ``state.json`` (written last): damaged outside distill."""
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if path.is_dir() and path.name.startswith("step-")
                  and not path.name.endswith(PARTIAL) and not (path / STATE_FILE).is_file())


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's ``state.json``, or a DistillError naming it."""
    file = Path(path) / STATE_FILE
    try:
        state = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise DistillError(f"checkpoint {path} cannot be restored: {file} is unreadable ({error}). Delete the folder "
                           f"{path} to resume from the checkpoint before it.".split("\n")[0]) from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DistillError(f"checkpoint {path} cannot be restored: {file} holds no step number. Delete the folder "
                           f"{path} to resume from the checkpoint before it.")
    return state


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    process_index: int = 0) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the saved ``state`` dict."""
    state = read_state(path)
    rng_file = path / f"rng-{process_index}.safetensors"
    try:
        load_model(model, str(path / "model.safetensors"))
        training_state = torch.load(path / "training_state.pt", weights_only=True, map_location="cpu")
        optimizer.load_state_dict(training_state["optimizer"])
        scheduler.load_state_dict(training_state["scheduler"])
        rng = load_file(str(rng_file)) if rng_file.is_file() else None
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, SafetensorError) as error:
        raise DistillError(f"checkpoint {path} cannot be restored: {error}. Delete the folder {path} to resume from "
                           "the checkpoint before it.".split("\n")[0]) from None
    if rng is not None:
        set_rng_state(rng)
    return state
