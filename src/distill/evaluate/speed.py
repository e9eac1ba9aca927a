"""Cost of a model: parameters, size on disk, latency, throughput and peak memory, measured the same way for
every model in one process."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from distill.models import forward_logits


def latency_ms(model: torch.nn.Module, batch: dict[str, Tensor], *, runs: int = 30,
               warmup: int = 5) -> dict[str, float]:
    """Median and p95 wall time of one forward pass on ``batch`` (eval mode), after ``warmup`` untimed passes:
    ``interleaved_latency_ms`` of one model."""
    return interleaved_latency_ms({"model": model}, batch, runs=runs, warmup=warmup)[0]["model"]


# Rounds the timed runs are split into to see whether the machine's load changed under them, and the spread of
# the models' speed ratio between rounds beyond which the figures come with a warning.
SPREAD_ROUNDS = 5
NOISY_SPREAD = 0.2


@torch.no_grad()
def interleaved_latency_ms(models: dict[str, torch.nn.Module], batch: dict[str, Any], *, runs: int = 30,
                           warmup: int = 5) -> tuple[dict[str, dict[str, float]], float | None]:
    """``latency_ms`` of several models measured side by side: each timed run passes every model once, in an order
    that rotates from run to run, so a load that comes and goes slows them all alike and cannot invert their
    ratio. Returns each model's figures and the spread: the runs are split into SPREAD_ROUNDS rounds in time
    order, each model's median per round divided by the first model's, and the spread is the largest
    (max / min - 1) of those ratios over the models (of the first model's own round medians when it is alone);
    None with fewer than 20 runs. ``batch`` is one batch for all, or ``{model name: its batch}`` (models that read
    the same samples in their own tokenisation)."""
    names = list(models)
    per_model = set(batch) == set(names) and all(isinstance(value, dict) for value in batch.values())
    batches = {name: batch[name] if per_model else batch for name in names}
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    for _ in range(warmup):
        for name, model in models.items():
            forward_logits(model, batches[name])
    timings: dict[str, list[float]] = {name: [] for name in names}
    for run in range(runs):
        for name in names[run % len(names):] + names[:run % len(names)]:
            start = time.perf_counter()
            output = forward_logits(models[name], batches[name])
            if output.is_cuda:
                torch.cuda.synchronize(output.device)
            timings[name].append((time.perf_counter() - start) * 1000)
    for name, model in models.items():
        model.train(modes[name])
    size = int(next(iter(batches[names[0]].values())).shape[0])
    figures = {name: {"median": statistics.median(values), "p95": sorted(values)[min(runs - 1, int(0.95 * runs))],
                      "runs": runs, "threads": torch.get_num_threads(), "batch_size": size}
               for name, values in timings.items()}
    return figures, _spread(timings, names)


def _spread(timings: dict[str, list[float]], names: list[str]) -> float | None:
    """None when there are too few runs to tell (a median of fewer than 10 runs a round is noise itself)."""
    rounds = min(SPREAD_ROUNDS, len(timings[names[0]]) // 10)
    if rounds < 2:
        return None

    def round_medians(values: list[float]) -> list[float]:
        size = len(values) // rounds
        return [statistics.median(values[index * size:(index + 1) * size]) for index in range(rounds)]

    reference = round_medians(timings[names[0]])
    ratios = [[other / max(base, 1e-12) for other, base in zip(round_medians(timings[name]), reference)]
              for name in names[1:]] or [reference]
    return max(max(values) / max(min(values), 1e-12) - 1 for values in ratios)


def speed_phrase(speedup: float) -> str:
    """'2.1x faster', or '1.8x slower' when the student is slower (a speed-up under 1 is not 'faster')."""
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / max(speedup, 1e-9):.1f}x slower"


def noise_warning(spread: float | None) -> str | None:
    """A sentence when the timing rounds disagreed beyond NOISY_SPREAD (the machine's load changed)."""
    if spread is None or spread <= NOISY_SPREAD:
        return None
    return (f"timings varied by {spread:.0%} between rounds (other work on this machine?): the latency and speed-up "
            "figures are approximate; rerun `distill eval RUN_DIR` on an idle machine for firm ones")


def speed_summary(metrics: dict[str, Any]) -> list[str]:
    """The end-of-run lines on size and speed (with the thread count), and the noise warning when due."""
    lines = []
    if "speedup" in metrics:
        lines.append(f"student is {metrics['compression']:.1f}x smaller and {speed_phrase(metrics['speedup'])} "
                     f"than the teacher ({metrics['threads']} threads)")
    warning = noise_warning(metrics.get("latency_spread"))
    if warning is not None:
        lines.append(f"[yellow]note:[/yellow] {warning}")
    return lines


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of everything the model holds (parameters, buffers, packed quantized weights), as its state dict
    stores it: int8 weights count one byte per element."""
    def size(value: Any) -> int:
        if isinstance(value, Tensor):
            if value.is_quantized:
                return value.int_repr().nbytes + (value.q_per_channel_scales().nbytes * 2
                                                  if value.qscheme() in (torch.per_channel_affine,
                                                                         torch.per_channel_symmetric) else 16)
            return value.nbytes
        if isinstance(value, (tuple, list)):
            return sum(size(item) for item in value)
        return 0

    return sum(size(value) for value in model.state_dict().values())


def size_on_disk(directory: Path) -> int | None:
    """Bytes of the exported weights (``*.safetensors`` in the model folder); None when nothing was exported."""
    files = list(Path(directory).glob("*.safetensors")) if Path(directory).is_dir() else []
    return sum(file.stat().st_size for file in files) if files else None


@torch.no_grad()
def peak_forward_memory(model: torch.nn.Module, batch: dict[str, Tensor], *, warmup: bool = True) -> dict[str, int]:
    """Peak memory of one forward pass on ``batch``: the model's weights plus the peak of the bytes the pass
    allocates and has not yet freed (activations, workspaces).

    On CUDA this is ``torch.cuda.max_memory_allocated`` around the pass. On CPU there is no allocator counter,
    and process RSS is useless for comparing models in one process (the C allocator keeps freed pages, so the
    second model reuses the first one's); instead torch's profiler reports every allocation and free of the CPU
    allocator, and the running sum's maximum is the pass's own peak, independent of what ran before."""
    was_training = model.training
    model.eval()
    if warmup:  # lazy packing, workspace creation: not part of a steady-state forward
        forward_logits(model, batch)
    device = next(iter(batch.values())).device
    weights = weight_bytes(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward_logits(model, batch)
        torch.cuda.synchronize(device)
        activations = torch.cuda.max_memory_allocated(device) - before
    else:
        from torch.profiler import ProfilerActivity, profile

        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
            forward_logits(model, batch)
        activations = _peak_of_allocations(profiler)
    model.train(was_training)
    return {"weights": weights, "activations": int(activations), "total": int(weights + activations)}


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's C++ backend prints start/stop lines on file descriptor 2 that no setting turns off (they
    would land in the middle of the user's progress bars); Python-level errors still surface as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_of_allocations(profiler: Any) -> int:
    """Running sum of what each operator allocated net of what it freed (its *self* memory, so nested calls are
    not counted twice), plus frees outside any operator (``[memory]`` events), in start order; the peak is at
    operator granularity (a temporary an operator allocates and frees inside itself is not seen)."""
    events = sorted(profiler.events(), key=lambda event: event.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
