"""Evaluation of causal LMs side by side: held-out perplexity, next-token accuracy and top-1 agreement with the
teacher, computed chunk by chunk from final hidden states (no full-vocabulary logits for a whole batch).

Perplexity is ``exp(mean next-token cross-entropy)`` over the supervised positions of the test set (every
position of a packed block; assistant tokens of chat data), each model with its own full output head.
Agreement is the share of those positions where a model's most likely next token is the teacher's, over the
vocabulary both share.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from distill.capture import SignalCapture
from distill.config import EvaluationConfig
from distill.data.lm import IGNORE_INDEX
from distill.data.tokens import collate_fn_of
from distill.models import count_parameters


def limit_tokens(dataset: Dataset, max_tokens: int | None) -> Dataset:
    """The first examples of ``dataset`` holding at most ``max_tokens`` supervised tokens (at least one)."""
    if max_tokens is None:
        return dataset
    total, kept = 0, 0
    for index in range(len(dataset)):  # type: ignore[arg-type]
        total += int((dataset[index]["labels"] != IGNORE_INDEX).sum())
        if total > max_tokens and kept:
            break
        kept += 1
    return Subset(dataset, range(kept)) if kept < len(dataset) else dataset  # type: ignore[arg-type]


@torch.no_grad()
def score_tokens(model: nn.Module, dataset: Dataset, *, batch_size: int = 16, chunk_size: int = 1024,
                 vocab_size: int | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Summed next-token cross-entropy, correct top-1 predictions and the top-1 ids (over the first
    ``vocab_size`` logits) at every supervised position of ``dataset``, in order, and the forward throughput."""
    was_training = model.training
    model.eval()
    capture = SignalCapture(model, {"final_hidden"}, role="model")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    nll, correct, count, positions, seconds = 0.0, 0, 0, 0, 0.0
    predictions: list[Tensor] = []
    for batch in loader:
        batch = {key: value.to(device) for key, value in batch.items()}
        started = time.perf_counter()
        final = capture.forward(model, batch)["final_hidden"]
        seconds += time.perf_counter() - started
        labels = batch["labels"].reshape(-1)
        rows = (labels != IGNORE_INDEX).nonzero().squeeze(1)
        hidden = final.hidden.reshape(-1, final.hidden.shape[-1]).index_select(0, rows)
        targets = labels.index_select(0, rows)
        for start in range(0, len(rows), chunk_size):
            logits = F.linear(hidden[start:start + chunk_size], final.weight, final.bias).float()
            chunk_targets = targets[start:start + chunk_size]
            nll += float(F.cross_entropy(logits, chunk_targets, reduction="sum"))
            top = (logits[:, :vocab_size] if vocab_size else logits).argmax(-1)
            correct += int((top == chunk_targets).sum())
            predictions.append(top.cpu())
        count += len(rows)
        positions += int(batch["attention_mask"].sum())
    capture.remove()
    model.train(was_training)
    return {"nll_sum": nll, "correct": correct, "count": count,
            "top1": torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long),
            "tokens_per_s": positions / max(seconds, 1e-9)}


def evaluate_language_models(models: dict[str, nn.Module], test: Dataset, *, evaluation: EvaluationConfig,
                             vocab_size: int | None = None, batch_size: int = 16,
                             device: str | torch.device = "cpu") -> dict[str, Any]:
    """``metrics.json`` entries of an LM run: per model ``perplexity``, ``loss`` (nats per token),
    ``top1_accuracy``, ``params``, ``tokens_per_s``; students ``agreement`` with the teacher; and the share of
    the baseline's log-perplexity gap to the teacher that distillation recovered."""
    test = limit_tokens(test, evaluation.max_test_tokens)
    scores: dict[str, dict[str, Any]] = {}
    metrics: dict[str, Any] = {}
    for name, model in models.items():
        model.to(device)
        scores[name] = score_tokens(model, test, batch_size=batch_size, vocab_size=vocab_size, device=device)
        score = scores[name]
        loss = score["nll_sum"] / max(score["count"], 1)
        metrics[name] = {"perplexity": round(math.exp(loss), 4), "loss": round(loss, 6),
                         "top1_accuracy": round(score["correct"] / max(score["count"], 1), 6),
                         "params": count_parameters(model), "tokens_per_s": round(score["tokens_per_s"], 1)}
    metrics.update({"task": "language-modeling", "test_tokens": next(iter(scores.values()))["count"],
                    "test_examples": len(test), "threads": torch.get_num_threads()})  # type: ignore[arg-type]
    if "teacher" in scores:
        for name in ("baseline", "student"):
            if name in scores:
                same = scores[name]["top1"] == scores["teacher"]["top1"]
                metrics[name]["agreement"] = round(float(same.float().mean()) if len(same) else 0.0, 6)
        if "student" in scores:
            metrics["agreement"] = metrics["student"]["agreement"]
            metrics["compression"] = round(metrics["teacher"]["params"] / max(metrics["student"]["params"], 1), 3)
            metrics["speedup"] = round(metrics["student"]["tokens_per_s"] / max(metrics["teacher"]["tokens_per_s"],
                                                                               1e-9), 3)
    if {"teacher", "baseline", "student"} <= set(scores):
        gap = metrics["baseline"]["loss"] - metrics["teacher"]["loss"]
        metrics["gap_recovered"] = (round((metrics["baseline"]["loss"] - metrics["student"]["loss"]) / gap, 4)
                                    if gap > 0 else None)
    return metrics


def print_lm_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"{metrics.get('recipe', 'run')} (held-out: {metrics.get('test_tokens'):,} tokens, seed "
                        f"{metrics.get('seed')})")
    for column in ("model", "perplexity", "next-token acc.", "top-1 agrees w/ teacher", "params", "tokens/s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in ("teacher", "baseline", "student"):
        if name in metrics:
            row = metrics[name]
            label = {"baseline": "baseline student (CE only)", "student": "distilled student"}.get(name, name)
            table.add_row(label, f"{row['perplexity']:.2f}", f"{row['top1_accuracy']:.2%}",
                          f"{row['agreement']:.2%}" if "agreement" in row else "-", f"{row['params']:,}",
                          f"{row['tokens_per_s']:.0f}")
    console = Console()
    console.print(table)
    if metrics.get("gap_recovered") is not None:
        console.print(f"gap recovered: {metrics['gap_recovered']:.1%} of the baseline's log-perplexity gap to the "
                      "teacher")
    console.print(f"results: {run_dir}/metrics.json  student: {run_dir}/student/  log: {run_dir}/log.jsonl")
