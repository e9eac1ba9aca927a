"""DistilBERT-style encoder distillation: all-MiniLM-L6-v2 (6 layers) -> 2-layer student derived from it, trained
on King James verses, evaluated on held-out books; against the same student trained on the output alone.

    .venv/bin/python benchmarks/encoder_distill.py --seeds 3 --train-verses 6000

Goal (issue): cosine >= 0.95 and top-10 neighbour overlap >= 0.8 at >= 2.5x the teacher's throughput.
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

VARIANTS = {
    "hidden states (L_cos + hints + embedding)": [],
    "output only (embedding cosine)": ["objective.terms=[{name: emb, loss: cosine, student: mean_pooled, teacher: mean_pooled}]"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-verses", type=int, default=6000, help="training verses per run (of 30,371)")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    root = Path(args.output or tempfile.mkdtemp(prefix="encoder-bench-"))
    rows: dict[str, dict[str, list[float]]] = {}
    for variant, extra in VARIANTS.items():
        values = rows.setdefault(variant, {"cosine": [], "overlap": [], "throughput_ratio": [], "compression": []})
        for seed in range(args.seeds):
            overrides = [f"seed={seed}", f"data.train_subset={args.train_verses}", f"training.epochs={args.epochs}", *extra]
            name = "hidden" if not extra else "output"
            metrics = distill.train("distilbert-style", output=root / f"{name}-s{seed}", overrides=overrides,
                                    resume=True, show_progress=False).metrics
            values["cosine"].append(metrics["embedding_cosine"])
            values["overlap"].append(metrics["neighbour_overlap"])
            values["throughput_ratio"].append(metrics["throughput_ratio"])
            values["compression"].append(metrics["compression"])
            print(f"{variant} seed {seed}: cosine {metrics['embedding_cosine']:.4f} overlap "
                  f"{metrics['neighbour_overlap']:.3f} throughput x{metrics['throughput_ratio']:.2f}", flush=True)
    table = Table(title=f"MiniLM-L6 -> 2 layers, {args.train_verses} KJV verses x {args.epochs:g} epoch, "
                        f"537 held-out verses, {args.seeds} seeds")
    for column in ("student trained on", "cosine to teacher", "top-10 overlap", "throughput vs teacher"):
        table.add_column(column, justify="left" if column.startswith("student") else "right")
    for variant, values in rows.items():
        table.add_row(variant, fmt(values["cosine"], 4), fmt(values["overlap"], 3), fmt(values["throughput_ratio"], 2))
    table.add_row("goal", ">= 0.95", ">= 0.8", ">= 2.5")
    Console().print(table)
    main_row = rows[next(iter(VARIANTS))]
    write_results("encoder_distill", {
        "seeds": args.seeds, "train_verses": args.train_verses, "epochs": args.epochs,
        "embedding_cosine": mean_std(main_row["cosine"])[0], "embedding_cosine_std": mean_std(main_row["cosine"])[1],
        "neighbour_overlap": mean_std(main_row["overlap"])[0], "neighbour_overlap_std": mean_std(main_row["overlap"])[1],
        "throughput_ratio": mean_std(main_row["throughput_ratio"])[0],
        "variants": {variant: {key: {"mean": mean_std(value)[0], "std": mean_std(value)[1], "values": value}
                               for key, value in values.items()} for variant, values in rows.items()}})


if __name__ == "__main__":
    main()
