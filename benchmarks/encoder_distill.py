"""DistilBERT-style encoder distillation: all-MiniLM-L6-v2 (6 layers) -> 2-layer student derived from it, trained
on King James verses, evaluated on held-out books; against the same student trained on the output alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/encoder_distill.py --seeds 3 --epochs 2 --jobs 2

The teacher runs once: `distill cache build distilbert-style` stores its token states, its layer-3 states and its
sentence embeddings for all 30,371 training verses (float16, ~1.6 GB in --cache), and every run trains only the
student from that cache. Runs are separate `distill train` processes, --jobs at a time with one thread each, and
are resumed (finished ones reused) when the command is run again with the same --output.

Goal (issue 3): cosine >= 0.95 and top-10 neighbour overlap >= 0.8 at >= 2.5x the teacher's throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from common import fmt, mean_std, write_results  # noqa: E402

RECIPE = "distilbert-style"
EMBEDDING_ONLY = "objective.terms=[{name: emb, loss: cosine, student: mean_pooled, teacher: mean_pooled}]"
VARIANTS = {
    "hidden states (L_cos on tokens + layer hint + embedding cosine)": ("hidden", []),
    "output only (embedding cosine)": ("output", [EMBEDDING_ONLY]),
}
METRICS = {"cosine": "embedding_cosine", "overlap": "neighbour_overlap", "throughput_ratio": "throughput_ratio",
           "compression": "compression", "run_wall_seconds": "wall_seconds"}


def build_cache(cache: Path) -> None:
    if (cache / "cache.json").is_file():
        return
    print(f"building the teacher cache in {cache} (the teacher's only pass over the corpus)", flush=True)
    subprocess.run([sys.executable, "-m", "distill.cli", "cache", "build", RECIPE, "-o", str(cache),
                    "--batch-size", "128", "--quiet"], check=True)


def train(run_dir: Path, overrides: list[str]) -> dict:
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        command = [sys.executable, "-m", "distill.cli", "train", RECIPE, "-o", str(run_dir), "--quiet"]
        if (run_dir / "checkpoints").is_dir():
            command.append("--resume")
        for override in overrides:
            command += ["--set", override]
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as stream:
            done = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise SystemExit(f"{run_dir.name} failed (exit {done.returncode}); see {log}")
    return json.loads(metrics_file.read_text())


def untrained_student(rounds: int) -> dict:
    """The derived student before any training (teacher layers 0 and 5 stacked), measured like the runs; and the
    student/teacher encoding throughput ratio measured alone on the machine, teacher and student alternating for
    ``rounds`` rounds (the runs measure theirs while another run trains beside them)."""
    import torch

    from distill.config import load_recipe
    from distill.derive import default_layers, derive_student, find_layer_stack
    from distill.evaluate.embedding import encode
    from distill.evaluate.report import evaluate_embeddings
    from distill.models import build_model
    from distill.run import load_data

    torch.set_num_threads(1)  # as in each run
    config = load_recipe(RECIPE)
    data = load_data(config)
    teacher = build_model(config.teacher.model, input_shape=data.input_shape, num_classes=data.num_classes,
                          vocab_size=len(data.tokenizer) if data.tokenizer is not None else None).eval()
    assert config.student.from_teacher is not None
    layers = config.student.from_teacher.layers or default_layers(len(find_layer_stack(teacher)[1]),
                                                                  config.student.from_teacher.keep)
    student = derive_student(teacher, layers).eval()
    metrics = evaluate_embeddings({"teacher": teacher, "student": student}, data.test, evaluation=config.evaluation)
    ratios = []
    for _ in range(rounds):  # same architecture as every trained student: its speed does not depend on the weights
        teacher_embeddings, teacher_speed = encode(teacher, data.test)
        ratios.append(encode(student, data.test)[1] / teacher_speed)
    metrics["throughput_ratios_alone"] = ratios
    metrics["teacher_embeddings"] = teacher_embeddings
    return metrics


def random_error_overlap(teacher_embeddings, cosine: float, seed: int = 0) -> float:
    """Top-10 overlap of the teacher's embeddings plus isotropic random error, scaled so that the mean cosine to
    the teacher equals ``cosine``: what a student of that cosine would keep if its error were not structured."""
    import torch
    import torch.nn.functional as F

    from distill.evaluate.embedding import embedding_cosine, neighbour_overlap

    unit = F.normalize(teacher_embeddings.float(), dim=-1)
    noise = F.normalize(torch.randn(unit.shape, generator=torch.Generator().manual_seed(seed)), dim=-1)
    low, high = 0.0, 4.0
    for _ in range(40):  # the cosine falls monotonically with the noise scale
        scale = (low + high) / 2
        low, high = (scale, high) if embedding_cosine(unit + scale * noise, unit) > cosine else (low, scale)
    return neighbour_overlap(unit + scale * noise, unit)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--train-verses", type=int, default=None, help="training verses per run (default: all 30,371)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each")
    parser.add_argument("--cache", default=None, help="teacher cache folder (built when missing)")
    parser.add_argument("--output", default=None, help="run folders (reused: finished runs are not repeated)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override for every run (repeatable)")
    parser.add_argument("--speed-rounds", type=int, default=5, help="rounds of the throughput ratio measured alone")
    parser.add_argument("--name", default="encoder_distill")
    args = parser.parse_args()
    root = Path(args.output or tempfile.mkdtemp(prefix="encoder-bench-"))
    cache = Path(args.cache) if args.cache else root / "teacher-cache"
    started = time.perf_counter()
    build_cache(cache)
    common = [f"teacher.cache={cache}", f"training.epochs={args.epochs}", *args.overrides]
    if args.train_verses:
        common.append(f"data.train_subset={args.train_verses}")
    jobs = [(variant, seed, root / f"{short}-s{seed}", [f"seed={seed}", *common, *extra])
            for variant, (short, extra) in VARIANTS.items() for seed in range(args.seeds)]

    def run(job: tuple) -> tuple[str, int, dict]:
        variant, seed, run_dir, overrides = job
        metrics = train(run_dir, overrides)
        print(f"{variant} seed {seed}: cosine {metrics['embedding_cosine']:.4f} overlap "
              f"{metrics['neighbour_overlap']:.3f} throughput x{metrics['throughput_ratio']:.2f}", flush=True)
        return variant, seed, metrics

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        finished = list(pool.map(run, jobs))
    untrained = untrained_student(args.speed_rounds)
    alone = untrained["throughput_ratios_alone"]
    rows: dict[str, dict[str, list[float]]] = {variant: {key: [] for key in METRICS} for variant in VARIANTS}
    for variant, _, metrics in sorted(finished, key=lambda item: (item[0], item[1])):
        for key, metric in METRICS.items():
            rows[variant][key].append(metrics[metric])
    verses = args.train_verses or 30371
    table = Table(title=f"MiniLM-L6 -> 2 layers, {verses} KJV verses x {args.epochs:g} epochs, "
                        f"537 held-out verses, {args.seeds} seeds")
    for column in ("student trained on", "cosine to teacher", "top-10 overlap", "throughput vs teacher"):
        table.add_column(column, justify="left" if column.startswith("student") else "right")
    for variant, values in rows.items():
        table.add_row(variant, fmt(values["cosine"], 4), fmt(values["overlap"], 3), fmt(values["throughput_ratio"], 2))
    table.add_row("nothing (the derived student untrained)", f"{untrained['embedding_cosine']:.4f}",
                  f"{untrained['neighbour_overlap']:.3f}", f"{untrained['throughput_ratio']:.2f}")
    table.add_row("throughput measured alone (teacher and student alternating)", "", "", fmt(alone, 2))
    random_overlaps = {variant: random_error_overlap(untrained["teacher_embeddings"], mean_std(values["cosine"])[0])
                       for variant, values in rows.items()}
    for variant, overlap in random_overlaps.items():
        table.add_row(f"(random error of the same cosine as '{variant.split(' (')[0]}')",
                      f"{mean_std(rows[variant]['cosine'])[0]:.4f}", f"{overlap:.3f}", "")
    table.add_row("goal", ">= 0.95", ">= 0.8", ">= 2.5")
    Console().print(table)
    main_row = rows[next(iter(VARIANTS))]
    write_results(args.name, {
        "seeds": args.seeds, "train_verses": verses, "epochs": args.epochs, "overrides": args.overrides,
        "embedding_cosine": mean_std(main_row["cosine"])[0], "embedding_cosine_std": mean_std(main_row["cosine"])[1],
        "neighbour_overlap": mean_std(main_row["overlap"])[0],
        "neighbour_overlap_std": mean_std(main_row["overlap"])[1],
        "throughput_ratio": mean_std(alone)[0], "throughput_ratio_std": mean_std(alone)[1],
        "throughput_ratio_during_runs": mean_std(main_row["throughput_ratio"])[0],
        "wall_seconds": round(time.perf_counter() - started),  # of this invocation (finished runs are reused)
        "untrained": {key: untrained.get(metric) for key, metric in METRICS.items()}, "throughput_ratios_alone": alone,
        "random_error_overlap": random_overlaps,
        "variants": {variant: {key: {"mean": mean_std(value)[0], "std": mean_std(value)[1], "values": value}
                               for key, value in values.items()} for variant, values in rows.items()}})


if __name__ == "__main__":
    main()
