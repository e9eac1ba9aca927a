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
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "DIVERGENCES",
    "token_divergence",
    "dense_token_kd",
    "chunked_token_kd",
    "chunked_token_kd_topk",
    "chunked_token_ce",
]

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tv")

Normalizer = Optional[Union[int, float, Tensor]]


# ----------------------------------------------------------------------------------------------------------------
# argument checking and small helpers
# ----------------------------------------------------------------------------------------------------------------


def _check_options(divergence: str, temperature: float, beta: float, skew: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; expected one of {', '.join(DIVERGENCES)}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta!r}")
    if not 0.0 <= float(skew) <= 1.0:
        raise ValueError(f"skew must be in [0, 1], got {skew!r}")


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """sum_v p_v (log p_v - log q_v) over the last dim, with 0 * log 0 = 0 (so -inf teacher logits are allowed)."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros((), dtype=p.dtype, device=p.device)).sum(-1)


def _log_mixture(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w * a + (1 - w) * b) computed stably; exact at w = 0 and w = 1 (no log(0) arithmetic)."""
    w = float(w)
    if w == 0.0:
        return log_b
    if w == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def _divergence_from_log_probs(log_ps: Tensor, log_pt: Tensor, divergence: str, beta: float, skew: float) -> Tensor:
    """Unscaled per-row divergence from normalised student/teacher log-probabilities (last dim = vocabulary)."""
    if divergence == "forward_kl":
        return _kl_rows(log_pt, log_ps)
    if divergence == "reverse_kl":
        return _kl_rows(log_ps, log_pt)
    if divergence == "jsd":
        beta = float(beta)
        # TRL GKDTrainer.generalized_jsd_loss special-cases the end points (the general formula degenerates to 0).
        if beta == 0.0:
            return _kl_rows(log_pt, log_ps)
        if beta == 1.0:
            return _kl_rows(log_ps, log_pt)
        log_m = _log_mixture(log_pt, log_ps, beta)
        return beta * _kl_rows(log_pt, log_m) + (1.0 - beta) * _kl_rows(log_ps, log_m)
    if divergence == "skew_kl":
        return _kl_rows(log_pt, _log_mixture(log_pt, log_ps, skew))
    if divergence == "skew_reverse_kl":
        return _kl_rows(log_ps, _log_mixture(log_ps, log_pt, skew))
    if divergence == "tv":
        return 0.5 * (log_pt.exp() - log_ps.exp()).abs().sum(-1)
    raise ValueError(f"unknown divergence {divergence!r}")  # pragma: no cover - checked by _check_options


