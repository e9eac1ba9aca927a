"""On-policy against off-policy distillation on the task suite: exact match of 2-layer students of the built-in
addition teacher after the same number of steps.

    .venv/bin/python benchmarks/on_policy_quality.py --seeds 3 --steps 400 --output /tmp/on-policy

Once: the built-in `addition-teacher` recipe trains the teacher (or --teacher-run points at a finished one). Per
seed, the built-in `addition-on-policy` recipe (token_kd with reverse KL against the live teacher, 4,000 training
problems with gold rationales) in two runs: lmbda 0.5 with compare_off_policy (its off_policy stage is the
off-policy row: the same student and objective on the gold rationales alone), and lmbda 1 (every step on the
student's own samples). Rows: off-policy token KD, GKD (lmbda 0.5), on-policy (lmbda 1); each student and the
teacher answer 200 test-split problems greedily. Students' tokens trained on are counted from the logs: every
row takes the same steps of 32 examples, and an on-policy step's examples are as long as the student's samples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import distill  # noqa: E402
from common import fmt, mean_std, write_results  # noqa: E402

ROWS = {"off_policy": "off-policy token KD (gold rationales)", "gkd": "GKD mixing, lmbda 0.5",
        "on_policy": "on-policy, lmbda 1"}
RUNS = {"mixed": ["on_policy.lmbda=0.5", "on_policy.compare_off_policy=true"],
        "pure": ["on_policy.lmbda=1.0", "on_policy.compare_off_policy=false"]}
ROW_SOURCE = {"off_policy": ("mixed", "off_policy"), "gkd": ("mixed", "student"), "on_policy": ("pure", "student")}


def run(kind: str, seed: int, teacher_dir: Path, root: Path, args: argparse.Namespace) -> dict:
    run_dir = root / f"seed{seed}" / kind
    if (run_dir / "metrics.json").is_file():  # finished in an earlier call
        return json.loads((run_dir / "metrics.json").read_text())
    overrides = [*RUNS[kind], f"seed={seed}", f"training.max_steps={args.steps}",
                 f"teacher.model.name_or_path={teacher_dir}", f"data.tokenizer={teacher_dir}"]
    return distill.train("addition-on-policy", output=run_dir, resume=True, overrides=overrides,
                         show_progress=False).metrics


def completion_tokens(run_dir: Path) -> float:
    """Mean sampled tokens per on-policy answer over the student stage, from its log lines."""
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    values = [line["completion_tokens_mean"] for line in lines if "completion_tokens_mean" in line]
    return round(sum(values) / len(values), 1) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of every student")
    parser.add_argument("--teacher-run", default=None, help="a finished addition-teacher run (default: train one)")
    parser.add_argument("--output", default="/tmp/on-policy")
    args = parser.parse_args()
    root = Path(args.output)
    teacher_run = Path(args.teacher_run) if args.teacher_run else root / "teacher"
    if not (teacher_run / "metrics.json").is_file():
        distill.train("addition-teacher", output=teacher_run, resume=True, show_progress=False)
    teacher_dir = teacher_run / "teacher"
    results: dict[str, dict[str, list[float]]] = {row: {} for row in ["teacher", *ROWS]}
    for seed in range(args.seeds):
        metrics = {kind: run(kind, seed, teacher_dir, root, args) for kind in RUNS}
        for row, (kind, model) in ROW_SOURCE.items():
            for key in ("task_exact_match", "task_answer_agreement", "task_inherited_errors"):
                results[row].setdefault(key, []).append(metrics[kind][model].get(key))
            if row != "off_policy":
                results[row].setdefault("completion_tokens", []).append(completion_tokens(root / f"seed{seed}" / kind))
            print(json.dumps({"seed": seed, "row": row, "exact_match": metrics[kind][model]["task_exact_match"]}))
        results["teacher"].setdefault("task_exact_match", []).append(metrics["mixed"]["teacher"]["task_exact_match"])
    table = Table(title=f"On-policy vs off-policy KD on addition ({args.seeds} seeds, {args.steps} steps)")
    for column in ("row", "exact match", "agreement with teacher", "inherited teacher errors",
                   "sampled tokens per answer"):
        table.add_column(column)
    table.add_row("teacher (4 layers)", fmt(results["teacher"]["task_exact_match"], percent=True), "-", "-", "-")
    for row, label in ROWS.items():
        table.add_row(label, fmt(results[row]["task_exact_match"], percent=True),
                      fmt(results[row]["task_answer_agreement"], percent=True),
                      fmt(results[row]["task_inherited_errors"]),
                      fmt(results[row].get("completion_tokens", [0.0])))
    Console().print(table)
    summary = {}
    for row, values in results.items():
        mean, std = mean_std(values["task_exact_match"])
        summary[row] = {"accuracy_mean": round(mean, 4), "accuracy_std": round(std, 4),
                        "accuracy": values["task_exact_match"]}
    for row in ("gkd", "on_policy"):  # paired by seed with the off-policy student of the same seed
        gains = [mine - off for mine, off in zip(results[row]["task_exact_match"],
                                                 results["off_policy"]["task_exact_match"])]
        mean, std = mean_std(gains)
        summary[f"{row}_minus_off_policy"] = {"mean": round(mean, 4), "std": round(std, 4), "per_seed": gains}
    write_results("on_policy_quality", {"seeds": args.seeds, "steps": args.steps, "rows": summary})


if __name__ == "__main__":
    main()
