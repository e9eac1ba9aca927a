"""Engine overhead: per-step time of ``distill.trainer.fit`` against a minimal hand-written PyTorch loop.

Setting (Hinton et al. 2015, MNIST): teacher MLP 784-1200-1200-10 (dropout 0.5, input dropout 0.2; in eval mode),
student MLP 784-800-800-10, a fixed 10,000-sample subset of the MNIST training split, batch 100, SGD momentum 0.9
nesterov, constant lr 0.05, KD objective alpha=0.9, T=20 (soft_kl + cross_entropy), fp32 on CPU.

Three loops, each from scratch (fresh student, optimizer and data loader; ``fit`` gets a fresh run_dir). By
default (``--method interleave``) they run side by side in one process: after every ``--block`` steps of one ``fit``
call (from inside its scheduler step), as many steps of the hand loop and of the CE loop, in an order that
alternates block by block, each loop timed over its own segments only (see ``interleaved_ms``). With
``--method window``: a run of 10 + S steps takes a timestamp after every optimizer step (in ``fit``
from inside ``scheduler.step()``, by wrapping ``lr_multiplier``, whose LambdaLR calls it once a step; in the hand
loops right after ``zero_grad``), and per-step = (stamp[10 + S] - stamp[10]) / S. So setup (Accelerator, prepare,
probe batch) and the final checkpoint are left out, while everything between two optimizer steps is counted: data
loading and collation, the epoch boundary (S = 100 steps is one epoch of the subset), ``fit``'s logging every 10
steps, the isfinite check, its loss bookkeeping, the LR scheduler and the progress bar. ``--method difference`` times
whole runs of S and 2S steps instead: per-step = (t_2S - t_S) / S (noisier: two runs and their setup per figure).

* ours: ``distill.trainer.fit`` (log_every=10, no validation set, checkpoint_every larger than the run so only the
  final checkpoint is written, show_progress=True as the CLI uses it; its bar goes to an in-memory console).
* hand: DataLoader(shuffle, drop_last), teacher.eval() under no_grad, the same pure loss functions from
  ``distill.losses.logits``, backward, optimizer.step, zero_grad(set_to_none=True), ``loss.item()`` every 10 steps.
* ce: the hand loop training the student alone on plain cross-entropy (no teacher): KD step / CE step is the
  teacher's cost.

Loops alternate within each round (the order rotates from round to round); ratios are computed per round. The
machine may be shared: a round starts only once other processes leave the CPUs idle, and a round during which they
used more than 5% of the CPUs (from /proc/stat) is discarded and run again.

    .venv/bin/python benchmarks/engine_overhead.py [--rounds 10] [--steps 100] [--threads N]
        [--method interleave|window|difference] [--block 5] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import importlib
import importlib.util
import io
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from distill.config import ObjectiveConfig, TrainingConfig
from distill.data import ArrayDataset, load_builtin
from distill.losses.logits import cross_entropy, soft_kl
from distill.nets import MLP
from distill.objective import Objective

sys.path.insert(0, str(Path(__file__).parent))
from common import optimizer_step_stamps  # noqa: E402

# The training loop lives in distill.trainer (formerly distill.train, a name the package's `train` function shadows).
try:
    train_module = importlib.import_module("distill.trainer")
except ModuleNotFoundError:
    train_module = importlib.import_module("distill.train")
RESULTS = Path(__file__).parent / "results" / "engine_overhead.json"
SUBSET, BATCH, LR, MOMENTUM, ALPHA, TEMPERATURE, LOG_EVERY = 10_000, 100, 0.05, 0.9, 0.9, 20.0, 10
SEED = 0
WARMUP = 10  # steps run before the timed window (method 'window')


def make_teacher() -> torch.nn.Module:
    return MLP(784, [1200, 1200], 10, dropout=0.5, input_dropout=0.2)


def make_student() -> torch.nn.Module:
    return MLP(784, [800, 800], 10)


def make_sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True)


def run_ours(dataset: ArrayDataset, teacher: torch.nn.Module, steps: int) -> tuple[float, list[float]]:
    """One ``fit`` call of ``steps`` optimizer steps: (seconds for the whole call, one timestamp per step)."""
    student = make_student()
    training = TrainingConfig(max_steps=steps, batch_size=BATCH, optimizer="sgd", lr=LR, momentum=MOMENTUM,
                              nesterov=True, schedule="constant", mixed_precision="no", device="cpu",
                              log_every=LOG_EVERY, checkpoint_every=10 * steps)
    objective = Objective(ObjectiveConfig(alpha=ALPHA, temperature=TEMPERATURE))
    with optimizer_step_stamps() as stamps, tempfile.TemporaryDirectory(prefix="engine_overhead_") as run_dir:
        started = time.perf_counter()
        train_module.fit(student, dataset, objective=objective, training=training, stage="student",
                         run_dir=Path(run_dir), seed=SEED, teacher=teacher, show_progress=True)
        elapsed = time.perf_counter() - started
    return elapsed, stamps[1:]  # stamps[0]: LambdaLR's initial call at construction (setup)


def hand_steps(dataset: ArrayDataset, teacher: torch.nn.Module | None) -> Iterator[None]:
    """A minimal loop, KD against ``teacher`` or plain CE when it is None, one optimizer step per ``next()``
    (it yields after ``zero_grad``, where ``fit``'s timestamp falls after its step)."""
    student = make_student()
    torch.manual_seed(SEED)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, drop_last=True)
    optimizer = make_sgd(student)
    student.train()
    if teacher is not None:
        teacher.eval()
    step = 0
    while True:
        for batch in loader:
            inputs, labels = batch["inputs"], batch["labels"]
            logits = student(inputs)
            if teacher is None:
                loss = cross_entropy(logits, labels)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(inputs)
                loss = (ALPHA * soft_kl(logits, teacher_logits, temperature=TEMPERATURE)
                        + (1 - ALPHA) * cross_entropy(logits, labels))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % LOG_EVERY == 0:
                loss.item()
            yield


