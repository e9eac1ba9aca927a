"""Task-specific text distillation over seeds: MiniLM-L6 fine-tuned on KJV verse -> genre, 2-layer students.

    .venv/bin/python benchmarks/text_classification.py --seeds 3 --output /tmp/tc-bench

Per seed, with the built-in `text-classification` recipe (the packaged all-MiniLM-L6-v2, 6 genres, 15 held-out
books, a stratified sample of the training verses):
  run `logits`:   the teacher fine-tuned on gold labels; the student derived from it (layers 0 and 5) on gold labels
                  alone (the baseline, same initial weights) and distilled on the teacher's soft labels (alpha 0.8,
                  T = 2);
  run `hidden`:   the same teacher (reloaded), the student distilled on logits plus hidden states (student layer
                  1 -> teacher layer 3, 2 -> 6, MSE hints);
  run `augment`:  the same teacher, logits distillation on the gold texts plus 2 augmented copies of each (words
                  replaced by neighbours in the teacher's embeddings, TinyBERT-style), for 1 epoch: as many steps
                  as the other students' 3 epochs;
  run `fresh` (with --rows ...,fresh): a fresh 2-layer BERT (hidden 256) on gold labels and distilled.
Every run evaluates the teacher beside its students, so throughput ratios are measured side by side in one process.
"""

from __future__ import annotations

import argparse
import json
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

ROWS = {  # row key: (run, model in that run, label)
    "teacher": ("logits", "teacher", "teacher: MiniLM-L6 fine-tuned (6 layers)"),
    "gold": ("logits", "baseline", "student 2 layers, gold labels only"),
    "logits": ("logits", "student", "student 2 layers, distilled (logits)"),
    "hidden": ("hidden", "student", "student 2 layers, distilled (logits + hidden states)"),
    "augment": ("augment", "student", "student 2 layers, distilled (logits, + 2 augmented copies)"),
    "fresh_gold": ("fresh", "baseline", "fresh 2-layer BERT-256, gold labels only"),
    "fresh": ("fresh", "student", "fresh 2-layer BERT-256, distilled (logits)"),
}
HIDDEN_TERMS = ("{terms: [{name: soft, loss: soft_kl, weight: 0.8}, {name: hard, loss: cross_entropy, weight: 0.2}, "
                "{name: hint1, loss: hint, student: 'hidden_states[1]', teacher: 'hidden_states[3]', weight: 1.0}, "
                "{name: hint2, loss: hint, student: 'hidden_states[2]', teacher: 'hidden_states[6]', weight: 1.0}]}")
FRESH_STUDENT = ("{kind: hf-config, architecture: bert, task: sequence-classification, config: {hidden_size: 256, "
                 "num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 1024, "
                 "max_position_embeddings: 512}}")


