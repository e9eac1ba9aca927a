"""Metrics of multi-label and regression models, and their fidelity to the teacher: pure functions of the
prediction tensors, like ``distill.evaluate.metrics`` for single-label classifiers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# A label is predicted when its sigmoid is above one half (logit > 0).
THRESHOLD_LOGIT = 0.0


def _f1(true_positive: Tensor, predicted: Tensor, actual: Tensor) -> Tensor:
    return 2 * true_positive / (predicted + actual).clamp(min=1)


def per_label_f1(logits: Tensor, labels: Tensor) -> list[float | None]:
    """F1 of each label column (None for one neither present nor predicted)."""
    predicted, actual = (logits > THRESHOLD_LOGIT).double(), labels.double()
    hits = (predicted * actual).sum(0)
    f1 = _f1(hits, predicted.sum(0), actual.sum(0))
    present = (predicted.sum(0) + actual.sum(0)) > 0
    return [float(value) if present[index] else None for index, value in enumerate(f1)]


def micro_f1(logits: Tensor, labels: Tensor) -> float:
    predicted, actual = (logits > THRESHOLD_LOGIT).double(), labels.double()
    return float(_f1((predicted * actual).sum(), predicted.sum(), actual.sum()))


def average_precision(scores: Tensor, positives: Tensor) -> float | None:
    """Area under the precision-recall curve of one label, as the mean precision at each positive's rank (ties
    broken by order); None when the label has no positive."""
    count = int(positives.sum())
    if count == 0:
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    hits = positives[order].double()
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    return float((precision_at * hits).sum() / count)


def mean_average_precision(logits: Tensor, labels: Tensor) -> float:
    values = [average_precision(logits[:, index], labels[:, index]) for index in range(labels.shape[1])]
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else 0.0


def multilabel_quality(metrics: dict[str, Any], logits: dict[str, Tensor], labels: Tensor) -> dict[str, Any]:
    """Per model: micro / macro F1, mAP, exact-match accuracy, wrong label decisions; agreement with the teacher
    is the share of label decisions both make alike. Returns the per-model details (F1 of every label)."""
    details = {}
    for name, model_logits in logits.items():
        decisions = model_logits > THRESHOLD_LOGIT
        per_label = per_label_f1(model_logits, labels)
        present = [value for value in per_label if value is not None]
        metrics[name].update({
            "micro_f1": round(micro_f1(model_logits, labels), 6),
            "macro_f1": round(sum(present) / len(present), 6) if present else 0.0,
            "map": round(mean_average_precision(model_logits, labels), 6),
            "subset_accuracy": round(float((decisions == labels.bool()).all(1).double().mean()), 6),
            "label_errors": int((decisions != labels.bool()).sum()),
        })
        if "teacher" in logits and name != "teacher":
            teacher_decisions = logits["teacher"] > THRESHOLD_LOGIT
            metrics[name]["agreement"] = round(float((decisions == teacher_decisions).double().mean()), 6)
        details[name] = {"per_label_f1": [None if value is None else round(value, 6) for value in per_label]}
    return details


def regression_quality(metrics: dict[str, Any], predictions: dict[str, Tensor], targets: Tensor) -> dict[str, Any]:
    """Per model: MAE, RMSE, R² (1 - squared error / the targets' variance), and for students the mean squared
    difference to the teacher's predictions."""
    targets = targets.reshape(-1).double()
    variance = float(((targets - targets.mean()) ** 2).sum())
    for name, values in predictions.items():
        values = values.reshape(-1).double()
        squared = float(((values - targets) ** 2).sum())
        metrics[name].update({
            "mae": round(float((values - targets).abs().mean()), 6),
            "mse": round(squared / max(len(targets), 1), 6),
            "rmse": round((squared / max(len(targets), 1)) ** 0.5, 6),
            "r2": round(1 - squared / variance, 6) if variance > 0 else None,
        })
        if "teacher" in predictions and name != "teacher":
            teacher = predictions["teacher"].reshape(-1).double()
            metrics[name]["mse_to_teacher"] = round(float(((values - teacher) ** 2).mean()), 6)
    return {}
