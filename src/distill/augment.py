"""Input augmentation applied inside the training step, on the batch, with a generator of its own.

Doing it here (not in the dataset) keeps it on the device and lets teacher and student see the same augmented
input. The trainer seeds the generator from where the batch is in the run (``batch_generator``), so a resumed
run draws the same numbers as an uninterrupted one with no generator state to checkpoint, and augmentation and
dropout (global RNG) do not shift each other's draws.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def batch_generator(seed: int, process_index: int, micro_batch: int) -> torch.Generator:
    """A CPU generator for one micro-batch, seeded from (run seed, process, the micro-batch's index in the stage)
    alone: what a batch draws is a function of its place in the run, as its data order is."""
    entropy = np.random.SeedSequence([seed, process_index, micro_batch]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def random_shift(inputs: Tensor, max_shift: int, generator: torch.Generator | None = None) -> Tensor:
    """Translate each sample by an independent integer offset in [-max_shift, max_shift] along every spatial
    axis, filling with zeros (Hinton 2012's "jitter"). Inputs are [B, C, L] or [B, C, H, W]. The offsets are
    drawn on the CPU from ``generator`` (the global RNG when None), so one generator serves every device."""
    if max_shift <= 0:
        return inputs
    batch = inputs.shape[0]
    spatial = inputs.shape[2:]
    if len(spatial) not in (1, 2):
        raise ValueError(f"shift augmentation needs inputs [B, C, L] or [B, C, H, W], got {tuple(inputs.shape)}")
    padded = F.pad(inputs, (max_shift, max_shift) * len(spatial))
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, len(spatial)), generator=generator).to(inputs.device)
    batch_index = torch.arange(batch, device=inputs.device)
    if len(spatial) == 1:
        positions = torch.arange(spatial[0], device=inputs.device)[None, :] + offsets[:, :1]
        channels_last = padded.transpose(1, 2)                      # [B, L+2s, C]
        return channels_last[batch_index[:, None], positions].transpose(1, 2)
    rows = torch.arange(spatial[0], device=inputs.device)[None, :] + offsets[:, :1]   # [B, H]
    cols = torch.arange(spatial[1], device=inputs.device)[None, :] + offsets[:, 1:]   # [B, W]
    channels_last = padded.permute(0, 2, 3, 1)                                       # [B, H+2s, W+2s, C]
    shifted = channels_last[batch_index[:, None, None], rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2)
