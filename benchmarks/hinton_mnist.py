"""Hinton et al. (2015) MNIST distillation over several seeds, next to the paper's numbers.

    .venv/bin/python benchmarks/hinton_mnist.py --seeds 3 --teacher-epochs 40 --student-epochs 20
    .venv/bin/python benchmarks/hinton_mnist.py --seeds 3 --teacher-epochs 60 --student-epochs 40 \
        --name hinton_mnist_full       # the recipe's full schedule

Each seed trains its own teacher (784-1200-1200-10, dropout, +-2 px jitter), a baseline 800-800 student on hard
labels and a distilled 800-800 student from the same initial weights, with the built-in `hinton-mnist` recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import distill  # noqa: E402
from common import fmt, mean_std, write_results  # noqa: E402

PAPER = {"teacher_errors": 67, "baseline_errors": 146, "student_errors": 74, "gap_recovered": (146 - 74) / (146 - 67)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1 (to "
                        "spread seeds over processes; a later call over all seeds with the same --output collects "
                        "them)")
    parser.add_argument("--teacher-epochs", type=float, default=40)
    parser.add_argument("--student-epochs", type=float, default=20)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe overrides")
    parser.add_argument("--output", default=None, help="keep run directories here (default: a temp dir)")
    parser.add_argument("--teachers-from", default=None, help="reuse the teachers of an earlier call's --output "
                        "(DIR/seedN/teacher) instead of training them again")
    parser.add_argument("--name", default="hinton_mnist", help="results file: benchmarks/results/NAME.json "
                        "(default hinton_mnist; the full schedule's figure is hinton_mnist_full)")
    args = parser.parse_args()

    root = Path(args.output or tempfile.mkdtemp(prefix="hinton-bench-"))
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        overrides = [f"seed={seed}", f"teacher.train.epochs={args.teacher_epochs}",
                     f"training.epochs={args.student_epochs}", *args.overrides]
        if args.teachers_from:
            teacher_dir = Path(args.teachers_from) / f"seed{seed}" / "teacher"
            overrides = [f"seed={seed}", f"training.epochs={args.student_epochs}", "teacher.train=null",
                         f"teacher.model={{kind: saved, path: '{teacher_dir}'}}", *args.overrides]
        result = distill.train("hinton-mnist", output=root / f"seed{seed}", overrides=overrides, resume=True)
        metrics = result.metrics
        runs.append({"seed": seed, "teacher_errors": metrics["teacher"]["errors"],
                     "baseline_errors": metrics["baseline"]["errors"], "student_errors": metrics["student"]["errors"],
                     "gap_recovered": metrics["gap_recovered"], "agreement": metrics["agreement"],
                     "teacher_latency_ms": metrics["teacher"]["latency_ms"],
                     "student_latency_ms": metrics["student"]["latency_ms"],
                     "wall_seconds": metrics["wall_seconds"]})

    def column(key: str) -> list[float]:
        return [run[key] for run in runs]

    table = Table(title=f"Hinton MNIST, {args.seeds} seeds (teacher {args.teacher_epochs} epochs, "
                        f"students {args.student_epochs} epochs), test errors of 10,000")
    for name in ("", "ours (mean ± std)", "paper"):
        table.add_column(name, justify="right" if name else "left")
    table.add_row("teacher 1200-1200, dropout + jitter", fmt(column("teacher_errors")), "67")
    table.add_row("student 800-800, hard labels", fmt(column("baseline_errors")), "146")
    table.add_row("student 800-800, distilled (T=20)", fmt(column("student_errors")), "74")
    table.add_row("gap recovered", fmt(column("gap_recovered"), percent=True), f"{PAPER['gap_recovered']:.0%}")
    table.add_row("student/teacher agreement", fmt(column("agreement"), 2, percent=True), "-")
    Console().print(table)

    summary = {}
    for key in ("teacher_errors", "baseline_errors", "student_errors", "gap_recovered", "agreement"):
        mean, std = mean_std(column(key))
        summary[key] = {"mean": mean, "std": std}
    path = write_results(args.name, {
        "seeds": args.seeds, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
        "overrides": args.overrides, "gap_recovered": summary["gap_recovered"]["mean"],
        "gap_recovered_std": summary["gap_recovered"]["std"], "summary": summary, "paper": PAPER, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