def _divergence_and_grad(
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
    ``_divergence_from_log_probs`` with autograd on the chunk, so there is a single definition of each divergence.
    """
    t = float(temperature)
    scale = t * t
    log_pt = F.log_softmax(teacher_logits / t if t != 1.0 else teacher_logits, dim=-1)
    del teacher_logits
    if not need_grad:
        log_ps = F.log_softmax(student_logits / t if t != 1.0 else student_logits, dim=-1)
        return _divergence_from_log_probs(log_ps, log_pt, divergence, beta, skew) * scale, None
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
        rows = _divergence_from_log_probs(log_ps, log_pt.detach(), divergence, beta, skew) * scale
        (grad,) = torch.autograd.grad(rows.sum(), z)
    return rows.detach(), grad


def _flatten_hidden(name: str, hidden: Tensor) -> Tensor:
    if hidden.dim() < 2:
        raise ValueError(f"{name} must be [N, H] or [B, T, H], got shape {tuple(hidden.shape)}")
    return hidden.reshape(-1, hidden.shape[-1])


def _supervised_index(labels: Optional[Tensor], n: int, ignore_index: int, device: torch.device) -> Optional[Tensor]:
    """Row indices of supervised tokens, or None when every token is supervised (labels is None)."""
    if labels is None:
        return None
    flat = labels.reshape(-1)
    if flat.numel() != n:
        raise ValueError(f"labels has {flat.numel()} tokens but the hidden states have {n}")
    return (flat.to(device) != ignore_index).nonzero().squeeze(1)


def _resolve_normalizer(normalizer: Normalizer, n_supervised: int) -> float:
    """The divisor of the summed divergence: given, or the supervised-token count (at least 1, so that a call
    with no supervised token returns 0 rather than NaN)."""
    if normalizer is None:
        return float(max(n_supervised, 1))
    value = float(normalizer.item() if isinstance(normalizer, Tensor) else normalizer)
    if not value > 0:
        raise ValueError(f"normalizer must be positive, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# the chunked fused-linear engine
# ----------------------------------------------------------------------------------------------------------------

# ChunkLoss(start, end, student_logits_chunk, need_grad) -> (per-row losses [C], d sum / d logits [C, V] or None)
ChunkLoss = Callable[[int, int, Tensor, bool], "tuple[Tensor, Optional[Tensor]]"]


def _fused_linear_loop(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    chunk_loss: ChunkLoss,
    chunk_size: int,
    inv_norm: float,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """sum_rows(chunk_loss(hidden @ weight.T + bias)) * inv_norm and its gradients, chunk by chunk.

    ``hidden`` holds only supervised rows. Peak extra memory is a few ``chunk_size x V`` tensors plus gradient
    buffers the size of ``hidden``/``weight``; the full ``N x V`` logits never exist.
    """
    n, h = hidden.shape
    v = weight.shape[0]
    cdt = _compute_dtype(hidden.dtype, weight.dtype)
    need_grad = need_hidden or need_weight or need_bias
    total = torch.zeros((), dtype=cdt, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    # weight/bias gradients are summed over chunks: accumulate in the compute dtype, cast once at the end
    grad_weight = torch.zeros(v, h, dtype=cdt, device=weight.device) if need_weight else None
    grad_bias = torch.zeros(v, dtype=cdt, device=weight.device) if need_bias else None
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        x = hidden[start:end]
        logits = F.linear(x, weight, bias).to(cdt)
        rows, grad_logits = chunk_loss(start, end, logits, need_grad)
        del logits
        total = total + rows.sum()
        if grad_logits is None:
            continue
        # fold 1/normalizer in before any down-cast so bf16 gradients have the same scale as the dense ones
        g = (grad_logits * inv_norm).to(hidden.dtype)
        del grad_logits
        if need_hidden:
            grad_hidden[start:end] = g @ weight.to(g.dtype)
        if need_weight:
            if grad_weight.dtype == g.dtype:
                grad_weight.addmm_(g.t(), x)
            else:
                grad_weight += (g.t() @ x).to(cdt)
        if need_bias:
            grad_bias += g.sum(0).to(cdt)
    if grad_weight is not None:
        grad_weight = grad_weight.to(weight.dtype)
    if grad_bias is not None:
        grad_bias = grad_bias.to(bias.dtype)
    return total * inv_norm, grad_hidden, grad_weight, grad_bias


class _FusedLinearLoss(torch.autograd.Function):
    """Loss of a linear head applied chunk by chunk, with the gradients computed during the forward pass.

    Design choice - gradients in forward (as Liger's fused linear cross entropy), not recompute in backward
    (as torchtune's chunked losses under activation checkpointing): the chunk's logits, softmaxes and the
    teacher's logits are all in hand while the loss is computed, so producing d loss / d logits there and folding
    it into ``grad_hidden`` / ``grad_weight`` costs two matmuls per chunk. Recomputing in backward would repeat
    both models' head matmuls and both softmaxes (about 1.5x the FLOPs) for no memory gain, since what we keep
    (``[N, H] + [V, H]``) is no larger than the inputs themselves. The price is that forward does the gradient
    work even if ``backward`` is never called; the public wrappers therefore skip this Function (and the gradient
    work) whenever no student input requires grad or grad mode is off. Because the loss is a scalar,
    ``backward`` hands the stored gradients over (scaled in place by ``grad_output`` when it is not 1), so
    they are never copied (a second backward through the same graph recomputes them); double backward is not
    supported.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunk_loss, chunk_size, inv_norm):  # noqa: D102
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        loss, gh, gw, gb = _fused_linear_loop(
            hidden, weight, bias, chunk_loss, chunk_size, inv_norm, need_hidden, need_weight, need_bias
        )
        # The gradients are kept as a plain attribute, not with save_for_backward, so that backward can hand them
        # over (see there); they are new tensors without autograd history, so ctx holds no reference cycle. The
        # inputs are saved only to recompute them if backward runs a second time (retain_graph, gradcheck).
        ctx.gradients = (gh, gw, gb)
        ctx.save_for_backward(hidden, weight, bias)
        ctx.loop_args = (chunk_loss, chunk_size, inv_norm)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # noqa: D102
        gradients = ctx.__dict__.pop("gradients", None)
        if gradients is None:  # a second backward through the same graph: the first one took the buffers
            hidden, weight, bias = ctx.saved_tensors
            need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
            _, *gradients = _fused_linear_loop(hidden, weight, bias, *ctx.loop_args, need_hidden, need_weight,
                                               need_bias)
        # Hand the buffers over instead of returning a scaled copy: with no other reference left, autograd adopts
        # them as .grad, so the [V, H] weight gradient exists once (a copy doubled that part of the peak).
        scale = None if bool((grad_output == 1).all()) else grad_output

        def scaled(g):
            return g if g is None or scale is None else g.mul_(scale.to(g.dtype))

        gh, gw, gb = gradients
        return scaled(gh), scaled(gw), scaled(gb), None, None, None


def _run_fused(
    hidden: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    rows_index: Optional[Tensor],
    chunk_loss: ChunkLoss,
    chunk_size: int,
    inv_norm: float,
) -> Tensor:
    """Select the supervised rows, run the engine (through the autograd Function when gradients are wanted)."""
    if rows_index is not None:
        # index_select is differentiable: the gradient is scattered back to the full [N, H] hidden states
        hidden = hidden.index_select(0, rows_index)
    tensors = [t for t in (hidden, weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _FusedLinearLoss.apply(hidden, weight, bias, chunk_loss, chunk_size, inv_norm)
    loss, _, _, _ = _fused_linear_loop(hidden, weight, bias, chunk_loss, chunk_size, inv_norm, False, False, False)
    return loss


def _hard_label_targets(labels: Optional[Tensor], index: Optional[Tensor], n_rows: int, vocab: int,
                        hard_weight: float) -> Optional[Tensor]:
    """The next-token targets of the supervised rows, for a KD loss that also adds ``hard_weight`` x CE."""
    if hard_weight < 0:
        raise ValueError(f"hard_weight must be >= 0, got {hard_weight}")
    if hard_weight == 0:
        return None
    if labels is None:
        raise ValueError("hard_weight > 0 needs labels (the next-token targets)")
    targets = _supervised_targets(labels, index, vocab)
    if targets.numel() != n_rows:
        raise ValueError(f"labels give {targets.numel()} supervised tokens, the loss has {n_rows}")
    return targets


def _supervised_targets(labels: Tensor, index: Optional[Tensor], vocab: int, ignore_index: int = -100) -> Tensor:
    """The labels at the supervised rows (``index``; all rows when None), checked to be vocabulary ids."""
    targets = labels.reshape(-1)
    targets = targets.index_select(0, index.to(targets.device)) if index is not None else targets
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"labels hold ids outside the vocabulary of {vocab} (or negative ids other than "
                         f"ignore_index={ignore_index})")
    return targets


def _cross_entropy_rows(logits: Tensor, chunk_targets: Tensor, need_grad: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Per-row next-token cross-entropy of a logits chunk and, if asked, its gradient w.r.t. the logits."""
    log_probs = F.log_softmax(logits, dim=-1)
    rows = -log_probs.gather(1, chunk_targets).squeeze(1)
    if not need_grad:
        return rows, None
    # d/dz -log softmax(z)[y] = softmax(z) - onehot(y)
    grad = log_probs.exp_()
    grad.scatter_add_(1, chunk_targets, torch.full_like(chunk_targets, -1.0, dtype=grad.dtype))
    return rows, grad


def _with_hard_labels(chunk_loss: ChunkLoss, targets: Optional[Tensor], hard_weight: float) -> ChunkLoss:
    """``chunk_loss`` plus ``hard_weight`` x next-token cross-entropy on the same student logits chunk: the
    usual KD + CE mixture in one pass over the output head instead of two (the head matmuls and their
    gradients are most of a small LM's step)."""
    if targets is None:
        return chunk_loss

    def combined(start: int, end: int, student_logits: Tensor, need_grad: bool):
        rows, grad = chunk_loss(start, end, student_logits, need_grad)
        chunk_targets = targets[start:end].unsqueeze(1).to(student_logits.device)
        ce_rows, ce_grad = _cross_entropy_rows(student_logits, chunk_targets, grad is not None)
        if ce_grad is not None:
            grad.add_(ce_grad, alpha=hard_weight)
        return rows + hard_weight * ce_rows, grad

    return combined


def _check_head(name: str, hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    if weight.dim() != 2:
        raise ValueError(f"{name}_weight must be [V, H], got shape {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"{name}_weight is {tuple(weight.shape)} but {name}_hidden has hidden size {hidden.shape[1]}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}_bias must be [{weight.shape[0]}], got shape {tuple(bias.shape)}")


# Tokens per chunk when the caller gives none: as many as keep one chunk's fp32 logits near 32 MiB (2**23
# values), a power of two between 16 and 1024: 128 at V = 49,152, 32 at V = 262,144. Measured
# (docs/benchmarks.md): chunks of 64-256 keep the peak at 4-7% of the dense reference's at V = 49,152, and 32
# keeps it at 9% at V = 262,144 (64: 11%) at no loss of speed, while a fixed 1024 saves nothing there.
AUTO_CHUNK_VALUES = 2**23


def auto_chunk_size(vocab_size: int) -> int:
    tokens = max(1, AUTO_CHUNK_VALUES // max(1, int(vocab_size)))
    return int(min(1024, max(16, 2 ** int(math.log2(tokens)))))


def _check_chunk_size(chunk_size: Optional[int], vocab_size: int) -> int:
    if chunk_size is None:
        return auto_chunk_size(vocab_size)
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int (or None for automatic), got {chunk_size!r}")
    return chunk_size


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------


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
    _check_options(divergence, temperature, beta, skew)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} "
            "must have the same shape (slice padded vocabularies to a common size first)"
        )
    cdt = _compute_dtype(student_logits.dtype, teacher_logits.dtype)
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.to(cdt) / t, dim=-1)
    log_pt = F.log_softmax(teacher_logits.to(cdt) / t, dim=-1)
    return _divergence_from_log_probs(log_ps, log_pt, divergence, beta, skew) * (t * t)


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
    _check_options(divergence, temperature, beta, skew)
    v = student_logits.shape[-1]
    s = student_logits.reshape(-1, v)
    t = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    rows = token_divergence(s, t, divergence=divergence, temperature=temperature, beta=beta, skew=skew)
    index = _supervised_index(labels, s.shape[0], ignore_index, s.device)
    if index is not None:
        rows = rows.index_select(0, index)
    return rows.sum() / _resolve_normalizer(normalizer, rows.shape[0])


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
    _check_options(divergence, temperature, beta, skew)
    chunk_size = _check_chunk_size(chunk_size, student_weight.shape[0])
    sh = _flatten_hidden("student_hidden", student_hidden)
    th = _flatten_hidden("teacher_hidden", teacher_hidden).detach()
    tw = teacher_weight.detach()
    tb = teacher_bias.detach() if teacher_bias is not None else None
    _check_head("student", sh, student_weight, student_bias)
    _check_head("teacher", th, tw, tb)
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

    index = _supervised_index(labels, sh.shape[0], ignore_index, sh.device)
    if index is not None:
        th = th.index_select(0, index)
    n_sup = th.shape[0]
    targets = _hard_label_targets(labels, index, n_sup, sw.shape[0], hard_weight)
    inv_norm = 1.0 / _resolve_normalizer(normalizer, n_sup)
    cdt = _compute_dtype(sh.dtype, sw.dtype, th.dtype, tw.dtype)

    def chunk_loss(start: int, end: int, student_logits: Tensor, need_grad: bool):
        with torch.no_grad():
            teacher_logits = F.linear(th[start:end], tw, tb).to(cdt)
        return _divergence_and_grad(
            student_logits.to(cdt), teacher_logits, divergence, temperature, beta, skew, need_grad
        )

    return _run_fused(sh, sw, sb, index, _with_hard_labels(chunk_loss, targets, hard_weight), chunk_size, inv_norm)


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
    _check_options("forward_kl", temperature, 0.5, 0.1)
    chunk_size = _check_chunk_size(chunk_size, student_weight.shape[0])
    sh = _flatten_hidden("student_hidden", student_hidden)
    _check_head("student", sh, student_weight, student_bias)
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
            raise ValueError(f"teacher_log_tail has {stored_tail.shape[0]} tokens but the teacher top-k has {lp.shape[0]}")

    index = _supervised_index(labels, sh.shape[0], ignore_index, sh.device)
    if index is not None:
        lp, ids = lp.index_select(0, index), ids.index_select(0, index)
        stored_tail = None if stored_tail is None else stored_tail.index_select(0, index)
    inv_norm = 1.0 / _resolve_normalizer(normalizer, lp.shape[0])
    targets = _hard_label_targets(labels, index, lp.shape[0], v, hard_weight)
    cdt = _compute_dtype(sh.dtype, student_weight.dtype, lp.dtype)
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

    return _run_fused(sh, student_weight, student_bias, index, _with_hard_labels(chunk_loss, targets, hard_weight),
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
    chunk_size = _check_chunk_size(chunk_size, weight.shape[0])
    flat_hidden = _flatten_hidden("hidden", hidden)
    _check_head("student", flat_hidden, weight, bias)
    index = _supervised_index(labels, flat_hidden.shape[0], ignore_index, flat_hidden.device)
    targets = _supervised_targets(labels.to(flat_hidden.device), index, weight.shape[0], ignore_index)
    inv_norm = 1.0 / _resolve_normalizer(normalizer, targets.numel())

    def chunk_loss(start: int, end: int, logits: Tensor, need_grad: bool):
        return _cross_entropy_rows(logits, targets[start:end].unsqueeze(1), need_grad)

    return _run_fused(flat_hidden, weight, bias, index, chunk_loss, chunk_size, inv_norm)
