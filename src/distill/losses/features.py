"""Feature- and output-state distillation losses.

Every function here is a pure function of tensors in the style of
:mod:`torch.nn.functional`: the student tensor comes first, the teacher tensor
second, options are keyword-only, and the result is a 0-dim tensor. The teacher
tensor is treated as a constant target: it is detached inside each loss, so no
gradient ever reaches the teacher. Incompatible shapes raise :class:`ValueError`
with a message that names both shapes.
"""

from __future__ import annotations

from typing import Literal, Optional, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.checks import (
    check_kind,
    check_mask,
    check_ndim,
    check_positive,
    check_same_shape,
    shapes_error,
)
from distill.losses.registry import Positive, register_loss

__all__ = [
    "hint_loss",
    "cosine_loss",
    "attention_transfer",
    "similarity_preserving",
    "regression_kd",
    "multilabel_kd",
]

DistanceKind = Literal["mse", "l1", "smooth_l1"]
_DISTANCE_KINDS = get_args(DistanceKind)


# --------------------------------------------------------------------------- helpers
# (also used by distill.losses.relations and distill.losses.logits)


def _elementwise_distance(student: Tensor, teacher: Tensor, kind: str, beta: float) -> Tensor:
    if kind == "mse":
        return F.mse_loss(student, teacher, reduction="mean")
    if kind == "l1":
        return F.l1_loss(student, teacher, reduction="mean")
    return F.smooth_l1_loss(student, teacher, reduction="mean", beta=beta)


# --------------------------------------------------------------------------- losses


def _matched_distance(name: str, student: Tensor, teacher: Tensor, kind: str, beta: float) -> Tensor:
    check_kind(name, kind, _DISTANCE_KINDS)
    check_same_shape(name, student, teacher)
    if kind == "smooth_l1":
        check_positive(name, "beta", beta)
    return _elementwise_distance(student, teacher.detach(), kind, beta)


@register_loss("hint")
def hint_loss(
    student_features: Tensor,
    teacher_features: Tensor,
    *,
    kind: DistanceKind = "mse",
    beta: Positive = 1.0,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """FitNets hint loss (Romero et al., 2015, "FitNets: Hints for Thin Deep Nets").

    Elementwise distance between a student's (already projected) intermediate
    features and the teacher's hint features.

    Args:
        student_features: any shape ``[*]``; project it to the teacher's width
            first (FitNets' regressor is a module, not part of this function).
        teacher_features: same shape as ``student_features``; detached.
        kind: ``"mse"`` (squared error, the paper's choice), ``"l1"`` or
            ``"smooth_l1"`` (Huber with threshold ``beta``).
        beta: threshold of ``smooth_l1``; ignored otherwise.
        mask: optional boolean (or 0/1) tensor of shape ``student_features.shape[:-1]``, e.g. the attention mask
            ``[B, T]`` of token states: only the elements of selected positions count (padding carries no hint,
            and a teacher cache does not store it).

    Returns:
        0-dim tensor: the elementwise distance **averaged over all (selected) elements**
        (the paper writes ``1/2 ||u - r||^2``; we use the mean, not the half sum). 0 if the mask selects nothing.
    """
    name = "hint_loss"
    if mask is None:
        return _matched_distance(name, student_features, teacher_features, kind, beta)
    check_same_shape(name, student_features, teacher_features)
    check_mask(name, mask, tuple(student_features.shape[:-1]), "positions (student_features.shape[:-1])")
    selected = mask.to(torch.bool)
    if not bool(selected.any()):  # the mean over no element would be NaN
        _matched_distance(name, student_features, teacher_features, kind, beta)  # still reject bad options
        return student_features.sum() * 0.0
    # Only real positions enter the distance, so padding rows (zeros from a cache) cannot move the student.
    return _matched_distance(name, student_features[selected], teacher_features[selected], kind, beta)


@register_loss("cosine")
def cosine_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Cosine embedding loss of DistilBERT (Sanh et al., 2019), ``L_cos``.

    Aligns the directions of student and teacher hidden states:
    ``1 - cos(s, t)`` computed along the last (hidden) dimension for each position.

    Args:
        student: ``[..., D]``, e.g. ``[B, T, D]`` hidden states.
        teacher: same shape as ``student``; detached.
        mask: optional boolean (or 0/1) tensor of shape ``student.shape[:-1]``,
            e.g. the attention mask ``[B, T]``; only positions where it is true
            count.

    Returns:
        0-dim tensor: mean over the (selected) positions of ``1 - cos(s, t)``.
        If the mask selects no position the loss is 0.
    """
    name = "cosine_loss"
    check_ndim(name, student, teacher, 1, "[..., D]", at_least=True)
    check_same_shape(name, student, teacher)
    per_position = 1.0 - F.cosine_similarity(student, teacher.detach(), dim=-1, eps=1e-8)
    if mask is None:
        return per_position.mean()
    check_mask(name, mask, tuple(student.shape[:-1]), "positions (student.shape[:-1])")
    weights = mask.to(dtype=per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp_min(1.0)


def _attention_map(features: Tensor, p: float) -> Tensor:
    # mean over channels of |F|^p, flattened over space, L2-normalised per sample
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), p=2, dim=1)


@register_loss("attention_transfer")
def attention_transfer(
    student_maps: Tensor,
    teacher_maps: Tensor,
    *,
    p: Positive = 2,
) -> Tensor:
    """Activation-based attention transfer (Zagoruyko & Komodakis, 2017,
    "Paying More Attention to Attention").

    For each feature map ``F`` of shape ``[B, C, H, W]`` the spatial attention
    map is ``a = normalize(mean_c |F_c|^p)`` flattened to ``[B, H*W]`` and
    L2-normalised per sample. Channel counts may differ between student and
    teacher; batch and spatial sizes must match.

    Reduction: as in the official code (``(at(x) - at(y)).pow(2).mean()``), the
    **mean over batch and spatial positions** of the squared difference, i.e.
    ``mean_b ||a_s - a_t||_2^2 / (H*W)``. The paper's ``beta/2`` weight (1e3 in
    the reference training script) is left to the caller.

    Args:
        student_maps: ``[B, C_s, H, W]`` (any number of trailing spatial dims).
        teacher_maps: ``[B, C_t, H, W]``; detached.
        p: exponent applied to the absolute activations (the paper uses 2).

    Returns:
        0-dim tensor.
    """
    name = "attention_transfer"
    check_ndim(name, student_maps, teacher_maps, 3, "[B, C, H, W]", at_least=True)
    if (
        student_maps.dim() != teacher_maps.dim()
        or student_maps.shape[0] != teacher_maps.shape[0]
        or student_maps.shape[2:] != teacher_maps.shape[2:]
    ):
        raise shapes_error(
            name, student_maps, teacher_maps,
            "batch and spatial dimensions must match (channels may differ)",
        )
    check_positive(name, "p", p)
    a_s = _attention_map(student_maps, p)
    a_t = _attention_map(teacher_maps.detach(), p)
    return (a_s - a_t).pow(2).mean()


@register_loss("similarity_preserving")
def similarity_preserving(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, 2019, "Similarity-Preserving
    Knowledge Distillation").

    Features are flattened per sample to ``Q`` of shape ``[B, -1]``; the batch
    Gram matrix ``G = Q Q^T`` (``[B, B]``) is L2-normalised row by row, and

    ``loss = ||G_s - G_t||_F^2 / B^2``

    (the paper's per-layer-pair term; summing over layer pairs and the weight
    ``gamma`` are left to the caller).

    Args:
        student_features: ``[B, ...]``.
        teacher_features: ``[B, ...]``; the per-sample sizes may differ; detached.

    Returns:
        0-dim tensor.
    """
    name = "similarity_preserving"
    check_ndim(name, student_features, teacher_features, 1, "[B, ...]", at_least=True)
    if student_features.shape[0] != teacher_features.shape[0]:
        raise shapes_error(name, student_features, teacher_features, "batch sizes must match")
    batch = student_features.shape[0]

    def gram(x: Tensor) -> Tensor:
        q = x.reshape(batch, -1)
        return F.normalize(q @ q.t(), p=2, dim=1)

    diff = gram(student_features) - gram(teacher_features.detach())
    return diff.pow(2).sum() / (batch * batch)


