"""Task and fidelity metrics from predictions: pure functions of tensors."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from distill.data.tokens import collate_fn_of
from distill.models import forward_logits


@torch.no_grad()
def predict_logits(model: torch.nn.Module, dataset: Dataset, *, batch_size: int = 1000,
                   device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Logits and labels of a whole dataset, in order, in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn_of(dataset)):
        batch = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}
        all_logits.append(forward_logits(model, batch).float().cpu())
        all_labels.append(batch["labels"].cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()


def error_count(logits: Tensor, labels: Tensor) -> int:
    return int((logits.argmax(-1) != labels).sum())


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Share of samples where student and teacher predict the same class (top-1)."""
    return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()


def gap_recovered(*, teacher_errors: float, baseline_errors: float, student_errors: float) -> float | None:
    """(baseline - student) / (baseline - teacher): 1.0 means the distilled student matches the teacher,
    0.0 means distillation did nothing over training the student alone. None when there is no gap."""
    gap = baseline_errors - teacher_errors
    if gap <= 0:
        return None
    return (baseline_errors - student_errors) / gap
