"""Atomic, resumable training checkpoints that never unpickle code.

A checkpoint is a folder ``step-00000123`` holding the model (safetensors), optimizer and scheduler state
(``torch.load(weights_only=True)``), every process's RNG states (safetensors) and ``state.json``. It is written
under a ``.partial`` name and renamed when complete, so a kill at any moment leaves either the previous
checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import Tensor, nn

from distill.errors import DistillError

PARTIAL = ".partial"


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
    temporary = path.with_name(path.name + PARTIAL)
    with open(temporary, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(directory: Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, state: dict[str, Any], process_index: int = 0, is_main: bool = True,
                    barrier: Any = None, keep: int = 2) -> Path:
    """Write a checkpoint atomically. In multi-process runs every process calls this (each saves its own RNG
    state); ``barrier`` is the launcher's wait-for-everyone."""
    barrier = barrier or (lambda: None)
    final = directory / checkpoint_name(step)
    partial = final.with_name(final.name + PARTIAL)
    if is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    save_file(rng_state(), str(partial / f"rng-{process_index}.safetensors"))
    if is_main:
        save_model(model, str(partial / "model.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   partial / "training_state.pt")
        (partial / "state.json").write_text(json.dumps({**state, "step": step}, indent=2))
    barrier()
    if is_main:
        for file in partial.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        fsync_dir(directory)
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (partial ones are ignored)."""
    if not directory.is_dir():
        return []
    found = [path for path in directory.iterdir()
             if path.is_dir() and path.name.startswith("step-") and not path.name.endswith(PARTIAL)
             and (path / "state.json").is_file()]
    return sorted(found, key=lambda path: int(path.name.split("-")[1]))


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    process_index: int = 0) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` wrote; returns the saved ``state`` dict."""
    try:
        load_model(model, str(path / "model.safetensors"))
        training_state = torch.load(path / "training_state.pt", weights_only=True, map_location="cpu")
    except (OSError, RuntimeError) as error:
        raise DistillError(f"checkpoint {path} cannot be restored: {error}".split("\n")[0]) from None
    optimizer.load_state_dict(training_state["optimizer"])
    scheduler.load_state_dict(training_state["scheduler"])
    rng_file = path / f"rng-{process_index}.safetensors"
    if rng_file.is_file():
        set_rng_state(load_file(str(rng_file)))
    return json.loads((path / "state.json").read_text())
