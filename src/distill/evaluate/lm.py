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
from distill.errors import DistillError
from distill.evaluate.compare import first_batch
from distill.evaluate.metrics import calibration_of_confidence, inherited_of_predictions
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


class _Scores:
    """Running sums of one model over the test positions."""

    def __init__(self) -> None:
        self.nll, self.correct, self.count, self.positions, self.seconds = 0.0, 0, 0, 0, 0.0
        self.kl, self.jsd = 0.0, 0.0
        self.top1: list[Tensor] = []
        self.confidence: list[Tensor] = []


@torch.no_grad()
def score_models(models: dict[str, nn.Module], dataset: Dataset, *, batch_size: int = 16, chunk_size: int = 1024,
                 vocab_size: int | None = None,
                 device: str | torch.device = "cpu") -> tuple[dict[str, _Scores], Tensor]:
    """One pass over ``dataset`` running every model on each batch, returning per model its sums and the
    supervised next-token targets in scoring order. Per model: summed next-token cross-entropy, top-1 ids
    and their probabilities (over the first ``vocab_size`` logits) at every supervised position, forward time,
    and, when a ``teacher`` is among the models, each other model's summed forward KL(teacher || model) and
    JSD (beta 0.5) per position over the shared vocabulary: the teacher runs once for all students."""
    from distill.losses.tokens import chunked_token_kd

    captures = {name: SignalCapture(model, {"final_hidden"}, role=name) for name, model in models.items()}
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
    scores = {name: _Scores() for name in models}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn_of(dataset))
    all_targets: list[Tensor] = []
    try:
        for batch in loader:
            batch = {key: value.to(device) for key, value in batch.items()}
            labels = batch["labels"]
            flat_labels = labels.reshape(-1)
            rows = (flat_labels != IGNORE_INDEX).nonzero().squeeze(1)
            targets = flat_labels.index_select(0, rows)
            all_targets.append(targets.cpu())
            finals = {}
            for name, model in models.items():
                started = time.perf_counter()
                finals[name] = captures[name].forward(model, batch)["final_hidden"]
                scores[name].seconds += time.perf_counter() - started
                scores[name].positions += int(batch["attention_mask"].sum())
            for name, final in finals.items():
                score = scores[name]
                hidden = final.hidden.reshape(-1, final.hidden.shape[-1]).index_select(0, rows)
                for start in range(0, len(rows), chunk_size):
                    logits = F.linear(hidden[start:start + chunk_size], final.weight, final.bias).float()
                    chunk_targets = targets[start:start + chunk_size]
                    score.nll += float(F.cross_entropy(logits, chunk_targets, reduction="sum"))
                    top = torch.softmax(logits[:, :vocab_size] if vocab_size else logits, dim=-1).max(-1)
                    score.correct += int((top.indices == chunk_targets).sum())
                    score.top1.append(top.indices.cpu())
                    score.confidence.append(top.values.cpu())
                score.count += len(rows)
                if "teacher" in finals and name != "teacher":
                    teacher = finals["teacher"]
                    for divergence in ("forward_kl", "jsd"):
                        total = float(chunked_token_kd(final.hidden, final.weight, teacher.hidden, teacher.weight,
                                                       labels, student_bias=final.bias, teacher_bias=teacher.bias,
                                                       divergence=divergence, chunk_size=chunk_size, normalizer=1.0,
                                                       vocab_size=vocab_size or _shared_rows(final, teacher)))
                        if divergence == "jsd":
                            score.jsd += total
                        else:
                            score.kl += total
    finally:
        for name, model in models.items():
            captures[name].remove()
            model.train(modes[name])
    return scores, torch.cat(all_targets) if all_targets else torch.zeros(0, dtype=torch.long)


def _shared_rows(student: Any, teacher: Any) -> int | None:
    sizes = (student.weight.shape[0], teacher.weight.shape[0])
    return None if sizes[0] == sizes[1] else min(sizes)


def _costs(models: dict[str, nn.Module], block: dict[str, Tensor], runs: int, folders: dict[str, Path]
           ) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Latency of one block at batch 1 (median and p95, every model timed side by side), peak memory of that
    forward, size on disk; and the timing rounds' spread."""
    from distill.evaluate.speed import interleaved_latency_ms, peak_forward_memory, size_on_disk

    single, spread = interleaved_latency_ms(models, block, runs=runs)
    costs = {}
    for name, model in models.items():
        memory = peak_forward_memory(model, block, warmup=False)
        costs[name] = {"latency_b1_ms": round(single[name]["median"], 4),
                       "latency_b1_p95_ms": round(single[name]["p95"], 4),
                       "peak_memory_bytes": memory["total"], "activation_memory_bytes": memory["activations"],
                       "size_bytes": size_on_disk(folders[name]) if name in folders else None}
    return costs, spread


