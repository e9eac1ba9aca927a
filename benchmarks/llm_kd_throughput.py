"""Throughput of one off-policy token-KD training step: a hand-written loop, TRL's GKDTrainer, and ours.

Setting (issue 7, "Throughput"): a Llama pair built locally from configs (no download), vocabulary 8,192, student
~5.3 M parameters (hidden 256, 4 layers), teacher ~23 M (hidden 512, 6 layers), tied embeddings, fp32 on CPU,
batch 8 x 128 tokens of fixed random token ids (throughput does not depend on the text), every position after the
first supervised. One step = student forward, teacher forward under no_grad, generalised JSD (beta 0.5, GKD's
default; temperature 1, which is what ``GKDTrainer.compute_loss`` trains with) over the shifted next-token
distributions averaged over supervised tokens, backward, AdamW step (lr 1e-4, no weight decay, no clipping unless
a column says so), zero_grad.

Columns, each from the same initial student weights and the same teacher:

* ``hand``: a minimal PyTorch loop doing exactly that step (the reference, ratio 1).
* ``trl_gkd``: TRL ``GKDTrainer`` with ``lmbda=0`` (off-policy: it never generates) at its best here: bf16 and
  gradient checkpointing off (both default on in TRL's configs), constant learning rate, no clipping, logging
  every 10 steps, no checkpoints.
* ``trl_gkd_defaults``: the same trainer with TRL's defaults except ``bf16=False`` (bf16 autocast on this CPU is a
  different computation): gradient checkpointing on, clipping at 1.0, linear decay.
* ``ours``: distill's trainer (``distill.trainer.fit``) on the same models, batch and objective: a ``token_kd``
  term (jsd, beta 0.5) on the ``final_hidden`` signal, chunked over tokens (``run_ours``).

Per-step time: every loop takes a timestamp after each optimizer step; a round runs ``--warmup`` + ``--steps``
steps and its per-step time is (stamp[warmup + steps] - stamp[warmup]) / steps, so setup (trainer construction,
Accelerate's prepare) is left out and everything between two optimizer steps (data loading, collation, logging,
the scheduler) is counted. Columns alternate within each round, the order rotating from round to round; ratios to
``hand`` are taken per round and the median over rounds is reported with its min-max spread. tokens/s counts the
8 x 128 input tokens of a step.

    .venv/bin/python benchmarks/llm_kd_throughput.py [--rounds 3] [--steps 30] [--warmup 3] [--threads 1]
        [--columns hand trl_gkd trl_gkd_defaults ours] [--quick]
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import optimizer_step_stamps  # noqa: E402

VOCAB = 8192
BATCH = 8
SEQ_LEN = 128
BETA = 0.5
LR = 1e-4
STUDENT = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=4)
TEACHER = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=6, num_attention_heads=8,
               num_key_value_heads=8)


# ----------------------------------------------------------------------------------------------------------------
# models, data, the objective written out once
# ----------------------------------------------------------------------------------------------------------------


def build_llama(shape: dict, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=SEQ_LEN, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, **shape)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def make_batches(count: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (BATCH, SEQ_LEN), generator=generator) for _ in range(count)]


def jsd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """Generalised JSD (TRL's convention: mixture beta * p_teacher + (1 - beta) * p_student), mean over tokens."""
    log_ps = F.log_softmax(student_logits.flatten(0, -2), dim=-1)
    log_pt = F.log_softmax(teacher_logits.flatten(0, -2), dim=-1)
    log_m = torch.logaddexp(log_ps + torch.log1p(torch.tensor(-beta)), log_pt + torch.log(torch.tensor(beta)))
    per_token = (beta * (log_pt.exp() * (log_pt - log_m)).sum(-1)
                 + (1 - beta) * (log_ps.exp() * (log_ps - log_m)).sum(-1))
    return per_token.mean()


# ----------------------------------------------------------------------------------------------------------------
# the loops: each returns one timestamp per optimizer step
# ----------------------------------------------------------------------------------------------------------------


def run_hand(student, teacher, batches: list[torch.Tensor], steps: int) -> list[float]:
    student.train()
    teacher.eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    stamps = []
    for step in range(steps):
        input_ids = batches[step % len(batches)]
        student_logits = student(input_ids=input_ids).logits[:, :-1]
        with torch.no_grad():
            teacher_logits = teacher(input_ids=input_ids).logits[:, :-1]
        loss = jsd_loss(student_logits, teacher_logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 10 == 0:
            loss.item()  # what a loop that logs pays: a sync every 10 steps
        stamps.append(time.perf_counter())
    return stamps


def _tokenizer():
    """A word-level tokenizer over VOCAB made-up tokens: GKDTrainer wants a processing class (pad id)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="t0")),
                                   pad_token="t0", bos_token="t1", eos_token="t2", unk_token="t0")


def _trl_collate(rows: list[dict]) -> dict:
    input_ids = torch.tensor([row["input_ids"] for row in rows])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def run_trl_gkd(student, teacher, batches: list[torch.Tensor], steps: int, defaults: bool = False) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    rows = [{"input_ids": ids.tolist()} for batch in batches for ids in batch]
    with tempfile.TemporaryDirectory() as output_dir:
        common = dict(output_dir=output_dir, per_device_train_batch_size=BATCH, max_steps=steps, lmbda=0.0,
                      beta=BETA, learning_rate=LR, weight_decay=0.0, report_to="none", save_strategy="no",
                      bf16=False, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
        if not defaults:
            common.update(gradient_checkpointing=False, max_grad_norm=0.0, lr_scheduler_type="constant",
                          logging_steps=10)
        config = GKDConfig(**common)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = GKDTrainer(model=student, teacher_model=teacher, args=config,
                                 train_dataset=Dataset.from_list(rows), data_collator=_trl_collate,
                                 processing_class=_tokenizer(), callbacks=[Stamp()])
            # The data are already in training order: no shuffling, as in the other loops.
            trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
            trainer.train()
    return stamps


class _Blocks(torch.utils.data.Dataset):
    """The loops' batches as LM examples for distill: labels are next-token targets, the last position
    unsupervised, so the same 8 x 127 tokens are supervised as in the other columns."""

    def __init__(self, batches: list[torch.Tensor]):
        from distill.data.lm import next_token_targets

        self.rows = [row for batch in batches for row in batch]
        self.labels = [torch.tensor(next_token_targets(row.tolist())) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "attention_mask": torch.ones_like(self.rows[index]),
                "labels": self.labels[index]}


def run_ours(student, teacher, batches: list[torch.Tensor], steps: int) -> list[float]:
    """distill's trainer (``distill.trainer.fit``) on the same models, batch and objective: one ``token_kd`` term
    (jsd, beta 0.5, T 1) on the ``final_hidden`` signal, AdamW at a constant lr, no clipping, fp32 on CPU, a log line
    every 10 steps, no checkpoint inside the window (the final one is written after the last timestamp). Per-step
    timestamps come from wrapping ``lr_multiplier``, which the LambdaLR calls once per optimizer step, after it."""
    from distill import trainer as train_module
    from distill.config import ObjectiveConfig, TrainingConfig
    from distill.objective import Objective

    objective = Objective(ObjectiveConfig(temperature=1.0, terms=[
        {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden", "weight": 1.0,
         "options": {"divergence": "jsd", "beta": BETA}}]))
    training = TrainingConfig(max_steps=steps, batch_size=BATCH, optimizer="adamw", lr=LR, weight_decay=0.0,
                              schedule="constant", mixed_precision="no", device="cpu", log_every=10,
                              checkpoint_every=10 * steps)
    with optimizer_step_stamps() as stamps, tempfile.TemporaryDirectory(prefix="llm_kd_throughput_") as run_dir:
        train_module.fit(student, _Blocks(batches), objective=objective, training=training, stage="student",
                         run_dir=Path(run_dir), seed=0, teacher=teacher, show_progress=True)
    return stamps[1:]  # stamps[0]: LambdaLR's call at construction (setup)


def objective_parity(student, teacher, input_ids: torch.Tensor) -> dict[str, float]:
    """The step's loss on one batch as the hand loop computes it, as GKDTrainer does (labels = input_ids) and as
    ours does (distill's chunked token KD on the final hidden states and heads, next-token labels)."""
    from trl.experimental.gkd import GKDTrainer

    with torch.no_grad():
        student_logits = student(input_ids=input_ids).logits
        teacher_logits = teacher(input_ids=input_ids).logits
    hand = float(jsd_loss(student_logits[:, :-1], teacher_logits[:, :-1]))
    trl = float(GKDTrainer.generalized_jsd_loss(student_logits[:, :-1], teacher_logits[:, :-1],
                                                labels=input_ids[:, 1:], beta=BETA))
    from distill.losses.tokens import chunked_token_kd

    with torch.no_grad():
        student_hidden = student.model(input_ids=input_ids).last_hidden_state
        teacher_hidden = teacher.model(input_ids=input_ids).last_hidden_state
        ours = float(chunked_token_kd(student_hidden, student.lm_head.weight, teacher_hidden,
                                      teacher.lm_head.weight, torch.stack(_Blocks([input_ids]).labels),
                                      divergence="jsd", beta=BETA, temperature=1.0))
    return {"hand": hand, "trl_gkd": trl, "ours_loss_function": ours}


COLUMNS: dict[str, Callable] = {
    "hand": run_hand,
    "trl_gkd": run_trl_gkd,
    "trl_gkd_defaults": lambda s, t, b, n: run_trl_gkd(s, t, b, n, defaults=True),
    "ours": run_ours,
}


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    # 1 thread: on a shared, oversubscribed CPU two OpenMP threads spin-wait on each other
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS))
    parser.add_argument("--quick", action="store_true", help="1 round of 3 steps, to check the script runs")
    parser.add_argument("--output", default="llm_kd_throughput")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
    torch.set_num_threads(args.threads)

    from rich.console import Console
    from rich.table import Table

    from common import write_results

    console = Console(width=150)
    student0 = build_llama(STUDENT, seed=0)
    teacher = build_llama(TEACHER, seed=1).eval().requires_grad_(False)
    sizes = {"student_params": sum(p.numel() for p in student0.parameters()),
             "teacher_params": sum(p.numel() for p in teacher.parameters())}
    console.print(f"student {sizes['student_params'] / 1e6:.2f} M, teacher {sizes['teacher_params'] / 1e6:.2f} M "
                  f"parameters; batch {BATCH} x {SEQ_LEN}; {args.threads} threads")
    total = args.warmup + args.steps
    batches = make_batches(total, seed=2)

    losses = objective_parity(student0, teacher, batches[0])
    console.print("loss on the first batch: " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    if max(losses.values()) - min(losses.values()) > 1e-5 * max(losses.values()):
        raise SystemExit(f"the columns do not compute the same objective: {losses}")

    per_step: dict[str, list[float | None]] = {c: [] for c in args.columns}
    errors: dict[str, str] = {}
    for round_index in range(args.rounds):
        shift = round_index % len(args.columns)
        for column in args.columns[shift:] + args.columns[:shift]:
            if column in errors:
                per_step[column].append(None)
                continue
            student = copy.deepcopy(student0)
            try:
                stamps = COLUMNS[column](student, teacher, batches, total)
            except NotImplementedError as error:
                errors[column] = str(error)
                per_step[column].append(None)
                continue
            if len(stamps) != total:
                raise SystemExit(f"{column}: {len(stamps)} step stamps, expected {total}")
            seconds = (stamps[-1] - stamps[args.warmup - 1]) / args.steps if args.warmup else \
                (stamps[-1] - stamps[0]) / (args.steps - 1)
            per_step[column].append(seconds)
            console.print(f"round {round_index + 1}: {column:18s} {seconds * 1000:8.1f} ms/step "
                          f"{BATCH * SEQ_LEN / seconds:8.0f} tokens/s")

    tokens = BATCH * SEQ_LEN
    summary = {}
    for column, values in per_step.items():
        clean = [v for v in values if v is not None]
        if not clean:
            summary[column] = {"status": errors.get(column, "not run")}
            continue
        ratios = [v / h for v, h in zip(values, per_step.get("hand", [])) if v is not None and h is not None]
        summary[column] = {
            "step_ms_median": round(1000 * statistics.median(clean), 2),
            "step_ms_min": round(1000 * min(clean), 2), "step_ms_max": round(1000 * max(clean), 2),
            "tokens_per_s_median": round(tokens / statistics.median(clean), 1),
            "ratio_to_hand_median": round(statistics.median(ratios), 4) if ratios else None,
            "ratio_to_hand_min": round(min(ratios), 4) if ratios else None,
            "ratio_to_hand_max": round(max(ratios), 4) if ratios else None,
            "per_round_ms": [None if v is None else round(1000 * v, 2) for v in values],
        }

    table = Table(title=f"off-policy KD step, Llama {sizes['student_params'] / 1e6:.1f} M <- "
                        f"{sizes['teacher_params'] / 1e6:.1f} M, vocab {VOCAB}, batch {BATCH} x {SEQ_LEN}, fp32 CPU; "
                        f"median of {args.rounds} x {args.steps} steps")
    for name in ["column", "ms / step", "tokens / s", "time / hand (median)", "min - max", "issue's figure"]:
        table.add_column(name, justify="right")
    peer = {"hand": "1", "trl_gkd": "1.34x at best", "trl_gkd_defaults": "2.14x", "ours": "goal <= 1.05x"}
    for column, s in summary.items():
        if "step_ms_median" not in s:
            table.add_row(column, "-", "-", s["status"], "-", peer.get(column, ""))
            continue
        table.add_row(column, f"{s['step_ms_median']:.1f}", f"{s['tokens_per_s_median']:.0f}",
                      f"{s['ratio_to_hand_median']:.3f}" if s["ratio_to_hand_median"] is not None else "-",
                      f"{s['ratio_to_hand_min']:.3f} - {s['ratio_to_hand_max']:.3f}"
                      if s["ratio_to_hand_min"] is not None else "-", peer.get(column, ""))
    console.print(table)
    path = write_results(args.output, {
        "vocab": VOCAB, "batch": BATCH, "seq_len": SEQ_LEN, "beta": BETA, "lr": LR, "threads": args.threads,
        "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, **sizes,
        "trl_version": _version("trl"), "transformers_version": _version("transformers"),
        "ratio_to_hand": {c: s.get("ratio_to_hand_median") for c, s in summary.items()},
        "first_batch_loss": losses,
        "goal_ours_ratio_to_hand": 1.05, "issue_figures": {"trl_gkd": 1.34, "trl_gkd_defaults": 2.14},
        "columns": summary,
    })
    console.print(f"wrote {path}")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
