"""Losses on classifier outputs: pure functions of tensors, in the style of ``torch.nn.functional``.

Every function takes the student's tensor first. Teacher tensors are targets: they are detached here, so a
caller can never train the teacher through a distillation term by mistake.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _check_same_classes(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; teacher and student must predict the same classes"
        )


def cross_entropy(student_logits: Tensor, labels: Tensor, *, ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> Tensor:
    """Hard-label cross-entropy, mean over labelled samples (objective 0: train on gold data). Samples labelled
    ``ignore_index`` do not count; a batch with none labelled gives 0, not NaN (label-scarce transfer sets)."""
    summed = F.cross_entropy(student_logits.float(), labels, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction="sum")
    return summed / (labels != ignore_index).sum().clamp_min(1)


def soft_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Hinton et al. (2015) soft-target loss: KL(p_teacher^T || p_student^T) with ``batchmean`` reduction,
    multiplied by T^2 so its gradients keep the same scale as a hard-label term when T changes.

    ``p^T = softmax(logits / T)``; logits are [B, C] (or [..., C], averaged over all leading positions).
    """
    _check_same_classes(student_logits, teacher_logits)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_classes = student_logits.shape[-1]
    student_log_probs = F.log_softmax(student_logits.float().reshape(-1, num_classes) / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().float().reshape(-1, num_classes) / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2


def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Cross-entropy against the teacher's soft targets, times T^2. Equals ``soft_kl`` plus the teacher's
    entropy (a constant): same gradients, but the value does not go to zero at a perfect match."""
    _check_same_classes(student_logits, teacher_logits)
    num_classes = student_logits.shape[-1]
    student_log_probs = F.log_softmax(student_logits.float().reshape(-1, num_classes) / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.detach().float().reshape(-1, num_classes) / temperature, dim=-1)
    return -(teacher_probs * student_log_probs).sum(-1).mean() * temperature**2


def teacher_label_ce(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy on the teacher's argmax labels: train the student to give the same outputs as the teacher
    (needs only the teacher's decisions, not its scores)."""
    _check_same_classes(student_logits, teacher_logits)
    return F.cross_entropy(student_logits.float(), teacher_logits.detach().argmax(dim=-1))


def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared error between logits (Ba & Caruana 2014; the T -> infinity limit of ``soft_kl`` up to a
    factor when logits are zero-mean)."""
    _check_same_classes(student_logits, teacher_logits)
    return F.mse_loss(student_logits.float(), teacher_logits.detach().float())
