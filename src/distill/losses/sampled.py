"""Token-level KD against a teacher known only through log-probabilities (a server's ``logprobs``): the
sampled-token reverse-KL estimator, and divergences over the teacher's top-k tokens plus one tail bucket. Both
form the student's logits chunk by chunk from its hidden states and head (no ``N x V`` logits), like
:mod:`distill.losses.tokens`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.fused_linear import check_chunk_size, check_head, run_fused
from distill.losses.token_math import (
    Normalizer,
    check_options,
    compute_dtype,
    divergence_from_log_probs,
    flatten_hidden,
    resolve_normalizer,
    supervised_index,
)


def chunked_sampled_kl(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_token_logprobs: Tensor,
    labels: Tensor,
    *,
    student_bias: Optional[Tensor] = None,
    ignore_index: int = -100,
    chunk_size: Optional[int] = None,
    normalizer: Normalizer = None,
) -> Tensor:
    """The per-token reverse-KL estimate on tokens the student sampled (on-policy distillation, Thinking Machines
    2025; the policy gradient with advantage ``log p_teacher - log q_student`` per token and discount 0).

    For each supervised position with sampled token ``y``: ``log q(y) - log p(y)``, whose mean over the student's
    own samples estimates ``KL(q || p)``. The value is that estimate; the gradient is the estimator's,
    ``(log q(y) - log p(y)) * grad log q(y)`` (the advantage held constant), so minimising the loss lowers the
    reverse KL. On tokens the student did not sample (a dataset's) the value is not a KL and the gradient is not its
    gradient: use it on on-policy batches.

    Args:
        student_hidden: ``[N, H]`` or ``[B, T, H]`` final hidden states of the student.
        student_weight: ``[V, H]`` its output head.
        teacher_token_logprobs: ``[N]`` or ``[B, T]`` the teacher's log-probability of each position's label (the
            next token), at temperature 1; unsupervised positions are ignored. Constants.
        labels: ``[N]`` or ``[B, T]`` next-token targets; ``ignore_index`` marks unsupervised positions.
        normalizer: divisor of the summed estimates (``None``: the supervised count).

    Returns:
        0-d loss; gradients flow to the student inputs only.
    """
    chunk_size = check_chunk_size(chunk_size, student_weight.shape[0])
    hidden = flatten_hidden("student_hidden", student_hidden)
    check_head("student", hidden, student_weight, student_bias)
    teacher = teacher_token_logprobs.detach().reshape(-1).to(hidden.device)
    if teacher.shape[0] != hidden.shape[0]:
        raise ValueError(f"student_hidden has {hidden.shape[0]} tokens but teacher_token_logprobs has "
                         f"{teacher.shape[0]}")
    index = supervised_index(labels, hidden.shape[0], ignore_index, hidden.device)
    flat_labels = labels.reshape(-1).to(hidden.device)
    if index is not None:
        teacher, flat_labels = teacher.index_select(0, index), flat_labels.index_select(0, index)
    inv_norm = 1.0 / resolve_normalizer(normalizer, teacher.shape[0])
    cdt = compute_dtype(hidden.dtype, student_weight.dtype, teacher.dtype)

    def chunk_loss(start: int, end: int, student_logits: Tensor, need_grad: bool):
        with torch.no_grad():
            log_q = F.log_softmax(student_logits, dim=-1)
            targets = flat_labels[start:end, None]
            advantage = log_q.gather(1, targets).squeeze(1) - teacher[start:end].to(cdt)  # the rows' estimates
            if not need_grad:
                return advantage, None
            # d/dz [A * log q(y)] with A constant: A * (onehot(y) - q)
            grad = log_q.exp_().neg_().scatter_add_(1, targets, torch.ones_like(targets, dtype=cdt))
            return advantage, grad.mul_(advantage[:, None])

    return run_fused(hidden, student_weight, student_bias, index, chunk_loss, chunk_size, inv_norm)


def chunked_bucket_kd(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_topk_logprobs: Tensor,
    teacher_topk_ids: Tensor,
    labels: Tensor,
    *,
    divergence: str = "reverse_kl",
    teacher_log_tail: Optional[Tensor] = None,
    student_bias: Optional[Tensor] = None,
    beta: float = 0.5,
    skew: float = 0.1,
    ignore_index: int = -100,
    chunk_size: Optional[int] = None,
    normalizer: Normalizer = None,
) -> Tensor:
    """A divergence between teacher and student over ``k + 1`` buckets: the teacher's top-k tokens and one bucket
    for everything else (its mass ``1 - sum p_topk``, or ``teacher_log_tail`` when given). The student's
    distribution is bucketed the same way (its probabilities at the k ids; its remaining mass). Temperature 1.
    Any divergence of :func:`distill.losses.token_math.divergence_from_log_probs`; with ``k = V`` it is the dense
    one. What a teacher that returns top-k log-probabilities (a server) supports beyond sampled tokens.

    Shapes as in :func:`distill.losses.tokens.chunked_token_kd_topk`. Returns a 0-d loss.
    """
    check_options(divergence, 1.0, beta, skew)
    chunk_size = check_chunk_size(chunk_size, student_weight.shape[0])
    hidden = flatten_hidden("student_hidden", student_hidden)
    check_head("student", hidden, student_weight, student_bias)
    k = teacher_topk_ids.shape[-1]
    if not 0 < k <= student_weight.shape[0] or teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise ValueError(f"teacher top-k ids {tuple(teacher_topk_ids.shape)} and log-probs "
                         f"{tuple(teacher_topk_logprobs.shape)} must have one shape, k in [1, V]")
    top_lp = teacher_topk_logprobs.detach().reshape(-1, k).to(hidden.device)
    ids = teacher_topk_ids.reshape(-1, k).to(device=hidden.device, dtype=torch.long)
    tail = None if teacher_log_tail is None else teacher_log_tail.detach().reshape(-1).to(hidden.device)
    index = supervised_index(labels, hidden.shape[0], ignore_index, hidden.device)
    if index is not None:
        top_lp, ids = top_lp.index_select(0, index), ids.index_select(0, index)
        tail = None if tail is None else tail.index_select(0, index)
    inv_norm = 1.0 / resolve_normalizer(normalizer, top_lp.shape[0])
    cdt = compute_dtype(hidden.dtype, student_weight.dtype, top_lp.dtype)

    def chunk_loss(start: int, end: int, student_logits: Tensor, need_grad: bool):
        teacher = top_lp[start:end].to(cdt)
        if tail is not None:
            log_tail = tail[start:end].to(cdt)
        else:  # 1 - sum p, accurately; -inf when the top k hold all the mass
            log_tail = (-torch.expm1(torch.logsumexp(teacher, dim=-1))).clamp_min(0.0).log()
        log_p = torch.log_softmax(torch.cat([teacher, log_tail[:, None]], dim=1), dim=1)
        with torch.enable_grad():
            logits = student_logits.detach().requires_grad_(need_grad)
            log_q = F.log_softmax(logits, dim=-1)
            chunk_ids = ids[start:end]
            log_q_tail = torch.logsumexp(log_q.scatter(1, chunk_ids, -math.inf), dim=-1)
            log_q_buckets = torch.cat([log_q.gather(1, chunk_ids), log_q_tail[:, None]], dim=1)
            rows = divergence_from_log_probs(log_q_buckets, log_p, divergence, beta, skew)
            grad = torch.autograd.grad(rows.sum(), logits)[0] if need_grad else None
        return rows.detach(), grad

    return run_fused(hidden, student_weight, student_bias, index, chunk_loss, chunk_size, inv_norm)
