"""Shared by the benchmark scripts: mean ± std and the results file."""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

RESULTS = Path(__file__).parent / "results"


def mean_std(values: list[float]) -> tuple[float, float]:
    clean = [value for value in values if value is not None]
    if not clean:
        return float("nan"), float("nan")
    return statistics.fmean(clean), statistics.stdev(clean) if len(clean) > 1 else 0.0


def fmt(values: list[float], digits: int = 1, percent: bool = False) -> str:
    mean, std = mean_std(values)
    scale = 100 if percent else 1
    suffix = "%" if percent else ""
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}{suffix}"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(), "cuda": torch.cuda.is_available()}


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"command": "python " + " ".join(sys.argv), "machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


@contextlib.contextmanager
def optimizer_step_stamps() -> Iterator[list[float]]:
    """Timestamps of ``distill.trainer.fit``'s optimizer steps, taken while the block runs: ``lr_multiplier`` is
    wrapped so that every call (LambdaLR calls it once per ``scheduler.step()``, i.e. once per optimizer step,
    after the step's own work) appends ``time.perf_counter()``. The first stamp is LambdaLR's call at
    construction (setup), so per-step times start from ``stamps[1:]``."""
    from distill import trainer

    stamps: list[float] = []
    original = trainer.lr_multiplier

    def timed_multiplier(*args: Any, **kwargs: Any) -> Any:
        multiplier = original(*args, **kwargs)

        def timed(step: int) -> float:
            stamps.append(time.perf_counter())
            return multiplier(step)
        return timed

    trainer.lr_multiplier = timed_multiplier
    try:
        yield stamps
    finally:
        trainer.lr_multiplier = original
