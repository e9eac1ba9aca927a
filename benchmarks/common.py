"""Shared by the benchmark scripts: mean ± std and the results file."""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

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
