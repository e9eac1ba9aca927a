"""Sequence-level KD on the task suite: does filtering the teacher's answers make a better student?

    .venv/bin/python benchmarks/seq_kd.py --seeds 3 --pool 1000 --steps 800 --output /tmp/seq-kd

Once: the built-in `addition-teacher` recipe trains the teacher (a 4-layer Llama, gold rationales of 20,000
addition problems); it answers a pool of train-split problems drawn with another seed (--samples answers each,
sampled at --temperature, so it errs as a teacher does on inputs it has not memorised, and repeats itself)
through `distill generate`, and `distill filter` keeps the answers that pass length (no cut-off answers),
exact_dedup (a problem's repeated answer) and verify (the final answer against the reference). Per seed, four
2-layer students with the same steps, each evaluated with the teacher on 200 test-split problems (greedy, exact
match of the final answer):
  gold:       next-token CE on the gold rationales of the same pool problems (the ceiling of clean data);
  unfiltered: seq-KD on every teacher answer;
  filtered:   seq-KD on the kept answers;
  filtered_kd: the kept answers, 0.5 next-token CE + 0.5 forward-KL token KD against the live teacher.
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

ROWS = {
    "gold": "student SFT on gold answers",
    "unfiltered": "seq-KD, unfiltered",
    "filtered": "seq-KD, filtered (verified)",
    "filtered_kd": "seq-KD filtered + token KD",
}
STUDENT = {"kind": "hf-config", "architecture": "llama",
           "config": {"hidden_size": 96, "intermediate_size": 288, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": True}}
FILTERS = [{"kind": "length"}, {"kind": "exact_dedup"}, {"kind": "verify"}]  # each drops some here


def data_recipe(teacher_dir: Path, args: argparse.Namespace) -> dict:
    """The generate + filter recipe: the teacher answers the pool."""
    return {"name": "seq-kd-data", "seed": 0,
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher_dir), "task": "causal-lm"}},
            "generate": {"prompts": {"task": "addition", "split": "train", "count": args.pool, "seed": 1},
                         "decoding": {"max_new_tokens": 176, "temperature": args.temperature, "n": args.samples},
                         "batch_size": 32},
            "filters": FILTERS}


def student_recipe(row: str, seed: int, teacher_dir: Path, data_path: Path, args: argparse.Namespace) -> dict:
    terms = [{"name": "sft", "loss": "token_ce", "student": "final_hidden"}]
    if row == "filtered_kd":
        terms = [{"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden",
                  "weight": 0.5, "options": {"divergence": "forward_kl", "hard_weight": 1.0}}]
    return {"name": f"seq-kd-{row}", "seed": seed,
            "data": {"path": str(data_path), "lm": {"format": "chat"}, "tokenizer": str(teacher_dir),
                     "max_length": 192},
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher_dir), "task": "causal-lm"}},
            "student": {"model": STUDENT},
            "objective": {"terms": terms},
            "training": {"max_steps": args.steps, "batch_size": 32, "optimizer": "adamw", "lr": 0.003,
                         "schedule": "cosine", "warmup_steps": 30, "log_every": 100,
                         "checkpoint_every": args.steps},
            "evaluation": {"task": "language-modeling", "max_test_tokens": 2048,
                           "task_suite": {"task": "addition", "split": "test", "count": 200,
                                          "max_new_tokens": 176, "batch_size": 32}}}


def prepare(root: Path, args: argparse.Namespace) -> tuple[Path, dict[str, Path], dict]:
    import distill.tasks as tasks
    from distill.generation.filter_run import REPORT_FILE, filter_generated
    from distill.generation.generate import generate

    teacher_run = root / "teacher"
    overrides = [f"teacher.train.max_steps={args.teacher_steps}"] if args.teacher_steps else []
    if not (teacher_run / "metrics.json").is_file():
        distill.train("addition-teacher", output=teacher_run, resume=True, overrides=overrides, show_progress=False)
    teacher_dir = teacher_run / "teacher"
    recipe = data_recipe(teacher_dir, args)
    generate(recipe, root / "generated", show_progress=True)
    report_file = root / "kept" / REPORT_FILE
    report = (json.loads(report_file.read_text()) if report_file.is_file()
              else filter_generated(recipe, root / "generated", root / "kept"))
    gold = root / "gold.jsonl"
    tasks.write_jsonl(gold, tasks.examples("addition", "train", args.pool, 1))
    return teacher_dir, {"gold": gold, "unfiltered": root / "generated", "filtered": root / "kept",
                         "filtered_kd": root / "kept"}, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pool", type=int, default=1000, help="problems the teacher answers")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps of every student")
    parser.add_argument("--teacher-steps", type=int, default=None, help="override the teacher recipe's steps")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--samples", type=int, default=2, help="answers sampled per problem")
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--output", default="/tmp/seq-kd")
    args = parser.parse_args()
    root = Path(args.output)
    teacher_dir, data_paths, report = prepare(root, args)
    rows = args.rows.split(",")
    results: dict[str, dict[str, list[float]]] = {row: {} for row in ["teacher", *rows]}
    for seed in range(args.seeds):
        for row in rows:
            run_dir = root / f"seed{seed}" / row
            if (run_dir / "metrics.json").is_file():  # finished in an earlier call: read, not evaluated again
                metrics = json.loads((run_dir / "metrics.json").read_text())
            else:
                metrics = distill.train(student_recipe(row, seed, teacher_dir, data_paths[row], args),
                                        output=run_dir, resume=True, show_progress=False).metrics
            for key in ("task_exact_match", "task_answer_agreement", "task_inherited_errors"):
                results[row].setdefault(key, []).append(metrics["student"].get(key))
            results["teacher"].setdefault("task_exact_match", []).append(metrics["teacher"]["task_exact_match"])
            print(json.dumps({"seed": seed, "row": row, "exact_match": metrics["student"]["task_exact_match"]}))
    table = Table(title=f"Seq-KD on addition ({args.seeds} seeds, {args.steps} steps, pool {args.pool})")
    for column in ("row", "exact match", "agreement with teacher", "inherited teacher errors"):
        table.add_column(column)
    table.add_row("teacher (4 layers)", fmt(results["teacher"]["task_exact_match"], percent=True), "-", "-")
    for row in rows:
        table.add_row(ROWS[row], fmt(results[row]["task_exact_match"], percent=True),
                      fmt(results[row]["task_answer_agreement"], percent=True),
                      fmt(results[row]["task_inherited_errors"]))
    Console().print(table)
    drops = {entry["filter"]: entry["dropped"] for entry in report["filters"]}
    print("filter drops of", report["records"], "teacher answers:", drops)
    summary = {}
    for row, values in results.items():
        mean, std = mean_std(values["task_exact_match"])
        summary[row] = {"accuracy_mean": round(mean, 4), "accuracy_std": round(std, 4),
                        "accuracy": values["task_exact_match"]}
        if row != "teacher":
            summary[row]["agreement_mean"] = round(mean_std(values["task_answer_agreement"])[0], 4)
            summary[row]["inherited_errors_mean"] = round(mean_std(values["task_inherited_errors"])[0], 2)
    if {"filtered", "unfiltered"} <= set(rows):  # per seed: the same seed's students, so paired
        gains = [kept - every for kept, every in zip(results["filtered"]["task_exact_match"],
                                                     results["unfiltered"]["task_exact_match"])]
        mean, std = mean_std(gains)
        summary["filtered_minus_unfiltered"] = {"mean": round(mean, 4), "std": round(std, 4), "per_seed": gains}
        print(f"filtered - unfiltered, paired by seed: {fmt(gains, percent=True)}")
    write_results("seq_kd", {"seeds": args.seeds, "pool": args.pool, "steps": args.steps,
                             "temperature": args.temperature, "samples": args.samples, "rows": summary,
                             "filter_drops": drops, "generated": report["records"], "kept": report["kept"]})


if __name__ == "__main__":
    main()
