"""The report's figures, as PNG bytes (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLOURS = plt.get_cmap("tab10").colors


def to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def training_curves(log: list[dict[str, Any]], title: str) -> bytes | None:
    """Every loss term of every stage against the optimizer step; validation lines as dashed lines."""
    stages = list(dict.fromkeys(record["stage"] for record in log if "stage" in record))
    if not stages:
        return None
    figure, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for axis, stage in zip(axes[0], stages):
        records = [record for record in log if record.get("stage") == stage]
        keys = sorted({key for record in records for key in record
                       if key.startswith(("loss", "eval/loss")) and isinstance(record[key], (int, float))})
        for index, key in enumerate(keys):
            points = [(record["step"], record[key]) for record in records if key in record]
            steps, values = zip(*points)
            axis.plot(steps, values, label=key, color=COLOURS[index % len(COLOURS)],
                      linestyle="--" if key.startswith("eval/") else "-", marker="o" if len(points) < 4 else None)
        if any(value > 0 for record in records for key in keys for value in [record.get(key, 0)]):
            positive = [record[key] for record in records for key in keys if record.get(key, 0) > 0]
            if positive and max(positive) / min(positive) > 50:
                axis.set_yscale("log")
        axis.set_title(f"{stage}")
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    figure.suptitle(title)
    return to_png(figure)


def pareto_front(points: list[tuple[str, float, float]], *, lower_is_better: bool = False) -> list[str]:
    """Names of the points no other point beats on both cost (lower) and quality (higher, or lower when
    ``lower_is_better``, e.g. perplexity)."""
    if lower_is_better:
        points = [(name, cost, -score) for name, cost, score in points]
    front = []
    for name, cost, score in points:
        dominated = any((other_cost <= cost and other_score >= score) and (other_cost < cost or other_score > score)
                        for _, other_cost, other_score in points)
        if not dominated:
            front.append(name)
    return front


def pareto_plot(points: list[tuple[str, float, float]], *, xlabel: str, ylabel: str, title: str,
                log_x: bool = True, lower_is_better: bool = False) -> bytes:
    figure, axis = plt.subplots(figsize=(6.4, 4.4))
    front = pareto_front(points, lower_is_better=lower_is_better)
    for index, (name, cost, score) in enumerate(points):
        on_front = name in front
        axis.scatter(cost, score, s=60 if on_front else 35, color=COLOURS[index % len(COLOURS)],
                     edgecolors="black" if on_front else "none", zorder=3, label=name)
    frontier = sorted((cost, score) for name, cost, score in points if name in front)
    if len(frontier) > 1:
        axis.step(*zip(*frontier), where="post", color="grey", linestyle=":", zorder=2, label="Pareto front")
    if lower_is_better:
        axis.invert_yaxis()  # better stays up
    if log_x and all(cost > 0 for _, cost, _ in points):
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return to_png(figure)


def _grid(count: int, width: float = 3.2, height: float = 3.2) -> tuple[Figure, list[Any]]:
    columns = min(count, 4)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = [axis for row in axes for axis in row]
    for axis in flat[count:]:
        axis.axis("off")
    return figure, flat[:count]


def reliability_diagrams(models: list[tuple[str, dict[str, Any]]]) -> bytes:
    """Per model: accuracy of each confidence bin against its mean confidence; the diagonal is perfect
    calibration, bars below it are overconfidence."""
    figure, axes = _grid(len(models))
    for axis, (name, reliability) in zip(axes, models):
        bins = reliability["bins"]
        edges = np.linspace(0, 1, bins + 1)
        counts = np.array(reliability["count"])
        accuracy = np.array(reliability["accuracy"])
        confidence = np.array(reliability["confidence"])
        filled = counts > 0
        axis.bar(edges[:-1][filled], accuracy[filled], width=1 / bins, align="edge", color=COLOURS[0], alpha=0.8,
                 edgecolor="black", linewidth=0.5, label="accuracy")
        # the gap between a bin's accuracy and its mean confidence: red where overconfident, green where under
        overconfident = confidence > accuracy
        for mask, colour, label in ((filled & overconfident, COLOURS[3], "overconfident"),
                                    (filled & ~overconfident, COLOURS[2], "underconfident")):
            if mask.any():
                axis.bar(edges[:-1][mask], np.abs(confidence - accuracy)[mask],
                         bottom=np.minimum(confidence, accuracy)[mask], width=1 / bins, align="edge", fill=False,
                         edgecolor=colour, hatch="////", linewidth=0.8, label=label)
        axis.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(f"{name}\nECE {reliability['ece']:.4f}", fontsize=9)
        axis.set_xlabel("confidence")
        axis.set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return to_png(figure)


def confusion_matrices(models: list[tuple[str, list[list[int]]]], class_names: list[str] | None = None) -> bytes:
    """Row-normalised confusion (share of each true class predicted as each class), log colour scale so the
    off-diagonal mistakes show; counts written where there are few classes, and the classes named on the axes
    when their names are known."""
    from matplotlib.colors import LogNorm

    figure, axes = _grid(len(models), 3.4, 3.2)
    for axis, (name, matrix) in zip(axes, models):
        counts = np.array(matrix, dtype=float)
        shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        image = axis.imshow(np.maximum(shares, 1e-4), cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1))
        size = len(counts)
        if size <= 12:
            for row in range(size):
                for column in range(size):
                    if counts[row, column]:
                        axis.text(column, row, int(counts[row, column]), ha="center", va="center", fontsize=6,
                                  color="black" if shares[row, column] > 0.3 else "white")
        axis.set_title(f"{name} ({int(counts.sum() - np.trace(counts))} errors)", fontsize=9)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        if class_names and len(class_names) == size and size <= 12:
            axis.set_xticks(range(size), class_names, rotation=90, fontsize=6)
            axis.set_yticks(range(size), class_names, fontsize=6)
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    return to_png(figure)


def inherited_errors_plot(rows: list[tuple[str, dict[str, Any]]]) -> bytes:
    """For each model compared with the teacher: of the teacher's mistakes, the share it repeats with the same
    wrong answer, the share it gets right, and the share it gets wrong differently."""
    figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 3.8))
    names = [name for name, _ in rows]
    total = [max(row["teacher_errors"], 1) for _, row in rows]
    inherited = [row["inherited"] / size for (_, row), size in zip(rows, total)]
    fixed = [row["fixed"] / size for (_, row), size in zip(rows, total)]
    other = [1 - a - b for a, b in zip(inherited, fixed)]
    positions = np.arange(len(rows))
    axis.bar(positions, inherited, color=COLOURS[3], label="same wrong answer (inherited)")
    axis.bar(positions, other, bottom=inherited, color=COLOURS[7], label="another wrong answer")
    axis.bar(positions, fixed, bottom=[a + b for a, b in zip(inherited, other)], color=COLOURS[2], label="right")
    for position, share in zip(positions, inherited):
        axis.text(position, share / 2, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
    axis.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
    axis.set_ylim(0, 1)
    axis.set_ylabel(f"share of the teacher's {rows[0][1]['teacher_errors']} errors")
    axis.set_title("What each model does where the teacher is wrong")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return to_png(figure)
