"""Relation- and distribution-level distillation losses.

Same conventions as :mod:`distill.losses.features`: pure functions, student
tensor first, teacher tensor second (detached inside), keyword-only options,
0-dim tensor out, :class:`ValueError` naming both shapes when they are
incompatible.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

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
from distill.losses.registry import Positive, PositiveInt, register_loss

__all__ = [
    "rkd_distance",
    "rkd_angle",
    "crd_in_batch",
    "minilm_attention_kl",
    "minilm_value_relation",
    "attention_map_loss",
]

_EPS = 1e-12


# --------------------------------------------------------------------------- RKD


def _check_embeddings(name: str, student: Tensor, teacher: Tensor, *, same_dim: bool) -> None:
    check_ndim(name, student, teacher, 2, "[N, D]")
    if student.shape[0] != teacher.shape[0]:
        raise shapes_error(name, student, teacher, "batch sizes must match")
    if same_dim and student.shape[1] != teacher.shape[1]:
        raise shapes_error(name, student, teacher, "embedding dimensions must match")


def _normalised_pairwise_distances(e: Tensor) -> Tensor:
    n = e.shape[0]
    sq = (e.unsqueeze(0) - e.unsqueeze(1)).pow(2).sum(dim=-1)
    off_diag = ~torch.eye(n, dtype=torch.bool, device=e.device)
    # the clamp keeps sqrt differentiable on the (zero) diagonal
    d = torch.where(off_diag, sq.clamp_min(_EPS).sqrt(), torch.zeros_like(sq))
    return d / d[off_diag].mean().clamp_min(_EPS)


@register_loss("rkd_distance")
def rkd_distance(student_embeddings: Tensor, teacher_embeddings: Tensor) -> Tensor:
    """Distance-wise relational KD, RKD-D (Park et al., 2019, "Relational
    Knowledge Distillation").

    For each model, the ``[N, N]`` matrix of pairwise Euclidean distances is
    divided by its mean over the off-diagonal pairs (``i != j``); the loss is the
    Huber loss (``smooth_l1``, threshold 1) between the two matrices.

    Reduction: as in the authors' code (``F.smooth_l1_loss(d, t_d)`` on the full
    matrices), the **mean over all N*N entries**; the diagonal entries are 0 for
    both models and contribute 0, so this is ``(N-1)/N`` times the mean over
    off-diagonal pairs. The paper's weight (25 in the reference) is left to the
    caller.

    Args:
        student_embeddings: ``[N, D_s]`` with ``N >= 2``.
        teacher_embeddings: ``[N, D_t]``; dimensions may differ; detached.

    Returns:
        0-dim tensor.
    """
    name = "rkd_distance"
    _check_embeddings(name, student_embeddings, teacher_embeddings, same_dim=False)
    if student_embeddings.shape[0] < 2:
        raise shapes_error(name, student_embeddings, teacher_embeddings, "need N >= 2 samples")
    d_s = _normalised_pairwise_distances(student_embeddings)
    d_t = _normalised_pairwise_distances(teacher_embeddings.detach())
    return F.smooth_l1_loss(d_s, d_t, reduction="mean", beta=1.0)


def _triplet_angles(e: Tensor) -> Tensor:
    # diff[i, j] = e[j] - e[i];  angles[i, j, k] = <unit(e_j - e_i), unit(e_k - e_i)>
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


@register_loss("rkd_angle")
def rkd_angle(student_embeddings: Tensor, teacher_embeddings: Tensor) -> Tensor:
    """Angle-wise relational KD, RKD-A (Park et al., 2019, "Relational
    Knowledge Distillation").

    For every triplet ``(i, j, k)`` the cosine of the angle at vertex ``i``,
    ``<unit(e_j - e_i), unit(e_k - e_i)>``, giving an ``[N, N, N]`` tensor per
    model; the loss is the Huber loss (``smooth_l1``, threshold 1) between them.

    Reduction: as in the authors' code, the **mean over all N^3 triplets**,
    including degenerate ones (``j == i`` or ``k == i`` give 0, ``j == k`` gives 1,
    for both models, so they add 0 to the sum but count in the denominator).
    The paper's weight (50 in the reference) is left to the caller.

    Args:
        student_embeddings: ``[N, D_s]``.
        teacher_embeddings: ``[N, D_t]``; dimensions may differ; detached.

    Returns:
        0-dim tensor.
    """
    name = "rkd_angle"
    _check_embeddings(name, student_embeddings, teacher_embeddings, same_dim=False)
    a_s = _triplet_angles(student_embeddings)
    a_t = _triplet_angles(teacher_embeddings.detach())
    return F.smooth_l1_loss(a_s, a_t, reduction="mean", beta=1.0)


# --------------------------------------------------------------------------- CRD


@register_loss("crd")
def crd_in_batch(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    *,
    temperature: Positive = 0.07,
    symmetric: bool = False,
) -> Tensor:
    """Contrastive representation distillation with in-batch negatives
    (after Tian et al., 2020, "Contrastive Representation Distillation", with an
    InfoNCE objective over the batch instead of CRD's memory bank).

    Both embeddings are L2-normalised; ``logits = s @ t.T / temperature``
    (``[N, N]``); sample ``i``'s positive is teacher embedding ``i`` and the
    other ``N - 1`` teacher embeddings are its negatives; the loss is the
    cross-entropy with the diagonal as targets, averaged over the batch.

    Args:
        student_embeddings: ``[N, D]`` (project to the teacher's dimension first).
        teacher_embeddings: ``[N, D]``; detached.
        temperature: softmax temperature ``> 0``.
        symmetric: if true, average the student->teacher loss with the
            teacher->student one (cross-entropy over ``logits.T``).

    Returns:
        0-dim tensor.
    """
    name = "crd_in_batch"
    _check_embeddings(name, student_embeddings, teacher_embeddings, same_dim=True)
    check_positive(name, "temperature", temperature)
    s = F.normalize(student_embeddings, p=2, dim=1)
    t = F.normalize(teacher_embeddings.detach(), p=2, dim=1)
    logits = s @ t.t() / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, targets)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), targets))
    return loss


@register_loss("similarity_kl")
def similarity_kl(
    student_embeddings: Tensor,
    teacher_embeddings: Tensor,
    *,
    temperature: Positive = 0.05,
) -> Tensor:
    """Neighbour-distribution distillation with in-batch anchors (after SEED, Fang et al., 2021, and CompRess,
    Abbasi Koohpayegani et al., 2020, which use a queue of teacher embeddings as anchors).

    Each sample's similarities to the *other* samples' teacher embeddings, as a softmax over the batch, must match
    the teacher's own: ``p_teacher[i] = softmax_j(t_i . t_j / T)`` and ``p_student[i] = softmax_j(s_i . t_j / T)``
    over ``j != i`` (the self-similarity would dominate and turn this into instance discrimination, CRD). A small
    temperature puts the weight on each sample's nearest neighbours, i.e. on what a retrieval ranking depends on,
    not on the direction all embeddings share.

    Args:
        student_embeddings: ``[N, D]`` (project to the teacher's dimension first), ``N >= 2``.
        teacher_embeddings: ``[N, D]``; detached. Both are L2-normalised here.
        temperature: softmax temperature ``> 0``.

    Returns:
        0-dim tensor: ``KL(p_teacher || p_student)`` averaged over the N rows.
    """
    name = "similarity_kl"
    _check_embeddings(name, student_embeddings, teacher_embeddings, same_dim=True)
    check_positive(name, "temperature", temperature)
    if student_embeddings.shape[0] < 2:
        raise ValueError(f"{name}: needs at least 2 samples in the batch, got {student_embeddings.shape[0]}")
    s = F.normalize(student_embeddings, p=2, dim=1)
    t = F.normalize(teacher_embeddings.detach(), p=2, dim=1)
    others = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    rows = s.shape[0]
    teacher_logits = (t @ t.t() / temperature)[others].view(rows, rows - 1)
    student_logits = (s @ t.t() / temperature)[others].view(rows, rows - 1)
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1), log_target=True,
                    reduction="batchmean")


# --------------------------------------------------------------------------- MiniLM / attention


def _kl_rows(student_probs: Tensor, teacher_probs: Tensor, eps: float) -> Tensor:
    """KL(teacher || student) summed over the last axis; both clamped at eps."""
    t = teacher_probs
    return (t * (t.clamp_min(eps).log() - student_probs.clamp_min(eps).log())).sum(dim=-1)


def _masked_query_mean(kl: Tensor, mask: Optional[Tensor]) -> Tensor:
    """kl: [B, H, T]; mask: [B, T] or None. Mean over all valid (b, h, query)."""
    if mask is None:
        return kl.mean()
    weights = mask.to(dtype=kl.dtype).unsqueeze(1).expand_as(kl)
    return (kl * weights).sum() / weights.sum().clamp_min(1.0)


@register_loss("minilm_attention", query_mask=True)
def minilm_attention_kl(
    student_attention: Tensor,
    teacher_attention: Tensor,
    *,
    mask: Optional[Tensor] = None,
    eps: Positive = 1e-12,
) -> Tensor:
    """Self-attention distribution transfer of MiniLM (Wang et al., 2020,
    "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of
    Pre-Trained Transformers"), ``L_AT``.

    ``KL(A_t || A_s)`` between the attention distributions of each head and
    query position, summed over the key axis.

    Reduction: **mean over batch, heads and (valid) query positions**, counted
    as tokens across the whole batch: ``sum_{b,h,q valid} KL / (H * #valid (b, q))``.
    Without a mask this is the plain mean over ``B * H * T`` rows (the paper's
    ``1 / (A_h |x|)`` per example, averaged over the batch).

    Args:
        student_attention: ``[B, H, T, T]`` probabilities (softmaxed over the
            last axis), e.g. one entry of HF ``output_attentions``.
        teacher_attention: same shape (heads must match); detached.
        mask: optional ``[B, T]`` boolean/0-1 mask of valid query positions
            (e.g. the attention mask). Padded keys are expected to carry zero
            probability already.
        eps: probabilities are clamped to ``>= eps`` before ``log``.

    Returns:
        0-dim tensor.
    """
    name = "minilm_attention_kl"
    check_ndim(name, student_attention, teacher_attention, 4, "[B, heads, T, T]")
    check_same_shape(name, student_attention, teacher_attention)
    if mask is not None:
        b, _, q, _ = student_attention.shape
        check_mask(name, mask, (b, q), "[B, T] of the attention")
    kl = _kl_rows(student_attention, teacher_attention.detach(), eps)
    return _masked_query_mean(kl, mask)


def _value_relation(values: Tensor, num_heads: int, key_mask: Optional[Tensor]) -> Tensor:
    b, t, d = values.shape
    d_head = d // num_heads
    v = values.reshape(b, t, num_heads, d_head).transpose(1, 2)  # [B, R, T, d_head]
    scores = v @ v.transpose(-1, -2) / math.sqrt(d_head)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.softmax(scores, dim=-1)


@register_loss("minilm_value_relation", query_mask=True)
def minilm_value_relation(
    student_values: Tensor,
    teacher_values: Tensor,
    *,
    num_relation_heads: PositiveInt,
    mask: Optional[Tensor] = None,
    eps: Positive = 1e-12,
) -> Tensor:
    """Value-relation transfer of MiniLM (Wang et al., 2020), ``L_VR``.

    The values ``V`` (``[B, T, D]``) of each model are split into
    ``num_relation_heads`` heads of size ``d = D / num_relation_heads``; the
    relation per head is ``softmax(V_h V_h^T / sqrt(d))`` (``[B, R, T, T]``).
    Because the relation is ``T x T``, ``D`` may differ between the models.
    The loss is ``KL(teacher || student)`` summed over keys and reduced exactly
    like :func:`minilm_attention_kl`.

    Args:
        student_values: ``[B, T, D_s]``, ``D_s`` divisible by ``num_relation_heads``.
        teacher_values: ``[B, T, D_t]``, ``D_t`` divisible by ``num_relation_heads``;
            detached.
        num_relation_heads: number of relation heads (positive int).
        mask: optional ``[B, T]`` boolean/0-1 attention mask; padded positions
            are excluded both as keys (masked before the softmax) and as
            queries (left out of the mean).
        eps: probabilities are clamped to ``>= eps`` before ``log``.

    Returns:
        0-dim tensor.
    """
    name = "minilm_value_relation"
    check_ndim(name, student_values, teacher_values, 3, "[B, T, D]")
    if student_values.shape[:2] != teacher_values.shape[:2]:
        raise shapes_error(name, student_values, teacher_values, "batch and sequence lengths must match")
    if isinstance(num_relation_heads, bool) or not isinstance(num_relation_heads, int) or num_relation_heads < 1:
        raise ValueError(f"{name}: num_relation_heads must be a positive int, got {num_relation_heads!r}")
    for who, x in (("student", student_values), ("teacher", teacher_values)):
        if x.shape[2] % num_relation_heads:
            raise shapes_error(
                name, student_values, teacher_values,
                f"{who} hidden size {x.shape[2]} is not divisible by num_relation_heads={num_relation_heads}",
            )
    key_mask = None
    if mask is not None:
        check_mask(name, mask, tuple(student_values.shape[:2]), "[B, T] of the values")
        key_mask = mask.bool()
    r_s = _value_relation(student_values, num_relation_heads, key_mask)
    r_t = _value_relation(teacher_values.detach(), num_relation_heads, key_mask)
    return _masked_query_mean(_kl_rows(r_s, r_t, eps), mask)


@register_loss("attention_map")
def attention_map_loss(
    student_attention: Tensor,
    teacher_attention: Tensor,
    *,
    kind: Literal["mse", "kl"] = "mse",
    eps: Positive = 1e-12,
) -> Tensor:
    """Attention-map matching for HF ``output_attentions`` tensors, as in
    TinyBERT (Jiao et al., 2020; ``kind="mse"``) or MiniLM (Wang et al., 2020;
    ``kind="kl"``).

    Args:
        student_attention: ``[B, H, T, T]`` attention probabilities.
        teacher_attention: same shape (heads must match); detached.
        kind: ``"mse"`` — squared error **averaged over all elements**
            (TinyBERT's ``MSE(A_s, A_t)``); ``"kl"`` — ``KL(A_t || A_s)`` summed
            over keys and **averaged over batch, heads and queries** (equals
            :func:`minilm_attention_kl` without a mask).
        eps: clamp for ``log`` in the ``"kl"`` case.

    Returns:
        0-dim tensor.
    """
    name = "attention_map_loss"
    check_kind(name, kind, ("mse", "kl"))
    check_ndim(name, student_attention, teacher_attention, 4, "[B, heads, T, T]")
    check_same_shape(name, student_attention, teacher_attention)
    teacher = teacher_attention.detach()
    if kind == "mse":
        return F.mse_loss(student_attention, teacher, reduction="mean")
    return _kl_rows(student_attention, teacher, eps).mean()
