"""Losses between models trained together (mutual learning): pure functions of tensors."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.registry import Positive, register_loss


@register_loss("peer_kl", softens=True)
def peer_kl(student_peer_logits: Tensor, *, peer: int = 0, target: int | None = None,
            temperature: Positive = 1.0) -> Tensor:
    """Deep mutual learning's mimicry term for one peer (Zhang et al. 2018): the mean over the other peers j of
    KL(p_j^T || p_peer^T), batchmean, times T^2. ``student_peer_logits`` is [peers, batch, classes]; the other
    peers' outputs are targets (detached), so each peer's term trains that peer alone. With ``target`` only that
    peer teaches (in-model self-distillation: the deepest exit teaches the shallower ones)."""
    if student_peer_logits.dim() != 3 or student_peer_logits.shape[0] < 2:
        raise ValueError(f"peer_kl needs logits stacked as [peers >= 2, batch, classes], got "
                         f"{tuple(student_peer_logits.shape)}")
    count = student_peer_logits.shape[0]
    for index in (peer, target):
        if index is not None and not -count <= index < count:
            raise ValueError(f"peer {index} out of range for {count} peers")
    peer = peer % count
    teachers = [index for index in range(count) if index != peer] if target is None else [target % count]
    if peer in teachers:
        raise ValueError(f"peer {peer} cannot be its own target")
    log_probs = F.log_softmax(student_peer_logits.float() / temperature, dim=-1)
    own = log_probs[peer]
    others = log_probs[teachers].detach()
    # sum over classes, mean over batch and over the teaching peers
    kl = (others.exp() * (others - own.unsqueeze(0))).sum(-1).mean()
    return kl * temperature**2
