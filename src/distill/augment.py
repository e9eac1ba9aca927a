"""Input augmentation applied inside the training step, on the batch, with the global torch RNG.

Doing it here (not in the dataset) keeps it on the device, lets teacher and student see the same augmented
input, and makes resume exact: skipped batches consume no random numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(inputs: Tensor, max_shift: int) -> Tensor:
    """Translate each sample by an independent integer offset in [-max_shift, max_shift] along every spatial
    axis, filling with zeros (Hinton 2012's "jitter"). Inputs are [B, C, L] or [B, C, H, W]."""
    if max_shift <= 0:
        return inputs
    batch = inputs.shape[0]
    spatial = inputs.shape[2:]
    if len(spatial) not in (1, 2):
        raise ValueError(f"shift augmentation needs inputs [B, C, L] or [B, C, H, W], got {tuple(inputs.shape)}")
    padded = F.pad(inputs, (max_shift, max_shift) * len(spatial))
    offsets = torch.randint(0, 2 * max_shift + 1, (batch, len(spatial)), device=inputs.device)
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