@register_loss("regression_kd")
def regression_kd(
    student_predictions: Tensor,
    teacher_predictions: Tensor,
    *,
    kind: DistanceKind = "mse",
    beta: Positive = 1.0,
) -> Tensor:
    """Distillation for regression outputs: match the teacher's predictions
    (soft targets for regression, e.g. Chen et al., 2017, "Learning Efficient
    Object Detection Models with Knowledge Distillation", and Saputra et al.,
    2019, "Distilling Knowledge From a Deep Pose Regressor Network").

    Args:
        student_predictions: any shape, e.g. ``[B]`` or ``[B, K]``.
        teacher_predictions: same shape; detached.
        kind: ``"mse"``, ``"l1"`` or ``"smooth_l1"`` (threshold ``beta``).
        beta: threshold of ``smooth_l1``; ignored otherwise.

    Returns:
        0-dim tensor: the distance averaged over all elements.
    """
    return _matched_distance("regression_kd", student_predictions, teacher_predictions, kind, beta)


@register_loss("multilabel_kd", softens=True)
def multilabel_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: Positive = 1.0,
) -> Tensor:
    """Knowledge distillation for multi-label classification: one binary
    (sigmoid) distribution per class instead of one softmax over classes
    (the per-class Bernoulli form of Hinton et al., 2015's soft targets).

    With ``p = sigmoid(t / T)`` and ``q = sigmoid(s / T)``, per class:

    ``KL(Bern(p) || Bern(q)) = p log(p/q) + (1-p) log((1-p)/(1-q))``

    computed with ``logsigmoid`` for stability.

    Args:
        student_logits: ``[B, C]`` (any shape; every element is one class).
        teacher_logits: same shape; detached.
        temperature: ``T > 0``.

    Returns:
        0-dim tensor: the KL **averaged over classes and batch**, times ``T^2``
        (so gradient magnitudes do not shrink with T, as in Hinton et al.).
    """
    name = "multilabel_kd"
    check_same_shape(name, student_logits, teacher_logits)
    check_positive(name, "temperature", temperature)
    s = student_logits / temperature
    t = teacher_logits.detach() / temperature
    p = torch.sigmoid(t)
    log_p, log_1mp = F.logsigmoid(t), F.logsigmoid(-t)
    log_q, log_1mq = F.logsigmoid(s), F.logsigmoid(-s)
    kl = p * (log_p - log_q) + (1.0 - p) * (log_1mp - log_1mq)
    return kl.mean() * temperature**2
