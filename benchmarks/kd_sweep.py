"""Temperature and alpha of Hinton KD on MNIST-1D: which settings help a small CNN student, against hard labels alone.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/kd_sweep.py --seeds 3 --epochs 10

The regimes table (benchmarks/regimes.py) uses T=4, alpha=0.9 everywhere, as the built-in recipes say, and there
soft targets make the CNN 8-16 student worse than hard labels. This sweeps the two knobs on the same set-up: per
seed one CNN 32-64 teacher and one baseline student (hard labels) are trained (the `kd` run of regimes.py), and each
(T, alpha) trains a student from that saved teacher. `alpha` weighs the soft term, (1 - alpha) the hard labels.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from common import fmt, mean_std, write_results  # noqa: E402
from distill.config import RECIPES_DIR  # noqa: E402
from regimes import Runs, recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=10)
    parser.add_argument("--temperatures", default="1,2,4,8")
    parser.add_argument("--alphas", default="0.1,0.5,0.9")
    parser.add_argument("--student-channels", default="8,16")
    parser.add_argument("--name", default="kd_sweep", help="results file benchmarks/results/NAME.json")
    parser.add_argument("--output", default=None, help="run folders (finished runs are reused)")
    args = parser.parse_args()
    temperatures = [float(value) for value in args.temperatures.split(",")]
    alphas = [float(value) for value in args.alphas.split(",")]
    student = {"model": {"kind": "cnn", "channels": [int(width) for width in args.student_channels.split(",")],
                         "kernel_size": 5}}
    root = Path(args.output or tempfile.mkdtemp(prefix="kd-sweep-"))
    started = time.perf_counter()
    teacher_train = yaml.safe_load((RECIPES_DIR / "mnist1d-kd.yaml").read_text())["teacher"]["train"]
    accuracy: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        run = Runs(root, seed)
        reference = run("kd", recipe("mnist1d-kd", args.epochs, student=student, teacher={
            "model": {"kind": "cnn", "channels": [32, 64], "kernel_size": 5}, "train": teacher_train}))
        accuracy.setdefault("teacher", []).append(reference["teacher"]["accuracy"])
        accuracy.setdefault("baseline", []).append(reference["baseline"]["accuracy"])
        saved_teacher = {"model": {"kind": "saved", "path": str(root / f"s{seed}-kd" / "teacher")}}
        for temperature in temperatures:
            for alpha in alphas:
                label = f"T{temperature:g}-a{alpha:g}"
                metrics = run(label, recipe("mnist1d-kd", args.epochs, student=student, teacher=saved_teacher,
                                            baseline=False, objective={"temperature": temperature, "alpha": alpha}))
                accuracy.setdefault(label, []).append(metrics["student"]["accuracy"])

    table = Table(title=f"KD on MNIST-1D, CNN 32-64 -> CNN {args.student_channels}, {args.epochs:g} epochs, "
                        f"{args.seeds} seeds: test accuracy")
    table.add_column("T \\ alpha (weight of the soft term)")
    for alpha in alphas:
        table.add_column(f"{alpha:g}", justify="right")
    for temperature in temperatures:
        table.add_row(f"{temperature:g}", *(fmt(accuracy[f"T{temperature:g}-a{alpha:g}"], 1, percent=True)
                                            for alpha in alphas))
    table.add_row("hard labels alone (alpha 0)", fmt(accuracy["baseline"], 1, percent=True))
    table.add_row("teacher", fmt(accuracy["teacher"], 1, percent=True))
    Console().print(table)
    means = {label: mean_std(values)[0] for label, values in accuracy.items()}
    settings = [label for label in means if label.startswith("T")]
    best = max(settings, key=means.get)
    write_results(args.name, {
        "seeds": args.seeds, "epochs": args.epochs, "student_channels": args.student_channels,
        "temperatures": temperatures, "alphas": alphas,
        "rows": {label: {"accuracy_mean": mean_std(values)[0], "accuracy_std": mean_std(values)[1],
                         "accuracies": values} for label, values in accuracy.items()},
        "best_setting": best, "best_accuracy": means[best], "baseline_accuracy": means["baseline"],
        "best_gain_over_baseline": means[best] - means["baseline"],
        "default_setting_gain_over_baseline": means.get("T4-a0.9", float("nan")) - means["baseline"],
        "wall_seconds": round(time.perf_counter() - started),
    })


if __name__ == "__main__":
    main()
