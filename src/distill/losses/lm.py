"""Token-level losses for causal LMs as recipe terms, on the ``final_hidden`` signal.

``final_hidden`` (see :mod:`distill.capture`) is a model's last hidden states together with its output head, so
these terms form logits chunk by chunk (:mod:`distill.losses.tokens`) and neither model's ``B x T x V`` logits
ever exist. Labels are the batch's next-token targets, already aligned with the positions by the LM data
(``distill.data.lm.next_token_targets``); ``-100`` marks unsupervised positions (prompts, padding).

``normalizer`` is filled in by the trainer with the supervised-token count of the whole accumulation window (all
processes), so batch 8 x accumulation 1 and batch 4 x accumulation 2 give the same gradients; ``vocab_size`` by
the run when teacher and student heads are padded to different sizes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.capture import FinalHidden, TopKTeacher
from distill.errors import DistillError
from distill.losses.registry import NonNegative, Positive, PositiveInt, UnitInterval, register_loss
from distill.losses.sampled import chunked_bucket_kd, chunked_sampled_kl
from distill.losses.tokens import (
    DIVERGENCES,
    Divergence,
    auto_chunk_size,
    chunked_token_ce,
    chunked_token_kd,
    chunked_token_kd_topk,
)


def _final_hidden(value: Any, role: str, loss: str) -> FinalHidden:
    if not isinstance(value, FinalHidden):
        raise DistillError(f"the {loss} loss reads the {role}'s final hidden states and output head: set the "
                           f"term's {role} signal to final_hidden (got a {type(value).__name__})")
    return value


def teacher_topk(teacher: FinalHidden, k: int, *, rows: Tensor | None = None, chunk_size: int | None = None,
                 vocab_size: int | None = None) -> TopKTeacher:
    """The teacher's k largest log-probabilities (temperature 1, decreasing), their ids and the log of the
    remaining mass, at the given flattened token ``rows`` (default: every token), chunk by chunk: only
    ``chunk_size x V`` float32 logits at a time. The tail is computed from the full distribution, not as
    ``1 - sum(top k)``, so it stays accurate when the top k are later stored in float16."""
    hidden = teacher.hidden.reshape(-1, teacher.hidden.shape[-1])
    if rows is not None:
        hidden = hidden.index_select(0, rows)
    weight = teacher.weight[:vocab_size] if vocab_size else teacher.weight
    bias = None if teacher.bias is None else (teacher.bias[:vocab_size] if vocab_size else teacher.bias)
    if not 0 < k <= weight.shape[0]:
        raise DistillError(f"token_kd: top_k={k} must be between 1 and the vocabulary size {weight.shape[0]}")
    chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
    values, ids, tails = [], [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_size):
            log_probs = F.log_softmax(F.linear(hidden[start:start + chunk_size], weight, bias).float(), dim=-1)
            top = log_probs.topk(k, dim=-1)
            values.append(top.values)
            ids.append(top.indices)
            tails.append(torch.logsumexp(log_probs.scatter(1, top.indices, -math.inf), dim=-1))
    if not values:
        empty = hidden.new_zeros((0, k), dtype=torch.float32)
        return TopKTeacher(empty, empty.long(), empty[:, 0])
    return TopKTeacher(torch.cat(values), torch.cat(ids), torch.cat(tails))


def truncate_topk(teacher: TopKTeacher, k: int) -> TopKTeacher:
    """The same teacher with only its k largest entries kept; the dropped ones join the tail."""
    if k == teacher.k:
        return teacher
    dropped = torch.logsumexp(teacher.logprobs[..., k:].float(), dim=-1)
    return TopKTeacher(teacher.logprobs[..., :k], teacher.ids[..., :k],
                       torch.logaddexp(teacher.log_tail.float(), dropped))


def _topk_kd(student: FinalHidden, teacher: TopKTeacher, labels: Tensor, *, temperature: float,
             chunk_size: int | None, normalizer: Any, vocab_size: int | None, hard_weight: float) -> Tensor:
    """Bucketed forward KL against a top-k teacher; student rows, teacher rows and labels aligned."""
    weight = student.weight[:vocab_size] if vocab_size else student.weight
    bias = None if student.bias is None else (student.bias[:vocab_size] if vocab_size else student.bias)
    try:
        return chunked_token_kd_topk(student.hidden, weight, teacher.logprobs, teacher.ids, labels,
                                     student_bias=bias, teacher_log_tail=teacher.log_tail, temperature=temperature,
                                     chunk_size=chunk_size, normalizer=normalizer, hard_weight=hard_weight)
    except ValueError as error:
        raise DistillError(f"token_kd: {error}") from None


@register_loss("token_kd", softens=True)
def token_kd(student_final: FinalHidden, teacher_final: FinalHidden | TopKTeacher, labels: Tensor, *,
             divergence: Divergence = "forward_kl", temperature: Positive = 1.0, beta: UnitInterval = 0.5,
             skew: UnitInterval = 0.1, top_k: PositiveInt | None = None, hard_weight: NonNegative = 0.0,
             chunk_size: PositiveInt | None = None, normalizer: Any = None, vocab_size: PositiveInt | None = None
             ) -> Tensor:
    """Token-level KD between next-token distributions, from hidden states and heads, chunk by chunk.

    ``divergence``: forward_kl (classic KD), reverse_kl, jsd (generalised JSD, ``beta`` = teacher weight, TRL's
    convention), skew_kl / skew_reverse_kl (DistiLLM, mixing weight ``skew``) or tv; softmax at ``temperature``,
    times ``temperature**2``. ``top_k``: compare with the teacher's k most likely tokens plus one bucket for its
    remaining mass (forward KL only; k = V is the dense loss). ``hard_weight``: add that many times the
    next-token cross-entropy, computed from the same student logits (KD + CE in one pass over the head; use it
    instead of a separate token_ce term for speed). Summed over supervised tokens, divided by ``normalizer``
    (default: their count). The teacher may be a cache's ``TopKTeacher`` (see :mod:`distill.cache`)."""
    if divergence not in DIVERGENCES:
        raise DistillError(f"token_kd: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    student = _final_hidden(student_final, "student", "token_kd")
    if isinstance(teacher_final, TopKTeacher):  # a teacher cache: its stored top k (see distill.cache)
        check_cached_topk(teacher_final.k, divergence, top_k)
        return _topk_kd(student, truncate_topk(teacher_final, top_k or teacher_final.k), labels,
                        temperature=temperature, chunk_size=chunk_size, normalizer=normalizer,
                        vocab_size=vocab_size, hard_weight=hard_weight)
    teacher = _final_hidden(teacher_final, "teacher", "token_kd")
    if top_k is None:
        try:
            return chunked_token_kd(student.hidden, student.weight, teacher.hidden, teacher.weight, labels,
                                    student_bias=student.bias, teacher_bias=teacher.bias, divergence=divergence,
                                    temperature=temperature, beta=beta, skew=skew, chunk_size=chunk_size,
                                    normalizer=normalizer, vocab_size=vocab_size, hard_weight=hard_weight)
        except ValueError as error:
            raise DistillError(f"token_kd: {error}") from None
    if divergence != "forward_kl":
        raise DistillError(f"token_kd: top_k works with divergence forward_kl only (got {divergence!r})")
    # the teacher's top k at the supervised rows only; student rows and labels are cut to the same rows
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    topk = teacher_topk(teacher, top_k, rows=rows, chunk_size=chunk_size, vocab_size=vocab_size)
    flat_student = FinalHidden(student.hidden.reshape(-1, student.hidden.shape[-1]).index_select(0, rows),
                               student.weight, student.bias)
    return _topk_kd(flat_student, topk, labels.reshape(-1).index_select(0, rows), temperature=temperature,
                    chunk_size=chunk_size, normalizer=normalizer, vocab_size=vocab_size, hard_weight=hard_weight)


def check_cached_topk(cached_k: int, divergence: str, top_k: int | None) -> None:
    """What a token_kd term may ask of a teacher stored as its top k: checked before training and at each call."""
    if divergence != "forward_kl":
        raise DistillError(f"token_kd: divergence {divergence!r} needs the teacher's full distribution, and a "
                           f"teacher cache stores only its top {cached_k} tokens per position; use divergence "
                           "forward_kl with a cache, or train this term with the live teacher")
    if top_k is not None and top_k > cached_k:
        raise DistillError(f"token_kd: top_k={top_k}, and the teacher cache holds only the top {cached_k} tokens per "
                           f"position; rebuild it with `distill cache build ... --top-k {top_k}` (or lower top_k)")


@register_loss("token_ce")
def token_ce(student_final: FinalHidden, labels: Tensor, *, chunk_size: PositiveInt | None = None,
             normalizer: Any = None) -> Tensor:
    """Next-token cross-entropy on the supervised tokens, from hidden states and head, chunk by chunk."""
    student = _final_hidden(student_final, "student", "token_ce")
    try:
        return chunked_token_ce(student.hidden, student.weight, labels, bias=student.bias, chunk_size=chunk_size,
                                normalizer=normalizer)
    except ValueError as error:
        raise DistillError(f"token_ce: {error}") from None


@register_loss("sampled_kl")
def sampled_kl(student_final: FinalHidden, teacher_final: FinalHidden | TopKTeacher, labels: Tensor, *,
               estimator: Literal["sampled", "topk"] = "sampled", divergence: Divergence = "reverse_kl",
               top_k: PositiveInt = 20, chunk_size: PositiveInt | None = None, normalizer: Any = None,
               vocab_size: PositiveInt | None = None) -> Tensor:
    """On-policy KD from a teacher's log-probabilities, as a server returns them (the teacher behind an endpoint;
    a live teacher is read the same way, so both give the same loss). ``estimator: sampled``: the per-token
    reverse-KL estimate ``log q(y) - log p(y)`` on the tokens the student sampled, with the policy-gradient
    gradient (Thinking Machines' on-policy distillation). ``estimator: topk``: ``divergence`` over the teacher's
    ``top_k`` tokens plus a tail bucket. Summed over supervised tokens, divided by ``normalizer``."""
    student = _final_hidden(student_final, "student", "sampled_kl")
    weight = student.weight[:vocab_size] if vocab_size else student.weight
    bias = None if student.bias is None else (student.bias[:vocab_size] if vocab_size else student.bias)
    if isinstance(teacher_final, FinalHidden):
        teacher_final = _scored(teacher_final, labels, top_k if estimator == "topk" else 0, chunk_size, vocab_size)
    elif not isinstance(teacher_final, TopKTeacher):
        raise DistillError(f"sampled_kl reads the teacher's final_hidden (a model or an endpoint), got a "
                           f"{type(teacher_final).__name__}")
    try:
        if estimator == "sampled":
            if teacher_final.token_logprobs is None:
                raise DistillError("sampled_kl: the teacher gave no log-probabilities of the sampled tokens")
            return chunked_sampled_kl(student.hidden, weight, teacher_final.token_logprobs, labels, student_bias=bias,
                                      chunk_size=chunk_size, normalizer=normalizer)
        if teacher_final.k < top_k:
            raise DistillError(f"sampled_kl: top_k={top_k}, and the teacher returned only {teacher_final.k} "
                               "log-probabilities per position; lower top_k, or ask the server for more")
        top = truncate_topk(teacher_final, top_k)
        return chunked_bucket_kd(student.hidden, weight, top.logprobs, top.ids, labels, divergence=divergence,
                                 teacher_log_tail=top.log_tail, student_bias=bias, chunk_size=chunk_size,
                                 normalizer=normalizer)
    except ValueError as error:
        raise DistillError(f"sampled_kl: {error}") from None


def _scored(teacher: FinalHidden, labels: Tensor, k: int, chunk_size: int | None, vocab_size: int | None
            ) -> TopKTeacher:
    """A live teacher as a server would describe it: each position's log-probability of its label and (k > 0)
    its top k, at the supervised positions (zeros elsewhere)."""
    flat = labels.reshape(-1)
    rows = (flat != -100).nonzero().squeeze(1)
    hidden = teacher.hidden.reshape(-1, teacher.hidden.shape[-1])
    weight = teacher.weight[:vocab_size] if vocab_size else teacher.weight
    bias = None if teacher.bias is None else (teacher.bias[:vocab_size] if vocab_size else teacher.bias)
    token = torch.zeros(flat.shape[0], dtype=torch.float32, device=hidden.device)
    chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
    with torch.no_grad():
        for start in range(0, rows.shape[0], chunk_size):
            chunk = rows[start:start + chunk_size]
            log_probs = F.log_softmax(F.linear(hidden.index_select(0, chunk), weight, bias).float(), dim=-1)
            token[chunk] = log_probs.gather(1, flat[chunk, None]).squeeze(1)
    shape = (*labels.shape, max(k, 1))
    values, ids, tail = (torch.zeros(shape, device=hidden.device), torch.zeros(shape, dtype=torch.long,
                         device=hidden.device), torch.zeros(labels.shape, device=hidden.device))
    if k:
        top = teacher_topk(teacher, k, rows=rows, chunk_size=chunk_size, vocab_size=vocab_size)
        values.view(-1, k)[rows], ids.view(-1, k)[rows], tail.view(-1)[rows] = top.logprobs, top.ids, top.log_tail
    return TopKTeacher(values, ids, tail, token.view(labels.shape))
