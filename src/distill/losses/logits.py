"""Losses on classifier outputs: pure functions of tensors, in the style of ``torch.nn.functional``.

Every function takes the student's tensor first. Teacher tensors are targets: they are detached here, so a
caller can never train the teacher through a distillation term by mistake.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.checks import check_ndim, check_positive, check_same_shape
from distill.losses.registry import NonNegative, Positive, UnitInterval, register_loss


def _check_same_classes(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; teacher and student must predict the same classes"
        )


@register_loss("cross_entropy")
def cross_entropy(student_logits: Tensor, labels: Tensor, *, ignore_index: int = -100,
                  label_smoothing: UnitInterval = 0.0) -> Tensor:
    """Hard-label cross-entropy, mean over labelled samples (objective 0: train on gold data). Samples labelled
    ``ignore_index`` do not count; a batch with none labelled gives 0, not NaN (label-scarce transfer sets)."""
    summed = F.cross_entropy(student_logits.float(), labels, ignore_index=ignore_index,
                             label_smoothing=label_smoothing, reduction="sum")
    return summed / (labels != ignore_index).sum().clamp_min(1)


@register_loss("multilabel_bce")
def multilabel_bce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Hard-label loss of multi-label classification (objective 0 for multi-label data): binary cross-entropy of
    each class's logit against its 0/1 label, mean over the labelled samples and classes. Samples whose labels are
    NaN (texts only the teacher labels) do not count; a batch with none labelled gives 0."""
    check_same_shape("multilabel_bce", student_logits, labels)
    labelled = ~torch.isnan(labels).any(-1)
    if not labelled.any():
        return student_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(student_logits[labelled].float(), labels[labelled].float())


@register_loss("regression_mse")
def regression_mse(student_predictions: Tensor, labels: Tensor) -> Tensor:
    """Hard-label loss of regression (objective 0 for a numeric target): mean squared error between the
    prediction ([B] or [B, 1]) and the target, over the samples with a target (NaN: none)."""
    predictions = student_predictions.reshape(-1).float()
    targets = labels.reshape(-1).float()
    if predictions.shape != targets.shape:
        raise ValueError(f"regression_mse: {tuple(student_predictions.shape)} predictions for {tuple(labels.shape)} "
                         "targets; a regression model predicts one number per sample")
    labelled = ~torch.isnan(targets)
    if not labelled.any():
        return predictions.sum() * 0.0
    return F.mse_loss(predictions[labelled], targets[labelled])


@register_loss("soft_kl", softens=True)
def soft_kl(student_logits: Tensor, teacher_logits: Tensor, *, temperature: Positive = 1.0) -> Tensor:
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


@register_loss("soft_cross_entropy", softens=True)
def soft_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, *, temperature: Positive = 1.0) -> Tensor:
    """Cross-entropy against the teacher's soft targets, times T^2. Equals ``soft_kl`` plus the teacher's
    entropy (a constant): same gradients, but the value does not go to zero at a perfect match."""
    _check_same_classes(student_logits, teacher_logits)
    num_classes = student_logits.shape[-1]
    student_log_probs = F.log_softmax(student_logits.float().reshape(-1, num_classes) / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.detach().float().reshape(-1, num_classes) / temperature, dim=-1)
    return -(teacher_probs * student_log_probs).sum(-1).mean() * temperature**2


@register_loss("teacher_label_ce")
def teacher_label_ce(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy on the teacher's argmax labels: train the student to give the same outputs as the teacher
    (needs only the teacher's decisions, not its scores)."""
    _check_same_classes(student_logits, teacher_logits)
    return F.cross_entropy(student_logits.float(), teacher_logits.detach().argmax(dim=-1))


@register_loss("logit_mse")
def logit_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared error between logits (Ba & Caruana 2014; the T -> infinity limit of ``soft_kl`` up to a
    factor when logits are zero-mean)."""
    _check_same_classes(student_logits, teacher_logits)
    return F.mse_loss(student_logits.float(), teacher_logits.detach().float())


@register_loss("dkd", softens=True)
def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    *,
    alpha: NonNegative = 1.0,
    beta: NonNegative = 8.0,
    temperature: Positive = 4.0,
) -> Tensor:
    """Decoupled knowledge distillation (Zhao et al., 2022, "Decoupled
    Knowledge Distillation"), as defined in mdistiller's ``dkd_loss``.

    With ``p = softmax(z / T)`` for each model and ``y`` the label:

    * TCKD: KL between the binary distributions ``b = [p_y, 1 - p_y]`` of
      teacher and student, ``KL(b_t || b_s)``;
    * NCKD: KL between the distributions over the non-target classes,
      ``softmax(z / T - 1000 * onehot(y))`` for each model (the target logit is
      pushed down by 1000 after dividing by T, exactly as mdistiller does).

    ``loss = alpha * TCKD + beta * NCKD``, each summed over classes, multiplied
    by ``T^2`` and divided by the batch size ("batchmean"). mdistiller's warm-up
    factor and the cross-entropy term are left to the caller. Classical KD
    decomposes as ``KD = TCKD + (1 - p_y^teacher) * NCKD`` (paper eq. 5).

    Args:
        student_logits: ``[B, C]``.
        teacher_logits: ``[B, C]``; detached.
        labels: ``[B]`` integer class indices in ``[0, C)`` (not range-checked,
            to avoid a device sync).
        alpha: weight of TCKD.
        beta: weight of NCKD.
        temperature: ``T > 0``.

    Returns:
        0-dim tensor.
    """
    name = "dkd"
    check_ndim(name, student_logits, teacher_logits, 2, "[B, C]")
    check_same_shape(name, student_logits, teacher_logits)
    if labels.dim() != 1 or labels.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"{name}: labels shape {tuple(labels.shape)} does not match logits shape "
            f"{tuple(student_logits.shape)}: expected ({student_logits.shape[0]},)"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    check_positive(name, "temperature", temperature)

    batch = student_logits.shape[0]
    s = student_logits / temperature
    t = teacher_logits.detach() / temperature
    gt_mask = torch.zeros_like(s, dtype=torch.bool).scatter_(1, labels.long().unsqueeze(1), True)
    gt = gt_mask.to(s.dtype)

    # TCKD: binary [p_target, p_rest] distributions (mdistiller's cat_mask)
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1.0 - gt)).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1.0 - gt)).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * temperature**2 / batch

    # NCKD: distributions over the non-target classes
    log_q_s = F.log_softmax(s - 1000.0 * gt, dim=1)
    q_t = F.softmax(t - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * temperature**2 / batch

    return alpha * tckd + beta * nckd
