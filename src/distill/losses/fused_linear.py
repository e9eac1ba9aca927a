"""The fused linear pass of the token losses: the student's logits are formed ``chunk_size`` tokens at a time from
its hidden states and head, each chunk's loss gradient is folded into the hidden states and head at once, and
the ``N x V`` logits never exist (Liger-style)."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from distill.losses.token_math import compute_dtype

# ChunkLoss(start, end, student_logits_chunk, need_grad) -> (per-row losses [C], d sum / d logits [C, V] or None)
ChunkLoss = Callable[[int, int, Tensor, bool], "tuple[Tensor, Optional[Tensor]]"]


def fused_linear_loop(
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
    cdt = compute_dtype(hidden.dtype, weight.dtype)
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


class FusedLinearLoss(torch.autograd.Function):
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
        loss, gh, gw, gb = fused_linear_loop(
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
            _, *gradients = fused_linear_loop(hidden, weight, bias, *ctx.loop_args, need_hidden, need_weight,
                                               need_bias)
        # Hand the buffers over instead of returning a scaled copy: with no other reference left, autograd adopts
        # them as .grad, so the [V, H] weight gradient exists once (a copy doubled that part of the peak).
        scale = None if bool((grad_output == 1).all()) else grad_output

        def scaled(g):
            return g if g is None or scale is None else g.mul_(scale.to(g.dtype))

        gh, gw, gb = gradients
        return scaled(gh), scaled(gw), scaled(gb), None, None, None


def run_fused(
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
        return FusedLinearLoss.apply(hidden, weight, bias, chunk_loss, chunk_size, inv_norm)
    loss, _, _, _ = fused_linear_loop(hidden, weight, bias, chunk_loss, chunk_size, inv_norm, False, False, False)
    return loss


def hard_label_targets(labels: Optional[Tensor], index: Optional[Tensor], n_rows: int, vocab: int,
                        hard_weight: float) -> Optional[Tensor]:
    """The next-token targets of the supervised rows, for a KD loss that also adds ``hard_weight`` x CE."""
    if hard_weight < 0:
        raise ValueError(f"hard_weight must be >= 0, got {hard_weight}")
    if hard_weight == 0:
        return None
    if labels is None:
        raise ValueError("hard_weight > 0 needs labels (the next-token targets)")
    targets = supervised_targets(labels, index, vocab)
    if targets.numel() != n_rows:
        raise ValueError(f"labels give {targets.numel()} supervised tokens, the loss has {n_rows}")
    return targets


def supervised_targets(labels: Tensor, index: Optional[Tensor], vocab: int, ignore_index: int = -100) -> Tensor:
    """The labels at the supervised rows (``index``; all rows when None), checked to be vocabulary ids."""
    targets = labels.reshape(-1)
    targets = targets.index_select(0, index.to(targets.device)) if index is not None else targets
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"labels hold ids outside the vocabulary of {vocab} (or negative ids other than "
                         f"ignore_index={ignore_index})")
    return targets


def cross_entropy_rows(logits: Tensor, chunk_targets: Tensor, need_grad: bool) -> tuple[Tensor, Optional[Tensor]]:
    """Per-row next-token cross-entropy of a logits chunk and, if asked, its gradient w.r.t. the logits."""
    log_probs = F.log_softmax(logits, dim=-1)
    rows = -log_probs.gather(1, chunk_targets).squeeze(1)
    if not need_grad:
        return rows, None
    # d/dz -log softmax(z)[y] = softmax(z) - onehot(y)
    grad = log_probs.exp_()
    grad.scatter_add_(1, chunk_targets, torch.full_like(chunk_targets, -1.0, dtype=grad.dtype))
    return rows, grad


def with_hard_labels(chunk_loss: ChunkLoss, targets: Optional[Tensor], hard_weight: float) -> ChunkLoss:
    """``chunk_loss`` plus ``hard_weight`` x next-token cross-entropy on the same student logits chunk: the
    usual KD + CE mixture in one pass over the output head instead of two (the head matmuls and their
    gradients are most of a small LM's step)."""
    if targets is None:
        return chunk_loss

    def combined(start: int, end: int, student_logits: Tensor, need_grad: bool):
        rows, grad = chunk_loss(start, end, student_logits, need_grad)
        chunk_targets = targets[start:end].unsqueeze(1).to(student_logits.device)
        ce_rows, ce_grad = cross_entropy_rows(student_logits, chunk_targets, grad is not None)
        if ce_grad is not None:
            grad.add_(ce_grad, alpha=hard_weight)
        return rows + hard_weight * ce_rows, grad

    return combined


def check_head(name: str, hidden: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
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


def check_chunk_size(chunk_size: Optional[int], vocab_size: int) -> int:
    if chunk_size is None:
        return auto_chunk_size(vocab_size)
    if not (isinstance(chunk_size, int) and chunk_size > 0):
        raise ValueError(f"chunk_size must be a positive int (or None for automatic), got {chunk_size!r}")
    return chunk_size