def run_overrides(run: str, seed: int, args: argparse.Namespace, teacher_dir: Path) -> list[str]:
    common = [f"seed={seed}", f"data.train_subset={args.train_texts}", f"training.epochs={args.student_epochs}"]
    if run == "logits" and args.shared_teacher and seed != args.first_seed:
        return [*common, "teacher.train=null", f"teacher.model={{kind: hf, name_or_path: '{teacher_dir}'}}"]
    if run == "logits":
        return [*common, *([f"teacher.train.epochs={args.teacher_epochs}"] if args.teacher_epochs else []),
                *([f"teacher.train.lr={args.teacher_lr}"] if args.teacher_lr else [])]
    reuse = [*common, "teacher.train=null", f"teacher.model={{kind: hf, name_or_path: '{teacher_dir}'}}"]
    if run == "hidden":
        return [*reuse, "baseline=false", f"objective={HIDDEN_TERMS}"]
    if run == "augment":
        return [*reuse, "baseline=false", "data.transfer={augment_copies: 2}",
                f"training.epochs={args.student_epochs / 3}"]
    return [*reuse, "student.from_teacher=null", f"student.model={FRESH_STUDENT}", "training.lr=0.0005"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--train-texts", type=int, default=3000, help="stratified sample of training verses")
    parser.add_argument("--teacher-epochs", type=float, default=None, help="the teacher's fine-tuning epochs "
                        "(default: the recipe's, 4)")
    parser.add_argument("--student-epochs", type=float, default=3)
    parser.add_argument("--teacher-lr", type=float, default=None, help="the teacher's fine-tuning learning rate "
                        "(default: the recipe's, 1e-4)")
    parser.add_argument("--rows", default="logits,hidden,augment", help="runs to make, of logits, hidden, augment, "
                        "fresh (logits always: it trains the teacher)")
    parser.add_argument("--shared-teacher", action="store_true", help="fine-tune the teacher once (first seed) "
                        "and distil every seed's students from it: the seeds then measure the students' spread only")
    parser.add_argument("--output", default=None, help="keep run directories here (default: a temp dir); a "
                        "repeated call resumes and reuses what is finished")
    parser.add_argument("--name", default="text_classification", help="results file benchmarks/results/NAME.json")
    parser.add_argument("--collect", action="store_true", help="train nothing: read the metrics.json of the runs "
                        "under --output that have finished (seeds without a finished logits run are left out)")
    args = parser.parse_args()
    recipe_teacher = distill.load_recipe("text-classification").teacher.train
    args.teacher_epochs = args.teacher_epochs or recipe_teacher.epochs
    args.teacher_lr = args.teacher_lr or recipe_teacher.lr

    root = Path(args.output or tempfile.mkdtemp(prefix="text-bench-"))
    runs_wanted = ["logits", *[run for run in args.rows.split(",") if run and run != "logits"]]
    per_seed = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        metrics = {}
        teacher_seed = args.first_seed if args.shared_teacher else seed
        teacher_dir = root / f"seed{teacher_seed}" / "logits" / "teacher"
        for run in runs_wanted:
            if args.collect:
                finished = root / f"seed{seed}" / run / "metrics.json"
                if finished.is_file():
                    metrics[run] = json.loads(finished.read_text())
                continue
            finished = root / f"seed{seed}" / run / "metrics.json"
            if finished.is_file():  # evaluated already: not evaluated again
                metrics[run] = json.loads(finished.read_text())
                continue
            result = distill.train("text-classification", output=root / f"seed{seed}" / run, resume=True,
                                   overrides=run_overrides(run, seed, args, teacher_dir))
            metrics[run] = result.metrics
        if "logits" in metrics:
            per_seed.append(metrics)
    args.seeds = len(per_seed)

    def values(row: str, key: str) -> list[float]:
        run, model, _ = ROWS[row]
        out = []
        for metrics in per_seed:
            if run not in metrics:
                continue
            if key == "throughput_vs_teacher":
                out.append(metrics[run][model]["throughput"] / metrics[run]["teacher"]["throughput"])
            elif key == "speedup_b1":  # teacher's latency at batch 1 over the model's: steadier than throughput
                out.append(metrics[run]["teacher"]["latency_b1_ms"] / metrics[run][model]["latency_b1_ms"])
            elif key == "accuracy_vs_teacher":
                out.append(metrics[run][model]["accuracy"] / metrics[run]["teacher"]["accuracy"])
            else:
                out.append(metrics[run][model][key])
        return out

    rows = [row for row in ROWS if ROWS[row][0] in runs_wanted and values(row, "accuracy")]  # runs made
    table = Table(title=f"KJV verse -> genre (6 classes, 3,339 test verses of 15 held-out books), {args.seeds} "
                        f"seeds, {args.train_texts} training verses")
    for column in ("model", "accuracy", "macro-F1", "of teacher's accuracy", "throughput vs teacher",
                   "agreement", "params (M)"):
        table.add_column(column, justify="left" if column == "model" else "right")
    results = {}
    for row in rows:
        accuracy, f1 = values(row, "accuracy"), values(row, "macro_f1")
        share, speed = values(row, "accuracy_vs_teacher"), values(row, "throughput_vs_teacher")
        agreement = values(row, "agreement") if row != "teacher" else []
        params = values(row, "params")
        table.add_row(ROWS[row][2], fmt(accuracy, percent=True), fmt(f1, 3), fmt(share, percent=True),
                      fmt(speed, 2) + "x", fmt(agreement, percent=True) if agreement else "-",
                      f"{params[0] / 1e6:.1f}")
        results[row] = {"label": ROWS[row][2], "accuracy_mean": mean_std(accuracy)[0],
                        "accuracy_std": mean_std(accuracy)[1], "macro_f1_mean": mean_std(f1)[0],
                        "macro_f1_std": mean_std(f1)[1], "accuracy_vs_teacher": mean_std(share)[0],
                        "throughput_vs_teacher": mean_std(speed)[0], "throughput_vs_teacher_std": mean_std(speed)[1],
                        "speedup_b1_mean": mean_std(values(row, "speedup_b1"))[0],
                        "speedup_b1_std": mean_std(values(row, "speedup_b1"))[1],
                        "agreement": mean_std(agreement)[0] if agreement else None, "params": params[0],
                        "accuracy": accuracy}
    Console().print(table)
    distilled = results["logits"]
    gold = results["gold"]
    margin = (distilled["accuracy_mean"] - gold["accuracy_mean"]) / max(
        max(distilled["accuracy_std"], gold["accuracy_std"]), 1e-9)
    goal = {"keeps_97_percent": distilled["accuracy_vs_teacher"] >= 0.97,
            "throughput_2_5x": distilled["throughput_vs_teacher"] >= 2.5,
            "beats_gold_by_2_std": margin > 2}
    print(f"goal (distilled 2-layer student): {goal}; margin over gold-only: {margin:.1f} std")
    path = write_results(args.name, {
        "teacher_lr": args.teacher_lr, "seeds": args.seeds, "shared_teacher": args.shared_teacher,
        "seeds_run": [metrics["logits"]["seed"] for metrics in per_seed], "train_texts": args.train_texts,
        "teacher_epochs": args.teacher_epochs, "student_epochs": args.student_epochs, "rows": results, "goal": goal,
        "margin_over_gold_in_std": margin, "gap_recovered": [m["logits"]["gap_recovered"] for m in per_seed]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
