"""Feature, relation and logit distillation methods side by side on MNIST-1D (CNN teacher -> small CNN student).

    .venv/bin/python benchmarks/method_table.py --seeds 3

Per seed, `mnist1d-kd` trains the teacher, the baseline student (hard labels) and the KD student; every other
method recipe then reuses that seed's teacher (loaded from the run directory) and the same student initial
weights, so the rows differ only in the objective.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import distill  # noqa: E402
from common import fmt, mean_std, write_results  # noqa: E402

METHODS = {
    "mnist1d-kd": "KD (Hinton, T=4, alpha=0.9)",
    "mnist1d-dkd": "DKD (Zhao 2022)",
    "mnist1d-fitnets": "KD + FitNets hint (1x1 conv adapter)",
    "mnist1d-attention": "KD + attention transfer",
    "mnist1d-relations": "KD + RKD distance/angle + SP",
    "mnist1d-crd": "KD + CRD (in-batch negatives)",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=30, help="teacher and student epochs")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    root = Path(args.output or tempfile.mkdtemp(prefix="method-table-"))
    accuracy: dict[str, list[float]] = {"teacher": [], "baseline": [], **{name: [] for name in METHODS}}
    agreement: dict[str, list[float]] = {name: [] for name in METHODS}
    for seed in range(args.seeds):
        common = [f"seed={seed}", f"training.epochs={args.epochs}", f"teacher.train.epochs={args.epochs}"]
        first = distill.train("mnist1d-kd", output=root / f"s{seed}-mnist1d-kd", overrides=common, resume=True,
                              show_progress=False)
        accuracy["teacher"].append(first.metrics["teacher"]["accuracy"])
        accuracy["baseline"].append(first.metrics["baseline"]["accuracy"])
        teacher_dir = first.run_dir / "teacher"
        for recipe in METHODS:
            if recipe == "mnist1d-kd":
                metrics = first.metrics
            else:
                overrides = [f"seed={seed}", f"training.epochs={args.epochs}", "baseline=false", "teacher.train=null",
                             f"teacher.model={{kind: saved, path: '{teacher_dir}'}}"]
                metrics = distill.train(recipe, output=root / f"s{seed}-{recipe}", overrides=overrides, resume=True,
                                        show_progress=False).metrics
            accuracy[recipe].append(metrics["student"]["accuracy"])
            agreement[recipe].append(metrics["student"]["agreement"])
            print(f"seed {seed} {recipe}: student accuracy {metrics['student']['accuracy']:.4f}", flush=True)

    table = Table(title=f"MNIST-1D, CNN 64-128-128 teacher -> CNN 8-16 student, {args.seeds} seeds, "
                        f"{args.epochs:g} epochs, test accuracy (1,000)")
    for column in ("method", "accuracy (mean ± std)", "vs baseline", "agreement w/ teacher"):
        table.add_column(column, justify="left" if column == "method" else "right")
    baseline_mean = mean_std(accuracy["baseline"])[0]
    table.add_row("teacher", fmt(accuracy["teacher"], 1, percent=True), "", "")
    table.add_row("student alone (hard labels)", fmt(accuracy["baseline"], 1, percent=True), "", "")
    results = {}
    for recipe, label in METHODS.items():
        mean, std = mean_std(accuracy[recipe])
        table.add_row(label, fmt(accuracy[recipe], 1, percent=True), f"{(mean - baseline_mean) * 100:+.1f} pts",
                      fmt(agreement[recipe], 1, percent=True))
        results[recipe] = {"label": label, "accuracy_mean": mean, "accuracy_std": std,
                           "agreement_mean": mean_std(agreement[recipe])[0], "accuracies": accuracy[recipe]}
    Console().print(table)
    path = write_results("method_table", {
        "seeds": args.seeds, "epochs": args.epochs, "teacher_accuracy": mean_std(accuracy["teacher"])[0],
        "baseline_accuracy": baseline_mean, "baseline_accuracy_std": mean_std(accuracy["baseline"])[1],
        "teacher_accuracies": accuracy["teacher"], "baseline_accuracies": accuracy["baseline"], "methods": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