def evaluate_language_models(models: dict[str, nn.Module], test: Dataset, *, evaluation: EvaluationConfig,
                             vocab_size: int | None = None, batch_size: int = 16,
                             device: str | torch.device = "cpu",
                             model_dirs: dict[str, Path] | None = None) -> dict[str, Any]:
    """``metrics.json`` entries of an LM run, every model measured the same way in one process. Per model:
    ``perplexity``, ``loss`` (nats per token), ``top1_accuracy``, ``ece`` (next-token top-1 confidence),
    ``params``, ``tokens_per_s`` (the scoring pass, batch ``batch_size``), ``latency_b1_ms`` / ``_p95_ms``
    (one test block at batch 1), ``peak_memory_bytes``, ``size_bytes``; students also ``agreement``,
    ``kl_to_teacher`` / ``jsd_to_teacher`` (mean per position) and ``inherited`` (of the teacher's wrong
    next-token predictions, the share the student makes too, with the same wrong token); and the share of the
    baseline's log-perplexity gap to the teacher that distillation recovered."""
    test = limit_tokens(test, evaluation.max_test_tokens)
    if len(test) == 0:  # type: ignore[arg-type]
        raise DistillError("the language-model test split is empty: there is nothing to compute perplexity on "
                           "(check data.test_path, data.lm.test_fraction or data.max_length)")
    model_dirs = model_dirs or {}
    for model in models.values():
        model.to(device)
    scores, targets = score_models(models, test, batch_size=batch_size, vocab_size=vocab_size, device=device)
    block = first_batch(test, 1, device)  # one test block at batch 1: the latency and peak-memory input
    costs, spread = _costs(models, block, evaluation.latency_b1_runs, model_dirs)
    metrics: dict[str, Any] = {"models": list(models)}
    details: dict[str, dict[str, Any]] = {}
    predictions: dict[str, Tensor] = {}
    for name, model in models.items():
        score = scores[name]
        loss = score.nll / max(score.count, 1)
        predictions[name] = torch.cat(score.top1) if score.top1 else torch.zeros(0, dtype=torch.long)
        confidence = torch.cat(score.confidence) if score.confidence else torch.zeros(0)
        reliability = calibration_of_confidence(confidence, predictions[name] == targets,
                                                bins=evaluation.calibration_bins)
        details[name] = {"reliability": reliability}
        metrics[name] = {"perplexity": round(math.exp(loss), 4), "loss": round(loss, 6),
                         "top1_accuracy": round(score.correct / max(score.count, 1), 6),
                         "ece": round(reliability["ece"], 6),
                         "params": count_parameters(model),
                         "tokens_per_s": round(score.positions / max(score.seconds, 1e-9), 1),
                         **costs[name]}
    metrics.update({"task": "language-modeling", "test_tokens": scores[next(iter(models))].count,
                    "test_examples": len(test), "threads": torch.get_num_threads(),  # type: ignore[arg-type]
                    "latency_spread": None if spread is None else round(spread, 4),
                    "latency_protocol": f"one test block of {block['input_ids'].shape[1]} tokens at batch 1, "
                                        f"median and p95 of {evaluation.latency_b1_runs} runs after 5 warm-up runs"})
    if "teacher" in scores:
        teacher_top1 = predictions["teacher"]
        for name in models:
            if name == "teacher":
                continue
            score, top1 = scores[name], predictions[name]
            inherited = inherited_of_predictions(top1, teacher_top1, targets)
            metrics[name].update({
                "agreement": round(float((top1 == teacher_top1).float().mean()) if len(top1) else 0.0, 6),
                "kl_to_teacher": round(score.kl / max(score.count, 1), 6),
                "jsd_to_teacher": round(score.jsd / max(score.count, 1), 6),
                "inherited_errors": inherited["inherited"], "inherited_share": inherited["inherited_share"],
            })
            details[name]["inherited"] = inherited
        if "student" in scores:
            metrics["agreement"] = metrics["student"]["agreement"]
            metrics["compression"] = round(metrics["teacher"]["params"] / max(metrics["student"]["params"], 1), 3)
            # from the side-by-side batch-1 latency, not tokens_per_s: the scoring passes ran one model after
            # the other, so a change of load between them would show as a speed-up
            metrics["speedup"] = round(metrics["teacher"]["latency_b1_ms"]
                                       / max(metrics["student"]["latency_b1_ms"], 1e-9), 3)
    if {"teacher", "baseline", "student"} <= set(scores):
        gap = metrics["baseline"]["loss"] - metrics["teacher"]["loss"]
        metrics["gap_recovered"] = (round((metrics["baseline"]["loss"] - metrics["student"]["loss"]) / gap, 4)
                                    if gap > 0 else None)
    metrics["details"] = details
    return metrics


def print_lm_summary(metrics: dict[str, Any], run_dir: Path) -> None:
    table = Table(title=f"{metrics.get('recipe', 'run')} (held-out: {metrics.get('test_tokens'):,} tokens, seed "
                        f"{metrics.get('seed')})")
    for column in ("model", "ppl", "next-token acc.", "agrees", "KL to teacher", "params", "tokens/s", "ms b1"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in ("teacher", "baseline", "student"):
        if name in metrics:
            row = metrics[name]
            label = {"baseline": "baseline (CE only)", "student": "distilled student"}.get(name, name)
            table.add_row(label, f"{row['perplexity']:.2f}", f"{row['top1_accuracy']:.2%}",
                          f"{row['agreement']:.2%}" if "agreement" in row else "-",
                          f"{row['kl_to_teacher']:.3f}" if "kl_to_teacher" in row else "-", f"{row['params']:,}",
                          f"{row['tokens_per_s']:.0f}",
                          f"{row['latency_b1_ms']:.1f}" if row.get("latency_b1_ms") is not None else "-")
    console = Console()
    console.print(table)
    if metrics.get("gap_recovered") is not None:
        console.print(f"gap recovered: {metrics['gap_recovered']:.1%} of the baseline's log-perplexity gap to the "
                      "teacher")
    from distill.evaluate.speed import speed_summary

    for line in speed_summary(metrics):
        console.print(line, markup=True)
    console.print(f"results: {run_dir}/metrics.json  student: {run_dir}/student/  log: {run_dir}/log.jsonl")
