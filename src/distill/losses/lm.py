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

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.capture import FinalHidden
from distill.errors import DistillError
from distill.losses.tokens import (DIVERGENCES, auto_chunk_size, chunked_token_ce, chunked_token_kd,
                                   chunked_token_kd_topk)


def _final_hidden(value: Any, role: str, loss: str) -> FinalHidden:
    if not isinstance(value, FinalHidden):
        raise DistillError(f"the {loss} loss reads the {role}'s final hidden states and output head: set the "
                           f"term's {role} signal to final_hidden (got a {type(value).__name__})")
    return value


def _teacher_topk(teacher: FinalHidden, rows: Tensor, k: int, chunk_size: int, vocab_size: int | None
                  ) -> tuple[Tensor, Tensor]:
    """The teacher's k largest log-probabilities (temperature 1) and their ids at the given token rows, chunk by
    chunk: only ``chunk_size x V`` logits at a time."""
    hidden = teacher.hidden.reshape(-1, teacher.hidden.shape[-1]).index_select(0, rows)
    weight = teacher.weight[:vocab_size] if vocab_size else teacher.weight
    bias = None if teacher.bias is None else (teacher.bias[:vocab_size] if vocab_size else teacher.bias)
    if not 0 < k <= weight.shape[0]:
        raise DistillError(f"token_kd: top_k={k} must be between 1 and the vocabulary size {weight.shape[0]}")
    values, ids = [], []
    with torch.no_grad():
        for start in range(0, hidden.shape[0], chunk_size):
            log_probs = F.log_softmax(F.linear(hidden[start:start + chunk_size], weight, bias).float(), dim=-1)
            top = log_probs.topk(k, dim=-1)
            values.append(top.values)
            ids.append(top.indices)
    empty = hidden.new_zeros((0, k), dtype=torch.float32)
    return (torch.cat(values) if values else empty), (torch.cat(ids) if ids else empty.long())


def token_kd(student_final: FinalHidden, teacher_final: FinalHidden, labels: Tensor, *,
             divergence: str = "forward_kl", temperature: float = 1.0, beta: float = 0.5, skew: float = 0.1,
             top_k: int | None = None, chunk_size: int | None = None, normalizer: Any = None,
             vocab_size: int | None = None) -> Tensor:
    """Token-level KD between next-token distributions, from hidden states and heads, chunk by chunk.

    ``divergence``: forward_kl (classic KD), reverse_kl, jsd (generalised JSD, ``beta`` = teacher weight, TRL's
    convention), skew_kl / skew_reverse_kl (DistiLLM, mixing weight ``skew``) or tv; softmax at ``temperature``,
    times ``temperature**2``. ``top_k``: compare with the teacher's k most likely tokens plus one bucket for its
    remaining mass (forward KL only; k = V is the dense loss). Summed over supervised tokens, divided by
    ``normalizer`` (default: their count)."""
    if divergence not in DIVERGENCES:
        raise DistillError(f"token_kd: unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    student = _final_hidden(student_final, "student", "token_kd")
    teacher = _final_hidden(teacher_final, "teacher", "token_kd")
    if top_k is None:
        try:
            return chunked_token_kd(student.hidden, student.weight, teacher.hidden, teacher.weight, labels,
                                    student_bias=student.bias, teacher_bias=teacher.bias, divergence=divergence,
                                    temperature=temperature, beta=beta, skew=skew, chunk_size=chunk_size,
                                    normalizer=normalizer, vocab_size=vocab_size)
        except ValueError as error:
            raise DistillError(f"token_kd: {error}") from None
    if divergence != "forward_kl":
        raise DistillError(f"token_kd: top_k works with divergence forward_kl only (got {divergence!r})")
    flat_hidden = student.hidden.reshape(-1, student.hidden.shape[-1])
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(1)
    if chunk_size is None:
        chunk_size = auto_chunk_size(vocab_size or teacher.weight.shape[0])
    topk_logprobs, topk_ids = _teacher_topk(teacher, rows, top_k, chunk_size, vocab_size)
    weight = student.weight[:vocab_size] if vocab_size else student.weight
    bias = None if student.bias is None else (student.bias[:vocab_size] if vocab_size else student.bias)
    return chunked_token_kd_topk(flat_hidden.index_select(0, rows), weight, topk_logprobs, topk_ids, None,
                                 student_bias=bias, temperature=temperature, chunk_size=chunk_size,
                                 normalizer=normalizer)


def token_ce(student_final: FinalHidden, labels: Tensor, *, chunk_size: int | None = None, normalizer: Any = None
             ) -> Tensor:
    """Next-token cross-entropy on the supervised tokens, from hidden states and head, chunk by chunk."""
    student = _final_hidden(student_final, "student", "token_ce")
    try:
        return chunked_token_ce(student.hidden, student.weight, labels, bias=student.bias, chunk_size=chunk_size,
                                normalizer=normalizer)
    except ValueError as error:
        raise DistillError(f"token_ce: {error}") from None
