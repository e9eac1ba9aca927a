"""Cost of a model: parameters and forward latency, measured the same way for every model in one process."""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor

from distill.models import forward_logits


@torch.no_grad()
def latency_ms(model: torch.nn.Module, batch: dict[str, Tensor], *, runs: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median and p95 wall time of one forward pass on ``batch`` (eval mode), after ``warmup`` untimed passes."""
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        forward_logits(model, batch)
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        forward_logits(model, batch)
        timings.append((time.perf_counter() - start) * 1000)
    model.train(was_training)
    timings.sort()
    return {"median": statistics.median(timings), "p95": timings[min(len(timings) - 1, int(0.95 * len(timings)))],
            "runs": runs, "threads": torch.get_num_threads(), "batch_size": int(next(iter(batch.values())).shape[0])}
