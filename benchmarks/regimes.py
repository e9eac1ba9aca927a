"""Training regimes beyond one frozen teacher (issue 6) on MNIST-1D, side by side with a baseline and plain KD.

    nice -n 10 .venv/bin/python benchmarks/regimes.py --seeds 3 --epochs 15

Per seed: `kd` trains the reference teacher (CNN 32-64), the baseline student (CNN 8-16, hard labels) and the KD
student; the regimes that need a CNN 32-64 teacher reuse that seed's teacher (loaded from its run directory), so
their rows differ from KD only in the regime. Every run is one `distill.train` call on a built-in recipe.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import distill  # noqa: E402
from common import fmt, mean_std, write_results  # noqa: E402
from distill.config import RECIPES_DIR  # noqa: E402


def recipe(name: str, epochs: float, **changes: Any) -> dict[str, Any]:
    """A built-in recipe as a dict, every training schedule set to ``epochs``, with top-level ``changes``."""
    raw = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text())
    raw["name"] = name
    raw.update(copy.deepcopy(changes))
    for section in (raw.get("training"), (raw.get("teacher") or {}).get("train"),
                    *((teacher.get("train") for teacher in (raw.get("mode") or {}).get("teachers", [])))):
        if section:
            section["epochs"] = epochs
    return raw


class Runs:
    def __init__(self, root: Path, seed: int):
        self.root, self.seed = root, seed

    def __call__(self, label: str, raw: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        raw = {**raw, "seed": self.seed, "evaluation": {**raw.get("evaluation", {}), "latency_runs": 5}}
        metrics = distill.train(raw, output=self.root / f"s{self.seed}-{label}", resume=True,
                                show_progress=False).metrics
        print(f"seed {self.seed} {label}: {time.perf_counter() - started:.0f} s", flush=True)
        return metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=15)
    parser.add_argument("--student-channels", default="8,16",
                        help="channels of the CNN student of kd, multi-teacher, transfer, counterfactual, data-free "
                             "and of mutual learning's small peer")
    parser.add_argument("--skip", default="", help="comma-separated row groups to leave out: born, chain, self")
    parser.add_argument("--name", default="regimes", help="results file benchmarks/results/NAME.json")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    channels = [int(width) for width in args.student_channels.split(",")]
    student = {"model": {"kind": "cnn", "channels": channels, "kernel_size": 5}}
    root = Path(args.output or tempfile.mkdtemp(prefix="regimes-"))
    rows: dict[str, list[float]] = {}
    extra: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    started = time.perf_counter()
    for seed in range(args.seeds):
        run = Runs(root, seed)
        epochs = args.epochs
        small = {"kind": "cnn", "channels": [8, 16], "kernel_size": 5}
        kd = run("kd", recipe("mnist1d-kd", epochs, student=student, teacher={
            "model": {"kind": "cnn", "channels": [32, 64], "kernel_size": 5},
            "train": yaml.safe_load((RECIPES_DIR / "mnist1d-kd.yaml").read_text())["teacher"]["train"]}))
        teacher_dir = str(root / f"s{seed}-kd" / "teacher")
        saved_teacher = {"model": {"kind": "saved", "path": teacher_dir}}
        add("teacher", kd["teacher"]["accuracy"])
        add("baseline", kd["baseline"]["accuracy"])
        add("kd", kd["student"]["accuracy"])

        # several teachers: the reference CNN (reused) and an MLP trained here
        multi = recipe("mnist1d-multi-teacher", epochs, baseline=False, student=student)
        multi["mode"]["teachers"][0] = {"name": "cnn", "model": saved_teacher["model"]}
        metrics = run("multi-confidence", multi)
        add("multi/mlp teacher", metrics["teacher-mlp"]["accuracy"])
        add("multi/teachers combined", metrics["teacher"]["accuracy"])
        add("multi/student, confidence", metrics["student"]["accuracy"])
        multi["mode"] = {**multi["mode"], "combine": "fixed"}
        multi["mode"]["teachers"][1] = {"name": "mlp", "model": {
            "kind": "saved", "path": str(root / f"s{seed}-multi-confidence" / "teacher-mlp")}}
        add("multi/student, fixed", run("multi-fixed", multi)["student"]["accuracy"])
        mlp_kd = recipe("mnist1d-kd", epochs, baseline=False, student=student,
                        teacher={"model": multi["mode"]["teachers"][1]["model"]})
        add("multi/KD from the MLP alone", run("kd-mlp", mlp_kd)["student"]["accuracy"])

        # two strong, different CNN teachers: the reference one and a wider one with shorter kernels
        twin = recipe("mnist1d-multi-teacher", epochs, baseline=False, student=student)
        twin["mode"]["teachers"] = [{"name": "cnn", "model": saved_teacher["model"]},
                                    {"name": "cnn_k3", "model": {"kind": "cnn", "channels": [48, 96], "kernel_size": 3},
                                     "train": twin["mode"]["teachers"][0]["train"]}]
        metrics = run("multi-cnn-pair", twin)
        add("multi2/second CNN teacher (48-96, k3)", metrics["teacher-cnn_k3"]["accuracy"])
        add("multi2/teachers combined", metrics["teacher"]["accuracy"])
        add("multi2/student, confidence", metrics["student"]["accuracy"])
        second = {"model": {"kind": "saved", "path": str(root / f"s{seed}-multi-cnn-pair" / "teacher-cnn_k3")}}
        add("multi2/KD from the second CNN alone",
            run("kd-cnn-k3", recipe("mnist1d-kd", epochs, baseline=False, student=student, teacher=second))[
                "student"]["accuracy"])

        mutual = recipe("mnist1d-mutual", epochs, student=student)
        mutual["mode"]["peers"][1] = student["model"]
        metrics = run("mutual", mutual)
        for index, name in enumerate(("CNN 32-64", "student CNN")):
            add(f"mutual/{name} alone", metrics[f"alone-{index}"]["accuracy"])
            add(f"mutual/{name} mutual", metrics[f"peer-{index}"]["accuracy"])
        add("mutual/ensemble of peers", metrics["ensemble"]["accuracy"])

        if "born" not in skip:
            metrics = run("born-again-t1", recipe("mnist1d-born-again", epochs))
            for generation in range(4):
                add(f"born/generation {generation}", metrics[f"generation-{generation}"]["accuracy"])
            add("born/ensemble 1-3", metrics["ensemble"]["accuracy"])
        if "chain" not in skip:
            chain(run, root, seed, epochs, small, add)

        metrics = run("transfer-soft", recipe("mnist1d-transfer-set", epochs, teacher=saved_teacher, student=student))
        add("transfer/5% labels alone", metrics["baseline"]["accuracy"])
        add("transfer/5% labels + soft targets", metrics["student"]["accuracy"])
        hard = recipe("mnist1d-transfer-set", epochs, teacher=saved_teacher, student=student, baseline=False,
                      objective={"terms": [{"name": "pseudo", "loss": "teacher_label_ce", "weight": 0.9},
                                           {"name": "hard", "loss": "cross_entropy", "weight": 0.1}]})
        add("transfer/5% labels + hard pseudo-labels", run("transfer-hard", hard)["student"]["accuracy"])

        metrics = run("counterfactual", recipe("mnist1d-counterfactual", epochs, teacher=saved_teacher, baseline=False,
                                               student=student))
        add("counterfactual/student", metrics["student"]["accuracy"])
        extra.setdefault("interchange_agreement_counterfactual", []).append(metrics["interchange_agreement"])
        extra.setdefault("interchange_agreement_kd", []).append(kd_interchange_agreement(root / f"s{seed}-kd"))

        metrics = run("data-free", recipe("mnist1d-data-free", epochs, teacher=saved_teacher, student=student))
        add("data-free/student (no real input)", metrics["student"]["accuracy"])

        if "self" not in skip:
            metrics = run("self-distillation", recipe("mnist1d-self-distillation", epochs))
            add("self/CNN 16-32-32 alone", metrics["baseline"]["accuracy"])
            add("self/CNN 16-32-32 with exits", metrics["student"]["accuracy"])
            for index in range(2):
                add(f"self/exit {index}", metrics[f"exit-{index}"]["accuracy"])
        print(f"seed {seed} done at {time.perf_counter() - started:.0f} s", flush=True)

    table = Table(title=f"MNIST-1D regimes, student CNN {args.student_channels}, {args.seeds} seeds, "
                        f"{args.epochs:g} epochs per stage, test accuracy (1,000)")
    table.add_column("row")
    table.add_column("accuracy (mean ± std)", justify="right")
    for key, values in rows.items():
        table.add_row(key, fmt(values, 1, percent=True))
    for key, values in extra.items():
        table.add_row(key, fmt(values, 1, percent=True))
    Console().print(table)
    results = {key: {"accuracy_mean": mean_std(values)[0], "accuracy_std": mean_std(values)[1], "accuracies": values}
               for key, values in rows.items()}
    mean = {key: value["accuracy_mean"] for key, value in results.items()}
    path = write_results(args.name, {
        "seeds": args.seeds, "epochs": args.epochs, "student_channels": channels, "rows": results,
        "interchange_agreement": {key: {"mean": mean_std(values)[0], "std": mean_std(values)[1], "values": values}
                                  for key, values in extra.items()},
        "wall_seconds": round(time.perf_counter() - started, 1),
        # plain keys for the shapes the issue expects
        "multi_teacher_gain_over_best_single_kd": mean["multi/student, confidence"] - max(
            mean["kd"], mean["multi/KD from the MLP alone"]),
        "multi_teacher_cnn_pair_gain_over_best_single_kd": mean["multi2/student, confidence"] - max(
            mean["kd"], mean["multi2/KD from the second CNN alone"]),
        "mutual_gain_small_peer": mean["mutual/student CNN mutual"] - mean["mutual/student CNN alone"],
        "mutual_gain_large_peer": mean["mutual/CNN 32-64 mutual"] - mean["mutual/CNN 32-64 alone"],
        "born_again_gain_over_teacher": (mean["born/generation 1"] - mean["born/generation 0"]
                                         if "born" not in skip else None),
        "assistant_gain_over_direct": (mean["chain/student 4-8 via assistant"] - mean["chain/student 4-8 direct KD"]
                                       if "chain" not in skip else None),
        "transfer_gap_recovered": (mean["transfer/5% labels + soft targets"] - mean["transfer/5% labels alone"])
        / max(mean["baseline"] - mean["transfer/5% labels alone"], 1e-9),
        "data_free_accuracy": mean["data-free/student (no real input)"],
        "self_distillation_gain": (mean["self/CNN 16-32-32 with exits"] - mean["self/CNN 16-32-32 alone"]
                                   if "self" not in skip else None),
    })
    print(f"wrote {path}")


def chain(run: Runs, root: Path, seed: int, epochs: float, small: dict[str, Any], add: Any) -> None:
    """Large teacher -> assistant -> tiny student, against the same teacher -> tiny student directly."""
    metrics = run("chain", recipe("mnist1d-assistant-chain", epochs))
    add("chain/teacher 64-128-128", metrics["teacher"]["accuracy"])
    add("chain/assistant 16-32", metrics["assistant-1"]["accuracy"])
    add("chain/student 4-8 alone", metrics["baseline"]["accuracy"])
    add("chain/student 4-8 via assistant", metrics["student"]["accuracy"])
    direct = recipe("mnist1d-kd", epochs, baseline=False, student={"model": {**small, "channels": [4, 8]}},
                    teacher={"model": {"kind": "saved", "path": str(root / f"s{seed}-chain" / "teacher")}})
    add("chain/student 4-8 direct KD", run("chain-direct", direct)["student"]["accuracy"])


def kd_interchange_agreement(run_dir: Path) -> float:
    """The plain KD student's interchange agreement with its teacher, for comparison with the regime's."""
    from distill.config import CounterfactualMode
    from distill.data import load_builtin
    from distill.models import load_saved
    from distill.modes.counterfactual import interchange_agreement

    raw = yaml.safe_load((RECIPES_DIR / "mnist1d-counterfactual.yaml").read_text())
    mode = CounterfactualMode(**raw["mode"])
    import torch

    test = load_builtin("mnist1d", num_samples=5000, seed=0)
    return interchange_agreement(load_saved(run_dir / "teacher"), load_saved(run_dir / "student"), mode,
                                 torch.from_numpy(test.test_x))


if __name__ == "__main__":
    main()
