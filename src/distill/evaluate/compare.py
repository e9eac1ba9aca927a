"""Classifiers side by side: task metrics, fidelity to the teacher, calibration, inherited errors and cost,
for every model on the same test set, measured the same way in one process."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distill.config import EvaluationConfig
from distill.data.tokens import collate_fn_of
from distill.errors import DistillError
from distill.evaluate.metrics import (
    accuracy,
    agreement,
    calibration,
    confusion_matrix,
    error_count,
    gap_recovered,
    inherited_errors,
    macro_f1,
    mean_jsd_to_teacher,
    mean_kl_to_teacher,
    per_class_f1,
)
from distill.evaluate.speed import interleaved_latency_ms, peak_forward_memory, size_on_disk
from distill.models import count_parameters, forward_logits

# Rows that are students of the teacher (distilled or compressed variants); the baseline is the reference.
STUDENT_PREFIX = "student"


def first_batch(dataset: Dataset, batch_size: int, device: str | torch.device) -> dict[str, Any]:
    loader = DataLoader(dataset, batch_size=min(batch_size, len(dataset)), shuffle=False,  # type: ignore[arg-type]
                        collate_fn=collate_fn_of(dataset))
    batch = next(iter(loader))
    return {key: value.to(device) for key, value in batch.items() if key != "labels"}


@torch.no_grad()
def predict_timed(model: nn.Module, dataset: Dataset, *, batch_size: int, device: str | torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Logits and labels of the whole dataset, and the throughput of these very forward passes (samples/s: the
    batch size over the median time of the full-size batches after the first, which is the warm-up); the
    prediction pass doubles as the throughput measurement rather than timing extra passes."""
    was_training = model.training
    model.eval()
    all_logits, all_labels, seconds = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    for batch in loader:
        batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
        size = int(batch["labels"].shape[0])
        if not seconds and len(dataset) <= batch_size:  # type: ignore[arg-type]
            forward_logits(model, batch)  # a single batch: warm up on it before timing it
        start = time.perf_counter()
        output = forward_logits(model, batch)
        if output.is_cuda:
            torch.cuda.synchronize(output.device)
        seconds.append((size, time.perf_counter() - start))
        all_logits.append(output.float().cpu())
        all_labels.append(batch["labels"].cpu())
    model.train(was_training)
    full = [elapsed for size, elapsed in seconds if size == seconds[0][0]]
    timed = full[1:] or full
    rate = seconds[0][0] / max(statistics.median(timed), 1e-9)
    return torch.cat(all_logits), torch.cat(all_labels), rate


def check_label_sets(logits: dict[str, torch.Tensor], labels: torch.Tensor) -> int:
    """One label set for all: every model predicts the same number of classes, and every test label is one of
    them. Returns that number."""
    sizes = {name: int(value.shape[-1]) for name, value in logits.items()}
    if len(set(sizes.values())) > 1:
        raise DistillError(f"the models predict different label sets and cannot be compared: "
                           f"{', '.join(f'{name} {size} classes' for name, size in sizes.items())}")
    num_classes = next(iter(sizes.values()))
    if labels.numel() and (int(labels.max()) >= num_classes or int(labels.min()) < 0):
        raise DistillError(f"the test labels run from {int(labels.min())} to {int(labels.max())} but the models "
                           f"predict {num_classes} classes; models and data must share one label set")
    return num_classes


def _cost_rows(models: dict[str, nn.Module], batches: dict[str, Any], throughput: dict[str, float],
               memory: dict[str, dict[str, int]], evaluation: EvaluationConfig, model_dirs: dict[str, Path]
               ) -> tuple[dict[str, dict[str, Any]], float | None]:
    """What each model costs: parameters, size on disk, latency at two batch sizes (all models timed side by side,
    see ``interleaved_latency_ms``), throughput, peak memory; and the timing rounds' spread."""
    timing, spread = interleaved_latency_ms(models, batches["latency"], runs=evaluation.latency_runs)
    single, single_spread = interleaved_latency_ms(models, batches["single"], runs=evaluation.latency_b1_runs)
    rows = {name: {
        "params": count_parameters(model),
        "size_bytes": size_on_disk(model_dirs[name]) if name in model_dirs else None,
        "latency_ms": round(timing[name]["median"], 4),
        "latency_p95_ms": round(timing[name]["p95"], 4),
        "latency_b1_ms": round(single[name]["median"], 4),
        "latency_b1_p95_ms": round(single[name]["p95"], 4),
        "throughput": round(throughput[name], 1),
        "peak_memory_bytes": memory[name]["total"],
        "activation_memory_bytes": memory[name]["activations"],
    } for name, model in models.items()}
    known = [value for value in (spread, single_spread) if value is not None]
    return rows, max(known) if known else None


def _quality(metrics: dict[str, Any], logits: dict[str, torch.Tensor], labels: torch.Tensor, num_classes: int,
             evaluation: EvaluationConfig) -> dict[str, Any]:
    """Task metrics of every model, and its fidelity to the teacher; returns the per-model details."""
    details: dict[str, Any] = {}
    for name, model_logits in logits.items():
        reliability = calibration(model_logits, labels, bins=evaluation.calibration_bins)
        metrics[name].update({
            "accuracy": round(accuracy(model_logits, labels), 6),
            "errors": error_count(model_logits, labels),
            "macro_f1": round(macro_f1(model_logits, labels, num_classes), 6),
            "ece": round(reliability["ece"], 6),
        })
        details[name] = {"confusion": confusion_matrix(model_logits, labels, num_classes).tolist(),
                         "per_class_f1": [None if value is None else round(value, 6)
                                          for value in per_class_f1(model_logits, labels, num_classes)],
                         "reliability": reliability}
        if "teacher" in logits and name != "teacher":
            inherited = inherited_errors(model_logits, logits["teacher"], labels)
            metrics[name].update({
                "agreement": round(agreement(model_logits, logits["teacher"]), 6),
                "kl_to_teacher": round(mean_kl_to_teacher(model_logits, logits["teacher"]), 6),
                "jsd_to_teacher": round(mean_jsd_to_teacher(model_logits, logits["teacher"]), 6),
                "inherited_errors": inherited["inherited"],
                "inherited_share": inherited["inherited_share"],
            })
            details[name]["inherited"] = inherited
    return details