def run_hand(dataset: ArrayDataset, teacher: torch.nn.Module | None, steps: int) -> tuple[float, list[float]]:
    """``steps`` steps of ``hand_steps``: (seconds for the whole call, one timestamp per step)."""
    started, stamps = time.perf_counter(), []
    loop = hand_steps(dataset, teacher)
    for _ in range(steps):
        next(loop)
        stamps.append(time.perf_counter())
    return time.perf_counter() - started, stamps


def interleaved_ms(dataset: ArrayDataset, teacher: torch.nn.Module, steps: int, block: int,
                   first: str) -> dict[str, float]:
    """Per-step ms of the three loops run side by side in one process: one ``fit`` call of WARMUP + ``steps``
    steps, and after every ``block`` of its steps (from inside its scheduler step), ``block`` steps of the hand KD
    loop and of the CE loop, in an order that alternates block by block. Each loop is timed over its own
    segments only, so all three meet the same machine state within a fraction of a second of each other; setup,
    the warm-up steps and the final checkpoint are left out. ``fit``'s own bar thread keeps running during the
    hand segments (its ~2 redraws a second are charged to whichever loop runs, <0.5% of a step)."""
    hand, ce = hand_steps(dataset, teacher), hand_steps(dataset, None)
    for _ in range(WARMUP):
        next(hand), next(ce)
    spent = {"ours": 0.0, "hand": 0.0, "ce": 0.0}
    state = {"calls": 0, "resumed": None, "flip": first == "hand"}

    def after_ours_step() -> None:
        state["calls"] += 1
        done = state["calls"] - 1  # ours steps finished; the first call is LambdaLR's at construction
        if done < WARMUP or (done - WARMUP) % block:
            return
        if done > WARMUP:
            spent["ours"] += time.perf_counter() - state["resumed"]
        if done < WARMUP + steps:
            order = (("hand", hand), ("ce", ce)) if state["flip"] else (("ce", ce), ("hand", hand))
            state["flip"] = not state["flip"]
            for name, loop in order:
                started = time.perf_counter()
                for _ in range(block):
                    next(loop)
                spent[name] += time.perf_counter() - started
        state["resumed"] = time.perf_counter()

    original = train_module.lr_multiplier

    def hooked_multiplier(*args, **kwargs):
        multiplier = original(*args, **kwargs)

        def timed(step: int) -> float:
            after_ours_step()
            return multiplier(step)
        return timed

    student = make_student()
    training = TrainingConfig(max_steps=WARMUP + steps, batch_size=BATCH, optimizer="sgd", lr=LR,
                              momentum=MOMENTUM, nesterov=True, schedule="constant", mixed_precision="no",
                              device="cpu", log_every=LOG_EVERY, checkpoint_every=10 * steps)
    objective = Objective(ObjectiveConfig(alpha=ALPHA, temperature=TEMPERATURE))
    train_module.lr_multiplier = hooked_multiplier
    try:
        with tempfile.TemporaryDirectory(prefix="engine_overhead_") as run_dir:
            train_module.fit(student, dataset, objective=objective, training=training, stage="student",
                             run_dir=Path(run_dir), seed=SEED, teacher=teacher, show_progress=True)
    finally:
        train_module.lr_multiplier = original
    return {name: seconds / steps * 1000 for name, seconds in spent.items()}


