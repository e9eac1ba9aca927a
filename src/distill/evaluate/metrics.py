"""Task and fidelity metrics from predictions: pure functions of tensors."""

from __future__ import annotations

from typing import Any

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


def per_class_f1(logits: Tensor, labels: Tensor, num_classes: int | None = None) -> list[float | None]:
    """F1 of each class (None for a class neither present nor predicted, which has no F1)."""
    num_classes = num_classes or int(logits.shape[-1])
    matrix = confusion_matrix(logits, labels, num_classes).double()
    predicted, actual = matrix.sum(0), matrix.sum(1)
    f1 = 2 * matrix.diagonal() / (predicted + actual).clamp(min=1)
    return [float(value) if predicted[index] + actual[index] > 0 else None for index, value in enumerate(f1)]


def macro_f1(logits: Tensor, labels: Tensor, num_classes: int | None = None) -> float:
    """Unweighted mean over classes of F1; a class never predicted nor present counts as absent, not as 0."""
    present = [value for value in per_class_f1(logits, labels, num_classes) if value is not None]
    return sum(present) / len(present) if present else 0.0


def confusion_matrix(logits: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """``[true class, predicted class]`` counts."""
    num_classes = num_classes or int(logits.shape[-1])
    flat = labels.long() * num_classes + logits.argmax(-1)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_kl_to_teacher(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Mean over samples of KL(teacher || student) at temperature 1, in nats."""
    teacher_log_probs = torch.log_softmax(teacher_logits.double(), -1)
    student_log_probs = torch.log_softmax(student_logits.double(), -1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1).mean().item()


def mean_jsd_to_teacher(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Mean Jensen-Shannon divergence (nats, bounded by ln 2): symmetric and finite even where one model puts
    no mass."""
    teacher_probs = torch.softmax(teacher_logits.double(), -1)
    student_probs = torch.softmax(student_logits.double(), -1)
    middle = 0.5 * (teacher_probs + student_probs)

    def kl(probs: Tensor) -> Tensor:
        return torch.where(probs > 0, probs * (probs.log() - middle.log()), torch.zeros_like(probs)).sum(-1)

    return (0.5 * kl(teacher_probs) + 0.5 * kl(student_probs)).mean().item()


def calibration(logits: Tensor, labels: Tensor, *, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins (Guo et al. 2017) and the reliability diagram
    data: per bin, how many samples, their mean confidence and their accuracy."""
    probs = torch.softmax(logits.double(), -1)
    confidence, predicted = probs.max(-1)
    return calibration_of_confidence(confidence, predicted == labels, bins=bins)


def calibration_of_confidence(confidence: Tensor, correct: Tensor, *, bins: int = 15) -> dict[str, Any]:
    """:func:`calibration` from each prediction's confidence and whether it was right (for LMs, whose
    next-token logits are never held for the whole test set)."""
    confidence, correct = confidence.double(), correct.double()
    # bin b holds confidences in (b/bins, (b+1)/bins]; the lowest bin also takes exact zeros
    index = (torch.ceil(confidence * bins).long() - 1).clamp(0, bins - 1)
    counts = torch.bincount(index, minlength=bins).double()
    confidence_sums = torch.bincount(index, weights=confidence, minlength=bins)
    correct_sums = torch.bincount(index, weights=correct, minlength=bins)
    filled = counts > 0
    mean_confidence = torch.where(filled, confidence_sums / counts.clamp(min=1), torch.zeros_like(counts))
    bin_accuracy = torch.where(filled, correct_sums / counts.clamp(min=1), torch.zeros_like(counts))
    ece = ((counts / max(len(confidence), 1)) * (mean_confidence - bin_accuracy).abs()).sum().item()
    return {"ece": ece, "bins": bins, "count": counts.long().tolist(),
            "confidence": [round(value, 6) for value in mean_confidence.tolist()],
            "accuracy": [round(value, 6) for value in bin_accuracy.tolist()]}


def inherited_errors(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Of the samples the teacher gets wrong, how many the student gets wrong with the *same* wrong answer
    (inherited), and how many it gets right. Compare a distilled student's share with the baseline's: the excess
    is what distillation copied from the teacher rather than what the architecture gets wrong on its own."""
    return inherited_of_predictions(student_logits.argmax(-1), teacher_logits.argmax(-1), labels)


def inherited_of_predictions(student_predicted: Tensor, teacher_predicted: Tensor, labels: Tensor
                             ) -> dict[str, Any]:
    """:func:`inherited_errors` from the predicted classes (or next tokens)."""
    teacher_wrong = teacher_predicted != labels
    same_wrong = teacher_wrong & (student_predicted == teacher_predicted)
    fixed = teacher_wrong & (student_predicted == labels)
    teacher_errors = int(teacher_wrong.sum())
    student_errors = int((student_predicted != labels).sum())
    return {
        "teacher_errors": teacher_errors,
        "inherited": int(same_wrong.sum()),
        "inherited_share": round(int(same_wrong.sum()) / teacher_errors, 6) if teacher_errors else None,
        "fixed": int(fixed.sum()),
        # the student's own errors the teacher does not make
        "own_errors": int(((student_predicted != labels) & ~teacher_wrong).sum()),
        "student_errors": student_errors,
    }
