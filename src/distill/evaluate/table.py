"""The comparison table, defined once as columns and rendered to the terminal (rich), markdown and HTML.

A column shows only when some row has its key, so another model kind slots in by writing its own keys
(perplexity for language models, cosine for encoders) without a new table."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable


def _percent(value: float) -> str:
    return f"{value:.2%}"


def _count(value: float) -> str:
    return f"{int(value):,}"


def _bytes(value: float) -> str:
    return f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"


def _fixed(digits: int) -> Callable[[float], str]:
    return lambda value: f"{value:.{digits}f}"


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    format: Callable[[float], str]
    better: str  # "higher" or "lower": for the Pareto plots and for reading the table


COLUMNS = [
    Column("errors", "errors", _count, "lower"),
    Column("accuracy", "accuracy", _percent, "higher"),
    Column("macro_f1", "macro-F1", _fixed(4), "higher"),
    Column("micro_f1", "micro-F1", _fixed(4), "higher"),
    Column("map", "mAP", _fixed(4), "higher"),
    Column("subset_accuracy", "exact match", _percent, "higher"),
    Column("label_errors", "wrong labels", _count, "lower"),
    Column("mae", "MAE", _fixed(4), "lower"),
    Column("rmse", "RMSE", _fixed(4), "lower"),
    Column("r2", "R2", _fixed(4), "higher"),
    Column("mse_to_teacher", "MSE to teacher", _fixed(4), "lower"),
    Column("perplexity", "perplexity", _fixed(2), "lower"),
    Column("task_exact_match", "task exact match", _percent, "higher"),
    Column("agreement", "agrees w/ teacher", _percent, "higher"),
    Column("kl_to_teacher", "KL to teacher", _fixed(4), "lower"),
    Column("jsd_to_teacher", "JSD to teacher", _fixed(4), "lower"),
    Column("cosine", "cosine to teacher", _fixed(4), "higher"),
    Column("gap_recovered", "gap recovered", _percent, "higher"),
    Column("inherited_share", "inherits teacher errors", _percent, "lower"),
    Column("ece", "ECE", _fixed(4), "lower"),
    Column("params", "params", _count, "lower"),
    Column("size_bytes", "size on disk", _bytes, "lower"),
    Column("latency_b1_ms", "ms at batch 1 (median)", _fixed(3), "lower"),
    Column("latency_b1_p95_ms", "p95", _fixed(3), "lower"),
    Column("throughput", "samples/s", _fixed(0), "higher"),
    Column("peak_memory_bytes", "peak memory", _bytes, "lower"),
]

LABELS = {"baseline": "baseline student", "student": "distilled student", "student_int8": "distilled student, int8",
          "student_finetuned": "distilled student, then fine-tuned on gold labels",
          "student_pruned": "distilled student, pruned + fine-tuned",
          "student_pruned_int8": "distilled student, pruned + int8"}


def model_names(metrics: dict[str, Any]) -> list[str]:
    """The model rows of a metrics dict, in order (older metrics.json files have no ``models`` list)."""
    names = metrics.get("models") or ["teacher", "baseline", "student"]
    return [name for name in names if isinstance(metrics.get(name), dict)]


def rows_of(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    return [(prefix + LABELS.get(name, name), metrics[name]) for name in model_names(metrics)]


def columns_for(rows: list[tuple[str, dict[str, Any]]]) -> list[Column]:
    return [column for column in COLUMNS if any(row.get(column.key) is not None for _, row in rows)]


def cell(column: Column, row: dict[str, Any]) -> str:
    value = row.get(column.key)
    return "-" if value is None else column.format(value)


def markdown_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    columns = columns_for(rows)
    lines = ["| model | " + " | ".join(column.header for column in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, row in rows:
        lines.append(f"| {label} | " + " | ".join(cell(column, row) for column in columns) + " |")
    return "\n".join(lines)


def html_table(rows: list[tuple[str, dict[str, Any]]], *, table_id: str = "comparison") -> str:
    columns = columns_for(rows)
    head = "".join(f"<th>{html.escape(column.header)}</th>" for column in columns)
    body = "".join(
        f"<tr><th scope=\"row\">{html.escape(label)}</th>"
        + "".join(f"<td>{html.escape(cell(column, row))}</td>" for column in columns) + "</tr>"
        for label, row in rows)
    return (f'<table id="{table_id}"><thead><tr><th>model</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")
