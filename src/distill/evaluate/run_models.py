"""A run's models evaluated the way its recipe says: classification metrics, LM perplexity, or embedding
fidelity. Shared by the evaluation stage of a run and by ``distill eval`` on a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def evaluation_task(config: Any, data: Any) -> str:
    task = config.evaluation.task
    if task != "auto":
        return task
    if config.data.is_language_modeling:
        return "language-modeling"
    return "classification" if data.num_classes is not None else "embedding"


def evaluate_run_models(config: Any, models: dict[str, nn.Module], data: Any, run_dir: Path, *,
                        show_progress: bool = False, vocab_size: int | None = None) -> dict[str, Any]:
    task = evaluation_task(config, data)
    model_dirs = {name: run_dir / name for name in models}
    if task == "language-modeling":
        from distill.evaluate.lm import evaluate_language_models

        metrics = evaluate_language_models(models, data.test, evaluation=config.evaluation, vocab_size=vocab_size,
                                           model_dirs=model_dirs)
        if config.evaluation.task_suite is not None:
            from distill.evaluate.task_suite import task_suite_metrics

            for name, row in task_suite_metrics(models, data.tokenizer, config.evaluation.task_suite).items():
                metrics[name].update(row)
            metrics["task_suite"] = config.evaluation.task_suite.model_dump(mode="json")
        return metrics
    if task == "classification":
        from distill.evaluate.compare import evaluate_models

        # the teacher reads the test texts with its tokenizer, the others with the student's (when it has its own)
        model_tests = {name: data.test if name == "teacher" else data.for_student().test for name in models}
        return evaluate_models(models, data.test, evaluation=config.evaluation, show_progress=show_progress,
                               model_dirs=model_dirs, model_tests=model_tests,
                               target_kind=getattr(data, "target_kind", "class"))
    from distill.evaluate.report import evaluate_embeddings

    return evaluate_embeddings(models, data.test, evaluation=config.evaluation)
