"""Where teacher signals come from during training: a live model run on each batch, or a cache on disk.

The trainer asks a ``TeacherSource`` for ``signals(batch, split)`` and does not know which one it holds:
- ``LiveTeacher`` runs the frozen teacher under ``no_grad`` and captures the named signals with hooks;
- ``CachedTeacher`` looks the batch's samples up by ``sample_id`` in a teacher cache (``distill.cache``), so the
  teacher is never built, loaded or run.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from distill.cache.format import (
    FINAL_HIDDEN,
    LOG_TAIL,
    TOPK_IDS,
    TOPK_LOGPROBS,
    TOPK_SIGNALS,
)
from distill.capture import SignalCapture, TopKTeacher
from distill.data.indexed import SAMPLE_ID
from distill.data.tokens import teacher_view
from distill.errors import DistillError


class TeacherSource(Protocol):
    def signals(self, batch: dict[str, Any], split: str = "train") -> dict[str, Tensor]: ...

    def remove(self) -> None: ...


class LiveTeacher:
    def __init__(self, model: nn.Module, names: set[str]):
        self.model = model
        self.capture = SignalCapture(model, names, role="teacher")

    def signals(self, batch: dict[str, Any], split: str = "train") -> dict[str, Tensor]:
        with torch.no_grad():  # the teacher reads its own tokenisation when the batch carries one
            return self.capture.forward(self.model, teacher_view(batch))

    def remove(self) -> None:
        self.capture.remove()


class CachedTeacher:
    """Signals read from a ``distill.cache.TeacherCache`` for the samples of each batch (``batch['sample_id']``,
    added by ``distill.data.indexed.IndexedDataset``), as float32 on the batch's device."""

    def __init__(self, cache: Any, names: set[str] | None = None):
        self.cache = cache
        self.names: list[str] = []
        if names is not None:
            self.bind(names)

    def bind(self, names: set[str]) -> "CachedTeacher":
        stored = set(self.cache.signals)
        if set(TOPK_SIGNALS) <= stored:
            stored.add(FINAL_HIDDEN)  # read back as one TopKTeacher
        missing = sorted(set(names) - stored)
        if missing:
            raise DistillError(f"the objective reads teacher signal(s) {missing}, and teacher cache "
                               f"{self.cache.directory} stores only {sorted(self.cache.signals)}; rebuild the cache "
                               "with this recipe (`distill cache build`)")
        self.names = sorted(names)
        return self

    def signals(self, batch: dict[str, Any], split: str = "train") -> dict[str, Tensor]:
        if SAMPLE_ID not in batch:
            raise DistillError("a cached teacher needs each batch's sample ids: wrap the dataset in "
                               "distill.data.indexed.IndexedDataset")
        sample_ids = batch[SAMPLE_ID]
        reader = self.cache.split(split)
        names = [name for name in self.names if name != FINAL_HIDDEN]
        per_token = [name for name in names if self.cache.signals[name].ragged]
        if FINAL_HIDDEN in self.names:
            per_token += list(TOPK_SIGNALS)
        stored = reader.read(sample_ids, [name for name in names if name not in per_token])
        if per_token and "attention_mask" not in batch:
            raise DistillError(f"teacher signal {per_token[0]!r} is cached per token, and the batch has no "
                               "attention_mask to lay the tokens out by")
        for name in per_token:  # per-token signals come back padded like the batch
            stored[name] = reader.read_padded(sample_ids, name, batch["attention_mask"])
        device = sample_ids.device
        signals: dict[str, Any] = {}
        if FINAL_HIDDEN in self.names:
            signals[FINAL_HIDDEN] = TopKTeacher(stored.pop(TOPK_LOGPROBS).to(device, torch.float32),
                                                stored.pop(TOPK_IDS).to(device, torch.long),
                                                stored.pop(LOG_TAIL).squeeze(-1).to(device, torch.float32))
        signals.update({name: value.to(device=device, dtype=torch.float32, non_blocking=True)
                        for name, value in stored.items()})
        return signals

    def remove(self) -> None:
        pass


class CachedTeachers:
    """Several teacher caches, one per named teacher: signal ``name`` is that teacher's ``logits`` and
    ``name.SIGNAL`` its ``SIGNAL`` (the addressing of the multi-teacher mode), so each term follows one teacher."""

    def __init__(self, caches: dict[str, CachedTeacher]):
        self.caches = caches
        self.routes: dict[str, tuple[str, str]] = {}

    def route(self, name: str) -> tuple[str, str]:
        teacher, _, signal = name.partition(".")
        if teacher not in self.caches:
            raise DistillError(f"teacher signal {name!r}: with several teacher caches a term names its teacher, as "
                               f"NAME or NAME.SIGNAL with NAME one of {', '.join(sorted(self.caches))}")
        return teacher, signal or "logits"

    def bind(self, names: set[str]) -> "CachedTeachers":
        self.routes = {name: self.route(name) for name in sorted(names)}
        for teacher, source in self.caches.items():
            source.bind({signal for owner, signal in self.routes.values() if owner == teacher})
        return self

    def signals(self, batch: dict[str, Any], split: str = "train") -> dict[str, Any]:
        per_teacher = {teacher: source.signals(batch, split) for teacher, source in self.caches.items()
                       if source.names}
        return {name: per_teacher[teacher][signal] for name, (teacher, signal) in self.routes.items()}

    def remove(self) -> None:
        pass


def teacher_source(teacher: nn.Module | Any | None, names: set[str]) -> Any:
    """The source for a trainer's ``teacher`` argument: a module runs live, a ``CachedTeacher`` is bound to the
    signals the objective reads."""
    if teacher is None:
        return None
    if isinstance(teacher, nn.Module):
        return LiveTeacher(teacher, names)
    return teacher.bind(names)
