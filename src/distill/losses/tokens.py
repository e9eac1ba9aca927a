"""Token-level logit distillation for causal LMs without materialising full-vocabulary logits.

The losses here compare a student's and a teacher's next-token distributions at every supervised position.
For a batch of ``N`` tokens and a vocabulary of ``V`` entries the dense logits are ``N * V`` numbers (4096 tokens
x 152k vocabulary = 2.5 GB in float32, per model, plus as much again for every intermediate of the softmax and
its gradient). :func:`chunked_token_kd` never builds them: it takes each model's *final hidden states* and
*output-head weight* and walks over the tokens ``chunk_size`` at a time, so the largest temporaries are
``chunk_size x V``.

All functions are pure functions of tensors in the style of :mod:`torch.nn.functional`:

* :func:`token_divergence` - per-token divergence between two dense logit tensors (the definitions live here).
* :func:`dense_token_kd` - the reference reduction from materialised logits (tests, non-linear heads).
* :func:`chunked_token_kd` - the same value and gradients from hidden states + head weights, chunk by chunk.
* :func:`chunked_token_kd_topk` - forward KL against a teacher stored as top-k log-probabilities.

Conventions shared by all of them:

* Distributions are ``softmax(logits / temperature)``; every divergence is multiplied by ``temperature**2``
  (Hinton et al. 2015) so that gradient magnitudes do not shrink as the temperature grows.
* Math is done in float32 (or float64 when the inputs are float64); bf16/fp16 inputs are upcast after the
  matmul that produces the logits.
* Labels are *already aligned* with the hidden states: ``labels[i]`` is the target of the prediction made from
  ``hidden[i]`` (shift them before calling, as for a causal-LM cross entropy). Only ``labels == ignore_index``
  matters here; the label values themselves are not used.
* The reduction is ``sum of per-token divergence over supervised tokens / normalizer``. ``normalizer`` defaults
  to the number of supervised tokens in the call; pass the supervised-token count of the whole accumulated batch
  when doing gradient accumulation so that one big batch and several micro-batches give the same gradients.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.fused_linear import (
    auto_chunk_size,
    check_chunk_size,
    check_head,
    cross_entropy_rows,
    hard_label_targets,
    run_fused,
    supervised_targets,
    with_hard_labels,
)
from distill.losses.token_math import (
    DIVERGENCES,
    Divergence,
    Normalizer,
    check_options,
    compute_dtype,
    divergence_and_grad,
    divergence_from_log_probs,
    flatten_hidden,
    resolve_normalizer,
    supervised_index,
)

__all__ = [
    "DIVERGENCES",
    "Divergence",
    "auto_chunk_size",
    "token_divergence",
    "dense_token_kd",
    "chunked_token_kd",
    "chunked_token_kd_topk",
    "chunked_token_ce",
]


def token_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
) -> Tensor:
    """Per-token divergence between a student's and a teacher's next-token distributions.

    With ``p_s = softmax(student_logits / temperature)`` and ``p_t = softmax(teacher_logits / temperature)``:

    * ``forward_kl``: ``KL(p_t || p_s)`` (mode-covering; classic KD).
    * ``reverse_kl``: ``KL(p_s || p_t)`` (mode-seeking; MiniLLM-style).
    * ``jsd``: generalised Jensen-Shannon divergence with TRL's ``GKDTrainer.generalized_jsd_loss`` convention:
      ``m = beta * p_t + (1 - beta) * p_s`` and ``beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)`` - ``beta``
      weighs the *teacher* both in the mixture and in the outer sum. Like TRL, the end points are special-cased
      (where the general formula would be identically 0): ``beta = 0`` gives ``KL(p_t || p_s)`` (forward KL) and
      ``beta = 1`` gives ``KL(p_s || p_t)`` (reverse KL).
    * ``skew_kl``: skew forward KL of DistiLLM (Ko et al. 2024), ``KL(p_t || skew * p_t + (1 - skew) * p_s)``.
    * ``skew_reverse_kl``: ``KL(p_s || skew * p_s + (1 - skew) * p_t)``.
    * ``tv``: total variation distance ``0.5 * sum_v |p_t - p_s|``.

    The result is multiplied by ``temperature ** 2`` (Hinton's convention, which keeps gradient magnitudes
    comparable across temperatures). Terms with zero probability contribute 0 (``0 log 0 = 0``), so ``-inf``
    logits are allowed.

    Args:
        student_logits: ``[..., V]`` student logits (typically ``[N, V]``); any float dtype. Math is done in
            float32 (float64 if either input is float64).
        teacher_logits: ``[..., V]`` teacher logits, same shape. Not detached: gradients flow to it if it
            requires grad (the ``*_kd`` reductions treat the teacher as a constant).
        divergence: one of :data:`DIVERGENCES`.
        temperature: softmax temperature ``> 0`` applied to both distributions.
        beta: interpolation weight of the teacher for ``jsd``, in ``[0, 1]``; ignored otherwise.
        skew: mixing weight for ``skew_kl`` / ``skew_reverse_kl``, in ``[0, 1]``; ignored otherwise.

    Returns:
        ``[...]`` tensor (shape of the logits without the last dim) of non-negative divergences, in the compute
        dtype.
    """
    check_options(divergence, temperature, beta, skew)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape (slice padded vocabularies to a common size first)"
        )
    cdt = compute_dtype(student_logits.dtype, teacher_logits.dtype)
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.to(cdt) / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(cdt) / t, dim=-1)
    return divergence_from_log_probs(log_ps, log_pt, divergence, beta, skew) * (t * t)


def dense_token_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Optional[Tensor] = None,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    ignore_index: int = -100,
    normalizer: Normalizer = None,
) -> Tensor:
    """Token-level KD loss from materialised logits: the reference for :func:`chunked_token_kd`.

    Use it in tests and for models whose output head is not a plain linear layer (soft-capping, tied heads with
    scaling, ...). Same reduction as :func:`chunked_token_kd`: the sum of :func:`token_divergence` over
    supervised tokens divided by ``normalizer``.

    Args:
        student_logits: ``[N, V]`` or ``[B, T, V]`` student logits (flattened to ``[N, V]``).
        teacher_logits: teacher logits of the same shape; treated as a constant (detached).
        labels: ``[N]`` or ``[B, T]`` labels aligned with the logits (already shifted); tokens equal to
            ``ignore_index`` are not supervised. ``None`` supervises every token.
        divergence: one of :data:`DIVERGENCES` (see :func:`token_divergence`).
        temperature: softmax temperature ``> 0``; the loss is multiplied by ``temperature ** 2``.
        beta: teacher weight for ``jsd``.
        skew: mixing weight for the skew divergences.
        ignore_index: label value marking unsupervised tokens.
        normalizer: divisor of the summed divergence. ``None`` = the number of supervised tokens in this call
            (at least 1). For gradient accumulation pass the supervised-token count of the whole accumulated
            batch. An int, float or 0-d tensor.

    Returns:
        0-d loss tensor (float32, or float64 for float64 inputs).
    """
    check_options(divergence, temperature, beta, skew)
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v)
    t = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    rows = token_divergence(s, t, divergence=divergence, temperature=temperature, beta=beta, skew=skew)
    index = supervised_index(labels, s.shape[0], ignore_index, s.device)
    if index is not None:
        rows = rows.index_select(0, index)
    return rows.sum() / resolve_normalizer(normalizer, rows.shape[0])


def chunked_token_kd(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_hidden: Tensor,
    teacher_weight: Tensor,
    labels: Optional[Tensor] = None,
    *,
    student_bias: Optional[Tensor] = None,
    teacher_bias: Optional[Tensor] = None,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    skew: float = 0.1,
    ignore_index: int = -100,
    chunk_size: Optional[int] = None,
    normalizer: Normalizer = None,
    vocab_size: Optional[int] = None,
    hard_weight: float = 0.0,
) -> Tensor:
    """Token-level KD loss from final hidden states and output heads, never materialising ``N x V`` logits.

    Equal in value and gradients to ``dense_token_kd(student_hidden @ student_weight.T + student_bias,
    teacher_hidden @ teacher_weight.T + teacher_bias, labels, ...)``, but tokens are processed ``chunk_size`` at a
    time: for each chunk both models' logits are formed, the divergence and its gradient w.r.t. the student
    logits are computed and immediately folded into the gradients of ``student_hidden`` / ``student_weight`` /
    ``student_bias`` (Liger-style). Peak extra memory is ``O(chunk_size * V)`` plus buffers the size of the
    student's hidden states and head. Unsupervised tokens are skipped entirely (no matmul, no softmax).

    Args:
        student_hidden: ``[N, Hs]`` or ``[B, T, Hs]`` (flattened) final hidden states of the student, i.e. the
            input of its output head (after the final norm).
        student_weight: ``[Vs, Hs]`` student output-head (``lm_head``) weight.
        teacher_hidden: ``[N, Ht]`` or ``[B, T, Ht]`` teacher final hidden states; same number of tokens.
        teacher_weight: ``[Vt, Ht]`` teacher output-head weight.
        labels: ``[N]`` or ``[B, T]`` labels aligned with the hidden states (already shifted); tokens with
            ``label == ignore_index`` are not supervised. ``None`` supervises every token.
        student_bias: optional ``[Vs]`` student head bias (receives a gradient).
        teacher_bias: optional ``[Vt]`` teacher head bias.
        divergence: one of :data:`DIVERGENCES` (see :func:`token_divergence`).
        temperature: softmax temperature ``> 0``; the loss is multiplied by ``temperature ** 2``.
        beta: teacher weight for ``jsd`` (TRL convention).
        skew: mixing weight for ``skew_kl`` / ``skew_reverse_kl``.
        ignore_index: label value marking unsupervised tokens.
        chunk_size: number of tokens per chunk; larger is faster, smaller uses less memory. None: chosen
            from V by :func:`auto_chunk_size` (a chunk's logits near 2**23 values).
        normalizer: divisor of the summed divergence. ``None`` = the number of supervised tokens in this call (at
            least 1, so a call without supervised tokens returns 0). With gradient accumulation pass the
            supervised-token count of the whole accumulated batch, so that batch 8 x accumulation 1 gives the
            same gradients as batch 4 x accumulation 2. An int, float or 0-d tensor.
        vocab_size: if given, both heads (and biases) are sliced to their first ``vocab_size`` rows before the
            softmax - this reconciles vocabularies padded to different sizes (e.g. 151,936 vs 152,064) that share
            the real tokens. If ``None`` the two head sizes must be equal.
        hard_weight: adds ``hard_weight`` x next-token cross-entropy (temperature 1, on the labels, over the same
            vocabulary) computed from the same student logits chunk, with the same normalizer: KD + CE in one
            pass over the student's head instead of two.

    Returns:
        0-d loss tensor (float32, or float64 for float64 inputs). Gradients flow to ``student_hidden``,
        ``student_weight`` and ``student_bias``; the teacher inputs are constants (they never receive a gradient,
        even if they require one). Double backward is not supported.

    Raises:
        ValueError: on mismatched shapes, on ``Vs != Vt`` without ``vocab_size`` (the message names both sizes),
            or on a ``vocab_size`` larger than either head.
    """
    check_options(divergence, temperature, beta, skew)
    chunk_size = check_chunk_size(chunk_size, student_weight.shape[0])
    sh = flatten_hidden("student_hidden", student_hidden)
    th = flatten_hidden("teacher_hidden", teacher_hidden).detach()
    tw = teacher_weight.detach()
    tb = teacher_bias.detach() if teacher_bias is not None else None
    check_head("student", sh, student_weight, student_bias)
    check_head("teacher", th, tw, tb)
    if sh.shape[0] != th.shape[0]:
        raise ValueError(f"student_hidden has {sh.shape[0]} tokens but teacher_hidden has {th.shape[0]}")
    vs, vt = student_weight.shape[0], tw.shape[0]
    sw, sb = student_weight, student_bias
    if vocab_size is None:
        if vs != vt:
            raise ValueError(
                f"student vocabulary size {vs} != teacher vocabulary size {vt}; pass vocab_size= to compare the "
                "first vocab_size logits of both (e.g. when one vocabulary is padded)"
            )
    else:
        if not 0 < vocab_size <= min(vs, vt):
            raise ValueError(
                f"vocab_size={vocab_size} must be in [1, min(student {vs}, teacher {vt})]"
            )
        # slicing is differentiable: rows of student_weight beyond vocab_size get a zero gradient
        sw, tw = sw[:vocab_size], tw[:vocab_size]
        sb = sb[:vocab_size] if sb is not None else None
        tb = tb[:vocab_size] if tb is not None else None

    index = supervised_index(labels, sh.shape[0], ignore_index, sh.device)
    if index is not None:
        th = th.index_select(0, index)
    n_sup = th.shape[0]
    targets = hard_label_targets(labels, index, n_sup, sw.shape[0], hard_weight)
    inv_norm = 1.0 / resolve_normalizer(normalizer, n_sup)
    cdt = compute_dtype(sh.dtype, sw.dtype, th.dtype, tw.dtype)

    def chunk_loss(start: int, end: int, student_logits: Tensor, need_grad: bool):
        with torch.no_grad():
            teacher_logits = F.linear(th[start:end], tw, tb).to(cdt)
        return divergence_and_grad(
            student_logits.to(cdt), teacher_logits, divergence, temperature, beta, skew, need_grad
        )

    return run_fused(sh, sw, sb, index, with_hard_labels(chunk_loss, targets, hard_weight), chunk_size, inv_norm)


def chunked_token_kd_topk(
    student_hidden: Tensor,
    student_weight: Tensor,
    teacher_topk_logprobs: Tensor,
    teacher_topk_ids: Tensor,
    labels: Optional[Tensor] = None,
    *,
    student_bias: Optional[Tensor] = None,
    teacher_log_tail: Optional[Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    chunk_size: Optional[int] = None,
    normalizer: Normalizer = None,
    hard_weight: float = 0.0,
) -> Tensor:
    """Forward KL against a teacher stored only as its top-k log-probabilities (offline / cached teachers).

    The teacher is reconstructed as ``k + 1`` buckets: its ``k`` stored probabilities at their token ids and a
    tail bucket with the remaining mass ``p_tail = 1 - sum(exp(topk_logprobs))``. The student's distribution
    ``q = softmax(student_logits / temperature)`` is bucketed the same way (its ``k`` probabilities at the ids,
    and ``q_tail`` = its total probability of every other token), and the loss per token is the bucket KL::

        sum_{i in top-k} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail)      (0 log 0 = 0)

    times ``temperature ** 2``, reduced like :func:`chunked_token_kd`. With ``k = V`` the tail is empty and the
    result equals the dense ``forward_kl`` exactly; with ``k < V`` it is a lower bound of the dense forward KL
    (bucketing can only lose information) that does not push the student to match the shape of the teacher's
    tail, only its mass.

    Temperature: the student logits are divided by ``temperature`` as usual. The teacher's stored log-probs are
    at temperature 1, and its tail tokens are unknown, so the tempered teacher is *approximated* by
    re-normalising ``[topk_logprobs, log(p_tail)] / temperature`` over the ``k + 1`` buckets, i.e. the tail is
    tempered as if it were one token of probability ``p_tail``. This is exact at ``temperature = 1`` (and for any
    temperature when ``k = V``); for ``k < V`` and ``temperature > 1`` it gives the tail less mass than the true
    tempered teacher would (the true tail is spread over many tokens, each of which gains relative mass).

    Args:
        student_hidden: ``[N, H]`` or ``[B, T, H]`` (flattened) final hidden states of the student.
        student_weight: ``[V, H]`` student output-head weight.
        teacher_topk_logprobs: ``[N, k]`` or ``[B, T, k]`` teacher log-probabilities (log-softmax at temperature
            1, as stored) of its ``k`` most likely tokens. Order does not matter. Treated as constants.
        teacher_topk_ids: ``[N, k]`` or ``[B, T, k]`` integer vocabulary ids of those tokens (distinct per
            token, ``< V``).
        labels: ``[N]`` or ``[B, T]`` labels aligned with the hidden states; ``ignore_index`` tokens are not
            supervised. ``None`` supervises every token.
        student_bias: optional ``[V]`` student head bias.
        teacher_log_tail: optional ``[N]`` or ``[B, T]`` log of the teacher's mass outside its top k, as stored by
            a teacher cache (computed there in float32 from the full distribution). ``None`` derives it from the
            top-k log-probs, which is as accurate only when they are float32.
        temperature: softmax temperature ``> 0`` (see above); the loss is multiplied by ``temperature ** 2``.
        ignore_index: label value marking unsupervised tokens.
        chunk_size: number of tokens per chunk.
        normalizer: divisor of the summed divergence; ``None`` = number of supervised tokens in this call (at
            least 1). See :func:`chunked_token_kd`.
        hard_weight: adds ``hard_weight`` x next-token cross-entropy on ``labels`` from the same student logits
            (see :func:`chunked_token_kd`).

    Returns:
        0-d loss tensor (float32, or float64 for float64 inputs); gradients flow to the student inputs only.
    """
    check_options("forward_kl", temperature, 0.5, 0.1)
    chunk_size = check_chunk_size(chunk_size, student_weight.shape[0])
    sh = flatten_hidden("student_hidden", student_hidden)
    check_head("student", sh, student_weight, student_bias)
    v = student_weight.shape[0]
    if teacher_topk_logprobs.shape != teacher_topk_ids.shape:
        raise ValueError(
            f"teacher_topk_logprobs {tuple(teacher_topk_logprobs.shape)} and teacher_topk_ids "
            f"{tuple(teacher_topk_ids.shape)} must have the same shape"
        )
    if teacher_topk_ids.dtype.is_floating_point or teacher_topk_ids.dtype == torch.bool:
        raise ValueError(f"teacher_topk_ids must be an integer tensor, got {teacher_topk_ids.dtype}")
    k = teacher_topk_ids.shape[-1]
    if not 0 < k <= v:
        raise ValueError(f"top-k size {k} must be in [1, V={v}]")
    lp = teacher_topk_logprobs.detach().reshape(-1, k)
    ids = teacher_topk_ids.reshape(-1, k).to(device=sh.device, dtype=torch.long)
    if lp.shape[0] != sh.shape[0]:
        raise ValueError(f"student_hidden has {sh.shape[0]} tokens but the teacher top-k has {lp.shape[0]}")
    stored_tail = None
    if teacher_log_tail is not None:
        stored_tail = teacher_log_tail.detach().reshape(-1).to(sh.device)
        if stored_tail.shape[0] != lp.shape[0]:
            raise ValueError(f"teacher_log_tail has {stored_tail.shape[0]} tokens but the teacher top-k has "
                             f"{lp.shape[0]}")

    index = supervised_index(labels, sh.shape[0], ignore_index, sh.device)
    if index is not None:
        lp, ids = lp.index_select(0, index), ids.index_select(0, index)
        stored_tail = None if stored_tail is None else stored_tail.index_select(0, index)
    inv_norm = 1.0 / resolve_normalizer(normalizer, lp.shape[0])
    targets = hard_label_targets(labels, index, lp.shape[0], v, hard_weight)
    cdt = compute_dtype(sh.dtype, student_weight.dtype, lp.dtype)
    t = float(temperature)
    has_tail = k < v

    def chunk_loss(start: int, end: int, student_logits: Tensor, need_grad: bool):
        with torch.no_grad():
            top_lp = lp[start:end].to(cdt)
            top_ids = ids[start:end]
            # teacher buckets: k stored log-probs + log of the tail mass, tempered and re-normalised
            if has_tail and stored_tail is not None:
                log_tail = stored_tail[start:end].to(cdt)
            elif has_tail:
                tail = (-torch.expm1(torch.logsumexp(top_lp, dim=-1))).clamp_min(0.0)  # 1 - sum p, accurately
                log_tail = tail.log()  # -inf when the top-k already hold all the mass
            else:
                log_tail = torch.full(top_lp.shape[:1], -math.inf, dtype=cdt, device=top_lp.device)
            log_p = F.log_softmax(torch.cat([top_lp, log_tail.unsqueeze(1)], dim=1) / t, dim=1)  # [C, k+1]
            p = log_p.exp()
            # student buckets
            log_q = F.log_softmax(student_logits / t, dim=-1)  # [C, V]
            log_q_top = log_q.gather(1, top_ids)
            if has_tail:
                log_q_tail = torch.logsumexp(log_q.scatter(1, top_ids, -math.inf), dim=-1)
            else:
                log_q_tail = torch.full_like(log_tail, -math.inf)
            log_q_b = torch.cat([log_q_top, log_q_tail.unsqueeze(1)], dim=1)
            zero = torch.zeros((), dtype=cdt, device=p.device)
            rows = torch.where(p > 0, p * (log_p - log_q_b), zero).sum(-1) * (t * t)
            if not need_grad:
                return rows, None
            # d/du_j of -sum_b p_b log q_b (u = logits / T): q_j - p_j for top-k tokens,
            # q_j * (1 - p_tail / q_tail) for tail tokens; times T^2 / T for the logits.
            q = log_q.exp()
            p_tail = p[:, k]
            ratio = torch.where(p_tail > 0, (log_p[:, k] - log_q_tail).exp(), zero)
            grad = q * (1.0 - ratio).unsqueeze(1)
            grad.scatter_(1, top_ids, q.gather(1, top_ids) - p[:, :k])
            return rows, grad * t

    return run_fused(sh, student_weight, student_bias, index, with_hard_labels(chunk_loss, targets, hard_weight),
                      chunk_size, inv_norm)


def chunked_token_ce(
    hidden: Tensor,
    weight: Tensor,
    labels: Tensor,
    *,
    bias: Optional[Tensor] = None,
    ignore_index: int = -100,
    chunk_size: Optional[int] = None,
    normalizer: Normalizer = None,
) -> Tensor:
    """Next-token cross-entropy from final hidden states and the output head, chunk by chunk (the fused linear
    cross-entropy of Liger): equal in value and gradients to ``F.cross_entropy(hidden @ weight.T + bias, labels,
    reduction="sum") / normalizer`` without the ``N x V`` logits.

    Args:
        hidden: ``[N, H]`` or ``[B, T, H]`` final hidden states (flattened).
        weight: ``[V, H]`` output-head weight; ``bias`` an optional ``[V]`` bias.
        labels: ``[N]`` or ``[B, T]`` target ids aligned with the hidden states (already shifted);
            ``ignore_index`` marks unsupervised tokens.
        chunk_size: tokens per chunk.
        normalizer: divisor of the summed loss; ``None`` = supervised tokens in this call (at least 1). With
            gradient accumulation pass the supervised-token count of the whole accumulated batch.

    Returns:
        0-d loss tensor (float32, or float64 for float64 inputs).
    """
    chunk_size = check_chunk_size(chunk_size, weight.shape[0])
    flat_hidden = flatten_hidden("hidden", hidden)
    check_head("student", flat_hidden, weight, bias)
    index = supervised_index(labels, flat_hidden.shape[0], ignore_index, flat_hidden.device)
    targets = supervised_targets(labels.to(flat_hidden.device), index, weight.shape[0], ignore_index)
    inv_norm = 1.0 / resolve_normalizer(normalizer, targets.numel())

    def chunk_loss(start: int, end: int, logits: Tensor, need_grad: bool):
        return cross_entropy_rows(logits, targets[start:end].unsqueeze(1), need_grad)

    return run_fused(flat_hidden, weight, bias, index, chunk_loss, chunk_size, inv_norm)