def _comparisons(metrics: dict[str, Any], names: list[str], error_key: str = "errors") -> None:
    """The run-level figures: the student's agreement, speed-up and compression, and every student's share of
    the baseline's gap to the teacher (in ``error_key``: errors, wrong label decisions, mean squared error)."""
    if "teacher" in names and "student" in names:
        metrics["agreement"] = metrics["student"].get("agreement")
        metrics["speedup"] = round(metrics["teacher"]["latency_ms"] / max(metrics["student"]["latency_ms"], 1e-9), 3)
        metrics["compression"] = round(metrics["teacher"]["params"] / max(metrics["student"]["params"], 1), 3)
    if "teacher" in names and "baseline" in names:
        for name in names:
            if name.startswith(STUDENT_PREFIX):
                recovered = gap_recovered(teacher_errors=metrics["teacher"][error_key],
                                          baseline_errors=metrics["baseline"][error_key],
                                          student_errors=metrics[name][error_key])
                metrics[name]["gap_recovered"] = None if recovered is None else round(recovered, 4)
        if "student" in names:
            metrics["gap_recovered"] = metrics["student"]["gap_recovered"]


def evaluate_models(models: dict[str, nn.Module], test: Dataset, *, evaluation: EvaluationConfig,
                    device: str | torch.device = "cpu", model_dirs: dict[str, Path] | None = None,
                    show_progress: bool = False, model_tests: dict[str, Dataset] | None = None,
                    target_kind: str = "class") -> dict[str, Any]:
    """Metrics for each model and the comparisons between them (``metrics.json`` minus run facts).

    ``models`` is ordered: teacher, baseline, student, then variants (``student_int8``, ...). ``model_dirs``
    names each model's exported folder, for its size on disk. ``model_tests`` gives a model its own view of the
    same test samples in the same order (text tokenised with its own tokenizer); the others read ``test``."""
    if len(test) == 0:  # type: ignore[arg-type]
        raise DistillError("the evaluation split is empty: there is nothing to evaluate on")
    if not models:
        raise DistillError("no models to evaluate")
    started = time.perf_counter()
    tests = {name: (model_tests or {}).get(name, test) for name in models}
    batches = {kind: {name: first_batch(tests[name], size, device) for name in models} for kind, size in
               (("latency", evaluation.latency_batch_size), ("single", 1), ("throughput", evaluation.batch_size))}
    logits: dict[str, torch.Tensor] = {}
    metrics: dict[str, Any] = {"models": list(models)}
    labels = torch.empty(0, dtype=torch.long)
    throughput: dict[str, float] = {}
    memory: dict[str, dict[str, int]] = {}
    with Progress(transient=True, disable=not show_progress) as progress:
        task = progress.add_task("evaluating", total=len(models) + 1)
        for name, model in models.items():
            progress.update(task, description=f"evaluating {name}")
            model.to(device)
            try:
                logits[name], labels, throughput[name] = predict_timed(model, tests[name],
                                                                       batch_size=evaluation.batch_size, device=device)
            except RuntimeError as error:  # shapes: a model meeting data it was not trained on
                raise DistillError(f"the {name} cannot run on the evaluation inputs: {error}".split("\n")[0]) from None
            # it just ran at this size: no warm-up
            memory[name] = peak_forward_memory(model, batches["throughput"][name], warmup=False)
            progress.advance(task)
        progress.update(task, description="timing the models side by side")
        rows, spread = _cost_rows(models, batches, throughput, memory, evaluation, model_dirs or {})
        progress.advance(task)
    for name, row in rows.items():
        metrics[name] = row
    if target_kind == "class":
        num_classes = check_label_sets(logits, labels)
        details = _quality(metrics, logits, labels, num_classes, evaluation)
    else:
        from distill.evaluate.target_metrics import multilabel_quality, regression_quality

        num_classes = int(next(iter(logits.values())).shape[-1])
        quality = multilabel_quality if target_kind == "multi_label" else regression_quality
        details = quality(metrics, logits, labels)
    metrics.update({"test_size": int(labels.shape[0]), "num_classes": num_classes, "target_kind": target_kind,
                    "latency_batch_size": evaluation.latency_batch_size,
                    "throughput_batch_size": int(next(iter(next(iter(batches["throughput"].values())).values()))
                                                 .shape[0]),
                    "latency_runs": evaluation.latency_runs, "latency_b1_runs": evaluation.latency_b1_runs,
                    "threads": torch.get_num_threads(), "device": str(torch.device(device)),
                    "latency_spread": None if spread is None else round(spread, 4)})
    _comparisons(metrics, list(logits), {"class": "errors", "multi_label": "label_errors", "regression": "mse"}[
        target_kind])
    metrics["details"] = details
    metrics["evaluation_seconds"] = round(time.perf_counter() - started, 3)
    return metrics
