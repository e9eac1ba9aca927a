"""The per-token divergences of :mod:`distill.losses.tokens` and their gradients with respect to the student's
logits, in closed form, plus the row bookkeeping (supervised rows, normaliser) every token loss shares."""

from __future__ import annotations

import math
from typing import Literal, Optional, Union, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

Divergence = Literal["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv"]
DIVERGENCES = get_args(Divergence)

Normalizer = Optional[Union[int, float, Tensor]]


def check_options(divergence: str, temperature: float, beta: float, skew: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if not 0.0 <= float(skew) <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew!r}")


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum_v p_v (log p_v - log q_v) over the last dim, with 0 * log 0 = 0 (so -inf teacher logits are allowed)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


def log_mixture(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w * a + (1 - w) * b) computed stably; exact at w = 0 and w = 1 (no log(0) arithmetic)."""
    w = float(w)
    if w == 0.0:
        return log_b
    if w == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def divergence_from_log_probs(log_ps: Tensor, log_pt: Tensor, divergence: str, beta: float, skew: float) -> Tensor:
    """Unscaled per-row divergence from normalised student/teacher log-probabilities (last dim = vocabulary)."""
    if divergence == "forward_kl":
        return kl_rows(log_pt, log_ps)
    if divergence == "reverse_kl":
        return kl_rows(log_ps, log_pt)
    if divergence == "jsd":
        beta = float(beta)
        # TRL GKDTrainer.generalized_jsd_loss special-cases the end points (the general formula degenerates to 0).
        if beta == 0.0:
            return kl_rows(log_pt, log_ps)
        if beta == 1.0:
            return kl_rows(log_ps, log_pt)
        log_m = log_mixture(log_pt, log_ps, beta)
        return beta * kl_rows(log_pt, log_m) + (1.0 - beta) * kl_rows(log_ps, log_m)
    if divergence == "skew_kl":
        return kl_rows(log_pt, log_mixture(log_pt, log_ps, skew))
    if divergence == "skew_reverse_kl":
        return kl_rows(log_ps, log_mixture(log_ps, log_pt, skew))
    if divergence == "tv":
        return 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {divergence!r}")  # pragma: no cover - checked by check_options


def divergence_and_grad(
    student_logits: Tensor,
    teacher_logits: Tensor,
    divergence: str,
    temperature: float,
    beta: float,
    skew: float,
    need_grad: bool,
) -> tuple[Tensor, Optional[Tensor]]:
    """Per-row divergence (times T^2) of one chunk and, if asked, d(sum of rows)/d(student_logits).

    Inputs are already in the compute dtype. forward_kl and reverse_kl use closed-form gradients (they are the
    common cases and this saves an autograd pass); the other divergences differentiate the same expression
    ``divergence_from_log_probs`` with autograd on the chunk, so there is a single definition of each divergence.
    """
    t = float(temperature)
    scale = t * t
    log_pt = F.log_softmax(teacher_logits / t if t != 1.0 else teacher_logits, dim=-1)
    del teacher_logits
    if not need_grad:
        log_ps = F.log_softmax(student_logits / t if t != 1.0 else student_logits, dim=-1)
        return divergence_from_log_probs(log_ps, log_pt, divergence, beta, skew) * scale, None
    if divergence in ("forward_kl", "reverse_kl") or (divergence == "jsd" and float(beta) in (0.0, 1.0)):
        forward = divergence == "forward_kl" or (divergence == "jsd" and float(beta) == 0.0)
        log_ps = F.log_softmax(student_logits / t if t != 1.0 else student_logits, dim=-1)
        if forward:
            # in-place arithmetic keeps this hot path at ~4 [C, V] buffers
            p_t = log_pt.exp()
            terms = log_pt.sub_(log_ps).mul_(p_t).masked_fill_(p_t == 0, 0.0)  # p_t (log p_t - log p_s), 0 log 0 = 0
            rows = terms.sum(-1)
            del terms, log_pt
            # d/dz  T^2 * KL(p_t || softmax(z/T)) = T * (p_s - p_t)
            grad = log_ps.exp_().sub_(p_t)
            if t != 1.0:
                grad.mul_(t)
        else:
            p_s = log_ps.exp()
            diff = log_ps - log_pt
            rows = torch.where(p_s > 0, p_s * diff, torch.zeros((), dtype=p_s.dtype, device=p_s.device)).sum(-1)
            # d/dz  T^2 * KL(softmax(z/T) || p_t) = T * p_s * (log p_s - log p_t - KL)
            grad = torch.where(p_s > 0, p_s * (diff - rows.unsqueeze(-1)), torch.zeros((), dtype=p_s.dtype,
                                                                                        device=p_s.device)) * t
        return rows * scale, grad
    with torch.enable_grad():
        z = student_logits.detach().requires_grad_(True)
        log_ps = F.log_softmax(z / t, dim=-1)
        rows = divergence_from_log_probs(log_ps, log_pt.detach(), divergence, beta, skew) * scale
        (grad,) = torch.autograd.grad(rows.sum(), z)
    return rows.detach(), grad


def flatten_hidden(name: str, hidden: Tensor) -> Tensor:
    if hidden.dim() < 2:
        raise ValueError(f"{name} must be [N, H] or [B, T, H], got shape {tuple(hidden.shape)}")
    return hidden.reshape(-1, hidden.shape[-1])


def supervised_index(labels: Optional[Tensor], n: int, ignore_index: int, device: torch.device) -> Optional[Tensor]:
    """Row indices of supervised tokens, or None when every token is supervised (labels is None)."""
    if labels is None:
        return None
    flat = labels.reshape(-1)
    if flat.numel() != n:
        raise ValueError(f"labels has {flat.numel()} tokens but the hidden states have {n}")
    return (flat.to(device) != ignore_index).nonzero().squeeze(1)


def resolve_normalizer(normalizer: Normalizer, n_supervised: int) -> float:
    """The divisor of the summed divergence: given, or the supervised-token count (at least 1, so that a call
    with no supervised token returns 0 rather than NaN)."""
    if normalizer is None:
        return float(max(n_supervised, 1))
    value = float(normalizer.item() if isinstance(normalizer, Tensor) else normalizer)
    if not value > 0:
        raise ValueError(f"normalizer must be positive, got {value}")
    return value
