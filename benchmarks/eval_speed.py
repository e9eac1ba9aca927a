"""How long `distill eval` takes on the Hinton MNIST run (teacher 1200-1200, baseline and distilled 800-800
students, the int8 student), and what int8 quantization buys, measured side by side in one process.

    python benchmarks/eval_speed.py                 # trains a short run first (1+1 epochs on 10k images)
    python benchmarks/eval_speed.py --run RUN_DIR   # or evaluates an existing hinton-mnist run

The run's training length does not matter for the timing (the same forwards over the 10,000 test images);
it matters for the accuracies, which here are only a sanity check."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import fmt, mean_std, write_results

SHORT = ["teacher.train.epochs=1", "training.epochs=1", "data.train_subset=10000", "compress.quantize=int8"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="an existing hinton-mnist run directory with compress.quantize=int8")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import distill
    from distill.evaluate.rundir import evaluate_run_dir

    run_dir = args.run
    if run_dir is None:
        run_dir = Path("runs/bench-eval-hinton")
        if not (run_dir / "metrics.json").is_file():
            distill.train("hinton-mnist", output=run_dir, overrides=SHORT, show_progress=True,
                          resume=(run_dir / "recipe.yaml").is_file())
    seconds, runs = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        metrics = evaluate_run_dir(run_dir, show_progress=False)
        seconds.append(time.perf_counter() - started)
        runs.append(metrics)
    models = runs[-1]["models"]
    print(f"distill eval {run_dir}: {fmt(seconds, 1)} s over {args.repeats} repeats "
          f"({', '.join(models)}; {torch.get_num_threads()} threads; data loading included)")
    print("| model | errors | accuracy | size on disk (MiB) | ms at batch 1 | samples/s at batch 1000 | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name in models:
        latency = [run[name]["latency_b1_ms"] for run in runs]
        rate = [run[name]["throughput"] for run in runs]
        row = runs[-1][name]
        print(f"| {name} | {row['errors']} | {row['accuracy']:.2%} | {row['size_bytes'] / 2**20:.2f} | "
              f"{fmt(latency, 3)} | {fmt(rate, 0)} | {row['peak_memory_bytes'] / 2**20:.1f} |")
    float_row, int8_row = runs[-1]["student"], runs[-1]["student_int8"]
    ratios = {
        "int8_size_ratio": int8_row["size_bytes"] / float_row["size_bytes"],
        "int8_latency_b1_ratio": mean_std([run["student_int8"]["latency_b1_ms"] / run["student"]["latency_b1_ms"]
                                           for run in runs])[0],
        "int8_throughput_ratio": mean_std([run["student_int8"]["throughput"] / run["student"]["throughput"]
                                           for run in runs])[0],
        "int8_error_change": int8_row["errors"] - float_row["errors"],
    }
    print(f"int8 / float student: size x{ratios['int8_size_ratio']:.3f}, batch-1 latency "
          f"x{ratios['int8_latency_b1_ratio']:.2f}, throughput x{ratios['int8_throughput_ratio']:.2f}, errors "
          f"{ratios['int8_error_change']:+d}")
    mean, std = mean_std(seconds)
    write_results("eval_hinton_mnist", {
        "run_dir": str(run_dir), "training_overrides": SHORT if args.run is None else None,
        "evaluation_seconds_mean": mean, "evaluation_seconds_std": std, "evaluation_seconds": seconds,
        "threads": torch.get_num_threads(), "models": {name: runs[-1][name] for name in models},
        **ratios})


if __name__ == "__main__":
    main()
