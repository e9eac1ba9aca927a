"""Evaluate teacher, baseline and student side by side on the same test set, and print the table."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from rich import box
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import Dataset

from distill.config import EvaluationConfig
from distill.evaluate.compare import evaluate_models  # noqa: F401  (its home before compare.py)
from distill.evaluate.speed import speed_summary
from distill.evaluate.table import cell, columns_for, model_names
from distill.models import count_parameters


def evaluate_embeddings(models: dict[str, nn.Module], test: Dataset, *, evaluation: EvaluationConfig,
                        device: str | torch.device = "cpu") -> dict[str, Any]:
    """For encoders: how closely each student's embeddings follow the teacher's, and encoding throughput."""
    from distill.evaluate.embedding import embedding_cosine, encode, neighbour_overlap

    embeddings, metrics = {}, {}
    for name, model in models.items():
        model.to(device)
        encode(model, torch.utils.data.Subset(test, range(min(len(test), 64))), signal=evaluation.embedding_signal,
               device=device)  # warm-up
        embeddings[name], throughput = encode(model, test, signal=evaluation.embedding_signal, device=device)
        metrics[name] = {"params": count_parameters(model), "throughput": round(throughput, 2)}
    metrics.update({"task": "embedding", "test_size": len(test), "threads": torch.get_num_threads()})
    if "teacher" in embeddings:
        for name in ("student", "baseline"):
            if name in embeddings:
                if embeddings[name].shape[-1] == embeddings["teacher"].shape[-1]:
                    metrics[name]["cosine"] = round(embedding_cosine(embeddings[name], embeddings["teacher"]), 6)
                metrics[name]["neighbour_overlap"] = round(
                    neighbour_overlap(embeddings[name], embeddings["teacher"], k=evaluation.neighbours), 6)
        if "student" in embeddings:
            metrics["embedding_cosine"] = metrics["student"].get("cosine")
            metrics["neighbour_overlap"] = metrics["student"]["neighbour_overlap"]
            metrics["throughput_ratio"] = round(metrics["student"]["throughput"] / metrics["teacher"]["throughput"], 3)
            metrics["compression"] = round(metrics["teacher"]["params"] / max(metrics["student"]["params"], 1), 3)
    return metrics


# The terminal table's columns, most telling first: on a narrow terminal (or a log file, 80 columns) the last ones
# go rather than every cell being cut to "37.8 …"; every column is in report.md / report.html.
SHORT_HEADERS = {"errors": "errors", "perplexity": "ppl", "accuracy": "accuracy", "micro_f1": "micro-F1",
                 "map": "mAP", "rmse": "RMSE", "r2": "R2", "gap_recovered": "gap rec.",
                 "agreement": "agrees", "latency_b1_ms": "ms@b1", "size_bytes": "size", "inherited_share": "inherits"}


def summary_table(metrics: dict[str, Any], width: int | None = None) -> Table:
    """The end-of-run table, fitted to ``width`` columns (default: the console's)."""
    if metrics.get("task") == "embedding":
        return _embedding_table(metrics)
    rows = [(name, metrics[name]) for name in model_names(metrics)]
    present = {column.key: column for column in columns_for(rows)}
    width = width or Console().width
    fitted: list[Any] = []
    for key in (key for key in SHORT_HEADERS if key in present):
        if len(fitted) >= 2 and _rendered_width(_table(metrics, rows, [*fitted, present[key]], 0)) > width:
            break
        fitted.append(present[key])
    order = list(present)  # shown in the table's usual order
    fitted.sort(key=lambda column: order.index(column.key))
    return _table(metrics, rows, fitted, left_out=len([key for key in SHORT_HEADERS if key in present]) - len(fitted))


def _table(metrics: dict[str, Any], rows: list[tuple[str, dict[str, Any]]], columns: list[Any], left_out: int
           ) -> Table:
    table = Table(title=f"{metrics.get('recipe', 'run')} (test set of {metrics.get('test_size')}, seed "
                        f"{metrics.get('seed')}, {metrics.get('threads')} threads)", box=box.SIMPLE_HEAD,
                  pad_edge=False, caption=(f"{left_out} more column{'s' * (left_out > 1)} in `distill report RUN_DIR`"
                                           if left_out else None))
    table.add_column("model", no_wrap=True)
    for column in columns:
        table.add_column(SHORT_HEADERS[column.key], justify="right", no_wrap=True)
    for name, row in rows:
        table.add_row(name, *(cell(column, row) for column in columns))
    return table


def _rendered_width(table: Table) -> int:
    table.title = None  # a title wraps; it never widens the table
    console = Console(width=10_000, file=io.StringIO())
    console.print(table)
    return max(len(line) for line in console.file.getvalue().splitlines())


def _embedding_table(metrics: dict[str, Any]) -> Table:
    table = Table(title=f"{metrics.get('recipe', 'run')} (embeddings of {metrics.get('test_size')} test texts)")
    for column in ("model", "cosine to teacher", "top-k overlap", "params", "texts/s"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name in ("teacher", "baseline", "student"):
        if name in metrics:
            row = metrics[name]
            table.add_row(name, f"{row['cosine']:.4f}" if "cosine" in row else "-",
                          f"{row['neighbour_overlap']:.3f}" if "neighbour_overlap" in row else "-",
                          f"{row['params']:,}", f"{row['throughput']:.1f}")
    return table


def baseline_warning(metrics: dict[str, Any], *, tolerance: float = 0.01) -> str | None:
    """Said plainly when the distilled student's accuracy is more than ``tolerance`` below the same student trained on
    labels alone, with what usually helps; None otherwise (or without a baseline)."""
    student, baseline = metrics.get("student") or {}, metrics.get("baseline") or {}
    if student.get("accuracy") is None or baseline.get("accuracy") is None:
        return None
    shortfall = baseline["accuracy"] - student["accuracy"]
    if shortfall <= tolerance:
        return None
    # Why this advice: on small students and short schedules, soft targets at a high temperature and alpha cost
    # up to 8 points and the cost shrinks with the schedule (docs/benchmarks.md, the KD temperature/alpha sweep).
    return (f"the distilled student is {100 * shortfall:.1f} points below the same student trained on labels alone. "
            "One seed proves little: compare over seeds (`distill sweep RECIPE --seeds 3`). Small students on short "
            "schedules often lose to soft targets at a high temperature or soft-term weight: try a lower one (e.g. "
            "`--grid objective.temperature=1,2`), or more epochs.")


def print_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    console = Console()
    console.print(summary_table(metrics))
    if metrics.get("gap_recovered") is not None:
        measure = {"multi_label": "wrong labels", "regression": "MSE"}.get(metrics.get("target_kind"), "errors")
        console.print(f"gap recovered: {metrics['gap_recovered']:.1%}  "
                      f"(baseline {measure} - student {measure}) / (baseline {measure} - teacher {measure})")
    warning = baseline_warning(metrics)
    if warning is not None:
        console.print(f"[yellow]note:[/yellow] {warning}", markup=True)
    for line in speed_summary(metrics):
        console.print(line, markup=True)
    console.print(f"results: {run_dir}/metrics.json  student: {run_dir}/student/  log: {run_dir}/log.jsonl")