def per_step_ms(run: Callable[[int], tuple[float, list[float]]], steps: int, method: str) -> float:
    if method == "difference":  # (t_2S - t_S) / S over whole calls: setup and the final checkpoint cancel
        return (run(2 * steps)[0] - run(steps)[0]) / steps * 1000
    # "window": one call of WARMUP + S steps; the S steps after the first WARMUP ones, timed from inside
    _, stamps = run(WARMUP + steps)
    assert len(stamps) == WARMUP + steps, len(stamps)
    return (stamps[-1] - stamps[WARMUP - 1]) / steps * 1000


def _busy_jiffies() -> int | None:
    """Non-idle CPU time of the whole machine (Linux /proc/stat), in clock ticks; None elsewhere."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait


class ForeignLoad:
    """Share of the machine's CPU time that other processes used while the block ran (0..1; None off Linux).
    The machine is shared: a round during which other work ran is retried, as its timings mean little."""

    def __enter__(self) -> "ForeignLoad":
        self.busy, self.own, self.wall = _busy_jiffies(), sum(os.times()[:2]), time.perf_counter()
        self.share: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        busy = _busy_jiffies()
        if busy is None or self.busy is None:
            return
        ticks = os.sysconf("SC_CLK_TCK")
        wall = time.perf_counter() - self.wall
        foreign = (busy - self.busy) / ticks - (sum(os.times()[:2]) - self.own)
        self.share = max(0.0, foreign) / (wall * (os.cpu_count() or 1))


def wait_for_quiet(limit: float, probe: float = 2.0, pause: float = 10.0, patience: float = 3600.0) -> None:
    """Before a round, sleep until other processes leave the CPUs (nearly) idle, so that no round is spent running
    5-30x slower on a busy machine (and slowing the other work down); gives up after ``patience`` seconds."""
    deadline, told = time.monotonic() + patience, False
    while time.monotonic() < deadline:
        with ForeignLoad() as load:
            time.sleep(probe)
        if load.share is None or load.share <= limit:
            return
        if not told:
            print(f"  waiting for the CPUs: other processes use {load.share:.0%} ...", flush=True)
            told = True
        time.sleep(pause)


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def print_table(rows: list[tuple[str, dict[str, float], str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback
        print(f"{'':28} {'median':>9} {'mean':>9} {'std':>8}")
        for name, stats, unit in rows:
            print(f"{name:28} {stats['median']:9.3f} {stats['mean']:9.3f} {stats['std']:8.3f} {unit}")
        return
    table = Table(title="Engine overhead (per optimizer step)")
    for column in ("", "median", "mean ± std", "unit"):
        table.add_column(column, justify="left" if not column else "right")
    for name, stats, unit in rows:
        table.add_row(name, f"{stats['median']:.3f}", f"{stats['mean']:.3f} ± {stats['std']:.3f}", unit)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    parser.add_argument("--steps", type=int, default=100,
                        help="S: steps timed per loop and round (difference: runs of S and 2S steps; default 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--method", choices=["interleave", "window", "difference"], default="interleave",
                        help="interleave (default): the three loops side by side in one process, alternating every "
                             "--block steps; window: each loop in turn, S steps after 10 warm-up steps inside one "
                             "run; difference: (t_2S - t_S) / S over whole runs")
    parser.add_argument("--block", type=int, default=5, help="steps per turn with --method interleave (default 5)")
    parser.add_argument("--max-foreign-load", type=float, default=0.05,
                        help="retry a round when other processes used more than this share of the CPUs (Linux)")
    parser.add_argument("--max-retries", type=int, default=50, help="discarded rounds allowed in all (default 50)")
    parser.add_argument("--retry-wait", type=float, default=5.0, help="seconds to wait before a retry")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 20 steps, no JSON written")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 20
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    # fit's progress bar is kept (as the CLI shows it) but drawn to an in-memory console, so it does not mix
    # with this script's output; the rich Live refresh thread still runs as it does in a terminal.
    from rich.console import Console
    # the bar is drawn by the step's follow-up (distill.step_end) since the trainer's split; older trees: the trainer
    bar_module = importlib.import_module("distill.step_end") if importlib.util.find_spec("distill.step_end") \
        else train_module
    original_progress = bar_module.Progress

    def progress_to_memory(*columns, **kwargs):
        kwargs.setdefault("console", Console(file=io.StringIO(), force_terminal=True, width=120))
        return original_progress(*columns, **kwargs)

    bar_module.Progress = progress_to_memory

    print(f"torch {torch.__version__}, {threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; rounds={args.rounds}, S={args.steps}", flush=True)
    splits = load_builtin("mnist")
    dataset = ArrayDataset(splits.train_x[:SUBSET], splits.train_y[:SUBSET])
    torch.manual_seed(SEED)
    teacher = make_teacher()  # untrained: its weights do not change the cost of a step
    teacher.eval().requires_grad_(False)

    loops: dict[str, Callable[[int], tuple[float, list[float]]]] = {
        "ours": lambda steps: run_ours(dataset, teacher, steps),
        "hand": lambda steps: run_hand(dataset, teacher, steps),
        "ce": lambda steps: run_hand(dataset, None, steps),
    }
    print("warm-up ...", flush=True)
    for run in loops.values():
        run(10)

    names = list(loops)
    results: dict[str, list[float]] = {name: [] for name in names}
    retried, index, loads = 0, 0, []
    while index < args.rounds:
        order = names[index % len(names):] + names[:index % len(names)]
        wait_for_quiet(args.max_foreign_load)
        with ForeignLoad() as load:
            if args.method == "interleave":
                round_ms = interleaved_ms(dataset, teacher, args.steps, args.block, first=order[0])
            else:
                round_ms = {name: per_step_ms(loops[name], args.steps, args.method) for name in order}
        share = load.share
        line = ("  ".join(f"{name} {round_ms[name]:.2f} ms/step" for name in names)
                + f"  ours/hand {round_ms['ours'] / round_ms['hand']:.3f}"
                + (f"  (other load {load.share:.0%})" if load.share is not None else ""))
        if load.share is not None and load.share > args.max_foreign_load and retried < args.max_retries:
            retried += 1
            print(f"round {index + 1}/{args.rounds} discarded, other processes were busy: {line}", flush=True)
            time.sleep(args.retry_wait)
            continue
        for name in names:
            results[name].append(round_ms[name])
        loads.append(None if share is None else round(share, 3))
        index += 1
        print(f"round {index}/{args.rounds}: {line}", flush=True)

    overhead = [ours / hand for ours, hand in zip(results["ours"], results["hand"])]
    kd_over_ce = [hand / ce for hand, ce in zip(results["hand"], results["ce"])]
    stats = {name: summary(values) for name, values in results.items()}
    overhead_stats, kd_stats = summary(overhead), summary(kd_over_ce)
    print_table([("ours: distill.trainer.fit (KD)", stats["ours"], "ms"),
                 ("hand: minimal loop (KD)", stats["hand"], "ms"),
                 ("ce: student alone (CE)", stats["ce"], "ms"),
                 ("ours / hand", overhead_stats, "×"),
                 ("KD / CE (hand)", kd_stats, "×")])
    verdict = "meets" if overhead_stats["median"] <= 1.05 else "misses"
    print(f"overhead ours/hand = {overhead_stats['median']:.3f} (median): {verdict} the goal <= 1.05", flush=True)

    record = {
        "overhead_ratio": round(overhead_stats["median"], 4),
        "overhead_ratio_mean": round(overhead_stats["mean"], 4),
        "overhead_ratio_std": round(overhead_stats["std"], 4),
        "ours_step_ms": round(stats["ours"]["median"], 3),
        "hand_step_ms": round(stats["hand"]["median"], 3),
        "ce_step_ms": round(stats["ce"]["median"], 3),
        "kd_over_ce_ratio": round(kd_stats["median"], 4),
        "ours_step_ms_mean": round(stats["ours"]["mean"], 3), "ours_step_ms_std": round(stats["ours"]["std"], 3),
        "hand_step_ms_mean": round(stats["hand"]["mean"], 3), "hand_step_ms_std": round(stats["hand"]["std"], 3),
        "ce_step_ms_mean": round(stats["ce"]["mean"], 3), "ce_step_ms_std": round(stats["ce"]["std"], 3),
        "kd_over_ce_ratio_mean": round(kd_stats["mean"], 4), "kd_over_ce_ratio_std": round(kd_stats["std"], 4),
        "per_round_ms": {name: [round(value, 3) for value in values] for name, values in results.items()},
        "method": args.method,
        **({"block_steps": args.block} if args.method == "interleave" else {}),
        "rounds_discarded_for_load": retried,
        "other_load_per_round": loads,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": threads,
        "torch_version": torch.__version__,
        "device": f"cpu ({os.cpu_count()} cores, {platform.machine()})",
        "command": "python benchmarks/engine_overhead.py " + shlex.join(sys.argv[1:]),
    }
    if args.quick:
        print("--quick: results not written", flush=True)
        return
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}", flush=True)


if __name__ == "__main__":
    main()
