"""Training a student from a teacher cache vs with the live teacher: Hinton's MNIST setting, several seeds.

    nice -n 10 .venv/bin/python benchmarks/cache_classifier.py --seeds 3 --teacher-epochs 2 --student-epochs 2

One teacher (784-1200-1200-10, the `hinton-mnist` recipe's, trained briefly) is saved; its cache is built once
(float16 logits of the 50,000 training and 10,000 validation images, timed separately). Then, per seed, the
same 800-800 student recipe runs twice, side by side: with the live teacher and from the cache. Reported: the
student stage's wall time both ways (and their ratio), the whole run's, and the student's test accuracy both ways.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import distill  # noqa: E402
from common import fmt, mean_std, write_results  # noqa: E402
from distill.cache import TeacherCache, build_cache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--teacher-epochs", type=float, default=3)
    parser.add_argument("--student-epochs", type=float, default=3)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared machine, a second "
                        "thread mostly waits for its straggling partner; both sides run with the same setting)")
    parser.add_argument("--output", default=None, help="keep the runs and the cache here (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.output or tempfile.mkdtemp(prefix="cache-bench-"))
    quick_eval = ["evaluation.latency_runs=5"]

    # The teacher: the recipe's, trained briefly; the student stage of this run is a single step (unused).
    teacher_run = root / "teacher-run"
    distill.train("hinton-mnist", output=teacher_run, resume=(teacher_run / "recipe.yaml").is_file(),
                  overrides=[f"teacher.train.epochs={args.teacher_epochs}", "baseline=false", "training.max_steps=1",
                             *quick_eval], show_progress=False)
    saved = ["teacher.train=null", f"teacher.model={{kind: saved, path: '{teacher_run / 'teacher'}'}}",
             "baseline=false", f"training.epochs={args.student_epochs}", *quick_eval]

    cache_dir = root / f"cache-{args.dtype}"
    shutil.rmtree(cache_dir, ignore_errors=True)
    started = time.perf_counter()
    metadata = build_cache("hinton-mnist", cache_dir, overrides=saved, dtype=args.dtype, show_progress=False)
    build_seconds = time.perf_counter() - started
    info = TeacherCache(cache_dir).describe()

    runs = []
    for seed in range(args.seeds):
        row: dict[str, float] = {"seed": seed}
        # Alternate which goes first, so a slow spell of the (shared) machine does not always hit the same side.
        order = ["live", "cache"] if seed % 2 == 0 else ["cache", "live"]
        for mode in order:
            overrides = [f"seed={seed}", *saved] + ([f"teacher.cache={cache_dir}"] if mode == "cache" else [])
            run_dir = root / f"seed{seed}-{mode}"
            shutil.rmtree(run_dir, ignore_errors=True)
            result = distill.train("hinton-mnist", output=run_dir, overrides=overrides, show_progress=False)
            metrics = result.metrics
            row[f"{mode}_student_seconds"] = metrics["stages"]["student"]["wall_seconds"]
            row[f"{mode}_run_seconds"] = metrics["wall_seconds"]
            row[f"{mode}_accuracy"] = metrics["student"]["accuracy"]
            row[f"{mode}_errors"] = metrics["student"]["errors"]
        row["time_ratio"] = row["cache_student_seconds"] / row["live_student_seconds"]
        row["accuracy_difference"] = row["cache_accuracy"] - row["live_accuracy"]
        runs.append(row)
        print(row, flush=True)

    def column(key: str) -> list[float]:
        return [run[key] for run in runs]

    table = Table(title=f"MNIST 800-800 student from a 1200-1200 teacher, {args.seeds} seeds, "
                        f"{args.student_epochs} student epochs (cache: {args.dtype} logits)")
    for name in ("", "live teacher", "from cache", "cache / live"):
        table.add_column(name, justify="right" if name else "left")
    table.add_row("student stage wall time (s)", fmt(column("live_student_seconds")),
                  fmt(column("cache_student_seconds")), fmt(column("time_ratio"), 3))
    table.add_row("whole run wall time (s)", fmt(column("live_run_seconds")), fmt(column("cache_run_seconds")), "")
    table.add_row("student test accuracy", fmt(column("live_accuracy"), 2, percent=True),
                  fmt(column("cache_accuracy"), 2, percent=True),
                  f"{fmt(column('accuracy_difference'), 2, percent=True)} (difference)")
    table.add_row("student test errors (of 10,000)", fmt(column("live_errors")), fmt(column("cache_errors")), "")
    Console().print(table)
    print(f"cache build: {build_seconds:.1f} s for {sum(info['samples'].values())} samples "
          f"({info['bytes']:,} bytes, {info['bytes_per_sample']} bytes per sample)")

    summary = {key: dict(zip(("mean", "std"), mean_std(column(key)))) for key in (
        "live_student_seconds", "cache_student_seconds", "time_ratio", "live_run_seconds", "cache_run_seconds",
        "live_accuracy", "cache_accuracy", "accuracy_difference", "live_errors", "cache_errors")}
    path = write_results("cache_classifier", {
        "seeds": args.seeds, "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs,
        "dtype": args.dtype, "threads": args.threads, "cache_build_seconds": round(build_seconds, 3),
        "cache_bytes": info["bytes"],
        "cache_bytes_per_sample": info["bytes_per_sample"], "cache_samples": info["samples"],
        "teacher_fingerprint": metadata["teacher_fingerprint"], "summary": summary, "runs": runs})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
