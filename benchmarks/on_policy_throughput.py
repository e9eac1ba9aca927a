"""Throughput of one on-policy distillation step: distill's trainer, a hand-written loop and TRL's
DistillationTrainer, side by side on the same models, prompts and settings.

    .venv/bin/python benchmarks/on_policy_throughput.py [--rounds 5] [--steps 4] [--warmup 1]
        [--trl-path /tmp/trlpkg] [--output on_policy_throughput]

Setting: a Llama pair built from ``LlamaConfig`` (nothing downloaded), vocabulary 8,192, student hidden 256 x 4
layers (4 heads), teacher hidden 512 x 6 layers (8 heads), MLP 4 x hidden, fp32 on the CPU with 2 threads. One step:
the student samples 96 new tokens for each of 8 prompts of 32 random token ids (temperature 1, top_p 1, no top_k,
Hugging Face ``generate`` with its KV cache), the teacher scores prompt + completion under no_grad, and the
per-token reverse KL(student || teacher) of the next-token distributions, averaged over the 8 x 96 completion
tokens (prompt masked), takes one AdamW step (lr 1e-4, no weight decay, no clipping, constant schedule).

Every completion is exactly 96 tokens in all three because the end-of-sequence id (and the padding id) is 8192,
one past the last logit: no model here can sample it, so no row stops early and no batch is ever padded. The same
id is the tokenizer's ``eos_token_id`` and the models' ``generation_config.eos_token_id``, which is where each of the
three reads its stop tokens from; ``min_new_tokens`` is not used, as distill's sampling section has no such knob.
Each runner checks that every completion it trained on had 96 tokens.

The three, each from the same initial student weights (a fresh copy per run) and the same frozen teacher:

* ``ours``: ``distill.trainer.start_stage`` / ``train_loop`` / ``finish_stage`` with the batch source
  ``distill.on_policy.on_policy_batches`` (lmbda 1: every step on-policy) and a ``token_kd`` term (reverse_kl) on
  the ``final_hidden`` signal, which forms the logits chunk by chunk inside the loss.
* ``hand``: ``student.generate``, the teacher's logits under no_grad, the student's logits, dense reverse KL over
  the completion positions, backward, AdamW step (``hand_loop`` below).
* ``trl``: TRL 1.16 ``DistillationTrainer`` (always on-policy: it has no lmbda) with ``beta=1.0`` (its generalized
  JSD at beta 1 is the reverse KL), ``max_completion_length=96``, temperature 1, top_p 1, top_k 0, fp32 (``bf16``
  off: TRL's configs default it on), activation checkpointing off (also on by default), ``optim="adamw_torch"``
  (the trainer's default is the fused AdamW), ``max_grad_norm=0`` (no clipping), a constant schedule, and no
  logging, saving or evaluation. Its prompts are the same token ids written as words of a word-level tokenizer.

Timing: each runner takes a timestamp at the end of every optimizer step (ours: ``common.optimizer_step_stamps``,
the LambdaLR's call after each step; hand: after ``optimizer.step``; TRL: a ``TrainerCallback``'s ``on_step_end``).
A run trains ``--warmup`` + ``--steps`` steps and its seconds per step are (end of the last step - end of the last
warm-up step) / steps, so set-up and the first, slower steps are left out and everything between two optimizer
steps (data loading, the trainer's bookkeeping) is counted. TRL's ``on_step_begin`` .. ``on_step_end`` time (its
inner step, without the data fetch and the callbacks around it) is recorded beside it. Rounds run the three in
turn, the starting one rotating from round to round, so drift on a shared machine hits all three alike. Ratios are
taken per round and their median over rounds is reported. tokens/s counts 8 x (32 + 96) tokens per step.

Split of a step: generation (ours: ``StudentSampler.sample``, wrapped; hand: ``generate``; TRL: its
``_generate_single_turn``), teacher scoring (ours: the live teacher's ``signals``, i.e. its backbone forward, the
teacher's head being projected inside the chunked loss; hand: the teacher's forward with its head) and update (the
rest: student forward, loss, backward, AdamW, the trainer's own work). TRL scores the teacher inside its loss, so
only its generation is split off.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# transformers warns that an eos id outside the vocabulary "may result in unexpected behavior": here it is the point
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import copy
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import mean_std, optimizer_step_stamps, write_results

THREADS = 2
VOCAB = 8192
UNREACHABLE_ID = VOCAB  # eos and padding: one past the last logit, so never sampled
PROMPT_TOKENS = 32
NEW_TOKENS = 96
BATCH = 8
LR = 1e-4
TOKENS_PER_STEP = BATCH * (PROMPT_TOKENS + NEW_TOKENS)
MAX_POSITIONS = 256
STUDENT = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=4)
TEACHER = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
               num_key_value_heads=8)
IMPLEMENTATIONS = ("ours", "hand", "trl")


# ----------------------------------------------------------------------------------------------------------------
# models, prompts, what every runner reports
# ----------------------------------------------------------------------------------------------------------------


def build_llama(shape: dict, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=MAX_POSITIONS, bos_token_id=1,
                         eos_token_id=UNREACHABLE_ID, pad_token_id=None, **shape)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def make_prompts(count: int, seed: int) -> torch.Tensor:
    """``count`` prompts of PROMPT_TOKENS token ids, avoiding the ids 0-2 a tokenizer usually reserves."""
    return torch.randint(3, VOCAB, (count, PROMPT_TOKENS), generator=torch.Generator().manual_seed(seed))


@dataclass
class RunTiming:
    """One run of one implementation: the end time of each optimizer step, and per step (where measured) the seconds
    spent generating and scoring with the teacher, and the lengths of the completions it trained on."""
    step_ends: list[float] = field(default_factory=list)
    generation: list[float] = field(default_factory=list)
    teacher: list[float] = field(default_factory=list)
    completion_lengths: list[int] = field(default_factory=list)
    inner_step: list[float] = field(default_factory=list)  # TRL only: on_step_begin .. on_step_end

    def seconds_per_step(self, warmup: int, steps: int) -> float:
        if len(self.step_ends) != warmup + steps:
            raise RuntimeError(f"{len(self.step_ends)} step timestamps, expected {warmup + steps}")
        return (self.step_ends[-1] - self.step_ends[warmup - 1]) / steps

    def check_completions(self, name: str) -> None:
        wrong = sorted({length for length in self.completion_lengths if length != NEW_TOKENS})
        if not self.completion_lengths or wrong:
            raise RuntimeError(f"{name}: completions of {wrong or 'no'} tokens, expected {NEW_TOKENS} each")


def timed(record: list[float], function: Callable) -> Callable:
    """``function``, appending the seconds each call took to ``record``."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = function(*args, **kwargs)
        record.append(time.perf_counter() - started)
        return result
    return wrapper


# ----------------------------------------------------------------------------------------------------------------
# ours: distill's trainer with the on-policy batch source
# ----------------------------------------------------------------------------------------------------------------


class PromptAnswerExamples(torch.utils.data.Dataset):
    """Chat-like LM examples whose prompt is the first PROMPT_TOKENS ids: one answer id after it, supervised
    (labels are next-token targets, so the label sits on the last prompt token), which is what
    ``distill.on_policy.prompt_of`` reads the prompt from. The answer itself is replaced by the student's sample."""

    def __init__(self, prompts: torch.Tensor):
        self.prompts = prompts
        self.answers = torch.randint(3, VOCAB, (len(prompts),), generator=torch.Generator().manual_seed(1))

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        input_ids = torch.cat([self.prompts[index], self.answers[index:index + 1]])
        labels = torch.full_like(input_ids, -100)
        labels[PROMPT_TOKENS - 1] = self.answers[index]
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}

    def collate_fn(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        from distill.data.lm import pad_lm_batch

        return pad_lm_batch(items, UNREACHABLE_ID)


def run_ours(student, teacher, prompts: torch.Tensor, warmup: int, steps: int) -> RunTiming:
    from distill import on_policy, trainer
    from distill.config import ObjectiveConfig, TrainingConfig
    from distill.config.on_policy import OnPolicyConfig
    from distill.objective import Objective

    timing = RunTiming()
    objective = Objective(ObjectiveConfig(terms=[
        {"name": "kd", "loss": "token_kd", "student": "final_hidden", "teacher": "final_hidden",
         "options": {"divergence": "reverse_kl"}}]))
    training = TrainingConfig(max_steps=warmup + steps, batch_size=BATCH, optimizer="adamw", lr=LR,
                              schedule="constant", log_every=1000, checkpoint_every=100000, device="cpu",
                              mixed_precision="no")
    config = OnPolicyConfig(lmbda=1.0, sampling={"max_new_tokens": NEW_TOKENS, "temperature": 1.0},
                            log_samples_every=0)
    # what on_policy reads of a tokenizer: the padding id, and the eos id it stops on (with the model's)
    tokenizer = SimpleNamespace(pad_token_id=UNREACHABLE_ID, eos_token_id=UNREACHABLE_ID,
                                decode=lambda ids, **_: " ".join(f"t{token}" for token in ids))
    original_sample = on_policy.StudentSampler.sample
    timed_sample = timed(timing.generation, original_sample)

    def sample_and_count(self, prompt_ids: list[list[int]], seed: int):
        completions = timed_sample(self, prompt_ids, seed)
        timing.completion_lengths.extend(len(completion.tokens) for completion in completions)
        return completions

    on_policy.StudentSampler.sample = sample_and_count
    try:
        with optimizer_step_stamps() as stamps, tempfile.TemporaryDirectory(prefix="on_policy_throughput_") as run_dir:
            run = trainer.start_stage(student, PromptAnswerExamples(prompts), objective=objective, training=training,
                                      stage="student", run_dir=Path(run_dir), seed=0, teacher=teacher,
                                      show_progress=False)
            # wrapped after start_stage, so its probe of the objective is not counted as a step's scoring
            source = run.teacher_signals_from
            source.signals = timed(timing.teacher, source.signals)
            trainer.train_loop(run, batches=on_policy.on_policy_batches(config, tokenizer))
            trainer.finish_stage(run)
    finally:
        on_policy.StudentSampler.sample = original_sample
    timing.step_ends = stamps[1:]  # stamps[0]: the LambdaLR's call at construction (set-up)
    return timing


# ----------------------------------------------------------------------------------------------------------------
# hand: the loop a user writes
# ----------------------------------------------------------------------------------------------------------------


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) of each position's next-token distribution, averaged over the positions given."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def hand_loop(student, teacher, prompts: torch.Tensor, warmup: int, steps: int) -> RunTiming:
    """Sample, score, step: the completion positions are the last NEW_TOKENS + 1 logits but the last (which
    predicts past the completion), so both models project only those through their heads (``logits_to_keep``)."""
    timing = RunTiming()
    teacher.eval()
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.0)
    torch.manual_seed(0)
    for step in range(warmup + steps):
        batch = prompts[(step * BATCH) % len(prompts):][:BATCH]
        started = time.perf_counter()
        student.eval()
        with torch.no_grad():
            sequences = student.generate(input_ids=batch, attention_mask=torch.ones_like(batch), do_sample=True,
                                         temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=NEW_TOKENS,
                                         pad_token_id=UNREACHABLE_ID, eos_token_id=UNREACHABLE_ID)
        student.train()
        generated = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher(input_ids=sequences, logits_to_keep=NEW_TOKENS + 1).logits[:, :-1]
        scored = time.perf_counter()
        student_logits = student(input_ids=sequences, logits_to_keep=NEW_TOKENS + 1).logits[:, :-1]
        loss = reverse_kl(student_logits, teacher_logits)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        timing.step_ends.append(time.perf_counter())
        timing.generation.append(generated - started)
        timing.teacher.append(scored - generated)
        timing.completion_lengths.extend([sequences.shape[1] - batch.shape[1]] * len(batch))
    return timing


# ----------------------------------------------------------------------------------------------------------------
# trl: DistillationTrainer
# ----------------------------------------------------------------------------------------------------------------


class TRLUnavailable(RuntimeError):
    pass


def import_trl(trl_path: str):
    """TRL from ``trl_path`` (installed there without its dependencies), only for this runner."""
    if trl_path not in sys.path:
        sys.path.insert(0, trl_path)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        import trl
        from trl import DistillationConfig, DistillationTrainer
    except Exception as error:  # any failure to import means the column cannot run
        raise TRLUnavailable(f"TRL cannot be imported from {trl_path}: {type(error).__name__}: {error}") from None
    return trl.__version__, DistillationConfig, DistillationTrainer


def word_tokenizer():
    """A word-level tokenizer whose word ``t<i>`` is token id i, plus ``</s>`` = the unreachable id as eos and
    padding: DistillationTrainer reads text prompts and tokenizes them itself."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{index}": index for index in range(VOCAB)} | {"</s>": UNREACHABLE_ID}
    backend = Tokenizer(WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="</s>", unk_token="t0",
                                   padding_side="left")


def run_trl(student, teacher, prompts: torch.Tensor, warmup: int, steps: int, trl_path: str) -> RunTiming:
    _, DistillationConfig, DistillationTrainer = import_trl(trl_path)
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback

    timing = RunTiming()
    begins: list[float] = []

    class StepStamps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            timing.step_ends.append(time.perf_counter())
            timing.inner_step.append(timing.step_ends[-1] - begins[-1])

    tokenizer = word_tokenizer()
    texts = [" ".join(f"t{token}" for token in row) for row in prompts.tolist()]
    if tokenizer(text=texts[:1])["input_ids"] != prompts[:1].tolist():
        raise RuntimeError("the word tokenizer does not give back the prompt's token ids")
    with tempfile.TemporaryDirectory(prefix="on_policy_throughput_trl_") as output_dir:
        config = DistillationConfig(
            output_dir=output_dir, per_device_train_batch_size=BATCH, gradient_accumulation_steps=1,
            max_steps=warmup + steps, learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant",
            optim="adamw_torch", max_grad_norm=0.0, bf16=False, activation_checkpointing=False, use_cpu=True,
            max_completion_length=NEW_TOKENS, temperature=1.0, top_p=1.0, top_k=0, beta=1.0,
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config,
                                          train_dataset=Dataset.from_dict({"prompt": texts}),
                                          processing_class=tokenizer, callbacks=[StepStamps()])
            trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics even with logging off
            generate = timed(timing.generation, trainer._generate_single_turn)

            def generate_and_count(*args: Any, **kwargs: Any):
                completion_ids = generate(*args, **kwargs)
                timing.completion_lengths.extend(len(ids) for ids in completion_ids)
                return completion_ids

            trainer._generate_single_turn = generate_and_count
            trainer.train()
    return timing


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------


def split_of(timing: RunTiming, warmup: int, seconds: float) -> dict[str, float | None]:
    """Mean seconds per timed step spent generating, scoring with the teacher, and on the rest (the update)."""
    generation = statistics.fmean(timing.generation[warmup:]) if timing.generation else None
    teacher = statistics.fmean(timing.teacher[warmup:]) if timing.teacher else None
    update = seconds - (generation or 0.0) - (teacher or 0.0)
    return {"generation": generation, "teacher": teacher, "update": update}


def median(values: list[float | None]) -> float | None:
    clean = [value for value in values if value is not None]
    return statistics.median(clean) if clean else None


def ratios(top: list[float | None], bottom: list[float | None]) -> list[float]:
    return [a / b for a, b in zip(top, bottom) if a is not None and b is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="steps per run left out of the timing (at least 1)")
    parser.add_argument("--trl-path", default="/tmp/trlpkg", help="where TRL is installed (put on sys.path)")
    parser.add_argument("--output", default="on_policy_throughput", help="results file: benchmarks/results/NAME.json")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup, --steps and --rounds must be at least 1 (timing starts at a warm-up step's end)")
    torch.set_num_threads(THREADS)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    student0 = build_llama(STUDENT, seed=0)
    teacher = build_llama(TEACHER, seed=1).eval().requires_grad_(False)
    sizes = {"student_params": sum(p.numel() for p in student0.parameters()),
             "teacher_params": sum(p.numel() for p in teacher.parameters())}
    prompts = make_prompts(BATCH * (args.warmup + args.steps), seed=2)
    try:
        trl_version = import_trl(args.trl_path)[0]
        trl_error = None
    except TRLUnavailable as error:
        trl_version, trl_error = None, str(error)
        console.print(f"[yellow]{trl_error}; the trl column is left out[/yellow]")
    console.print(f"student {sizes['student_params'] / 1e6:.2f} M, teacher {sizes['teacher_params'] / 1e6:.2f} M "
                  f"parameters; batch {BATCH} x ({PROMPT_TOKENS} prompt + {NEW_TOKENS} sampled) tokens; "
                  f"{THREADS} threads; {args.rounds} rounds of {args.warmup} + {args.steps} steps")

    runners: dict[str, Callable[..., RunTiming]] = {
        "ours": run_ours, "hand": hand_loop,
        "trl": lambda *a: run_trl(*a, trl_path=args.trl_path)}
    seconds: dict[str, list[float | None]] = {name: [] for name in IMPLEMENTATIONS}
    splits: dict[str, list[dict[str, float | None]]] = {name: [] for name in IMPLEMENTATIONS}
    trl_inner: list[float] = []
    orders = []
    for round_index in range(args.rounds):
        shift = round_index % len(IMPLEMENTATIONS)
        order = IMPLEMENTATIONS[shift:] + IMPLEMENTATIONS[:shift]
        orders.append(list(order))
        for name in order:
            if name == "trl" and trl_error is not None:
                seconds[name].append(None)
                continue
            try:
                timing = runners[name](copy.deepcopy(student0), teacher, prompts, args.warmup, args.steps)
                timing.check_completions(name)
            except Exception as error:
                if name != "trl":
                    raise
                traceback.print_exc()
                trl_error = f"TRL failed: {type(error).__name__}: {error}"
                seconds[name].append(None)
                continue
            if torch.get_num_threads() != THREADS:  # a library that changed it would skew the next runs
                console.print(f"[yellow]{name} left torch at {torch.get_num_threads()} threads; reset[/yellow]")
                torch.set_num_threads(THREADS)
            per_step = timing.seconds_per_step(args.warmup, args.steps)
            seconds[name].append(per_step)
            splits[name].append(split_of(timing, args.warmup, per_step))
            if timing.inner_step:
                trl_inner.append(statistics.fmean(timing.inner_step[args.warmup:]))
            console.print(f"round {round_index + 1}: {name:4s} {per_step:7.3f} s/step "
                          f"{TOKENS_PER_STEP / per_step:7.1f} tokens/s")

    tokens_per_s = {name: [None if value is None else TOKENS_PER_STEP / value for value in values]
                    for name, values in seconds.items()}
    throughput_vs_trl = median(ratios(tokens_per_s["ours"], tokens_per_s["trl"]))
    time_vs_hand_loop = median(ratios(seconds["ours"], seconds["hand"]))
    trl_vs_hand_loop = median(ratios(seconds["trl"], seconds["hand"]))
    summary: dict[str, Any] = {}
    split_summary: dict[str, Any] = {}
    for name in IMPLEMENTATIONS:
        clean = [value for value in tokens_per_s[name] if value is not None]
        if not clean:
            summary[name] = {"status": trl_error if name == "trl" else "not run"}
            continue
        mean, std = mean_std(clean)
        summary[name] = {"tokens_per_s_median": round(statistics.median(clean), 2),
                         "tokens_per_s_mean": round(mean, 2), "tokens_per_s_std": round(std, 2),
                         "seconds_per_step_median": round(median(seconds[name]), 4),
                         "tokens_per_s_per_round": [None if value is None else round(value, 2)
                                                    for value in tokens_per_s[name]]}
        split_summary[name] = {part: (None if all(split[part] is None for split in splits[name]) else
                                      round(median([split[part] for split in splits[name]]), 4))
                               for part in ("generation", "teacher", "update")}
    if trl_inner:
        summary["trl"]["inner_step_seconds_median"] = round(statistics.median(trl_inner), 4)
    if "trl" in split_summary:  # TRL's teacher forward runs inside its loss: counted in update
        split_summary["trl"]["teacher"] = None

    table = Table(title=f"on-policy distillation step, Llama {sizes['student_params'] / 1e6:.1f} M <- "
                        f"{sizes['teacher_params'] / 1e6:.1f} M, vocab {VOCAB}, batch {BATCH} x ({PROMPT_TOKENS} + "
                        f"{NEW_TOKENS} sampled), fp32 CPU {THREADS} threads; {args.rounds} rounds x {args.steps} steps")
    for column in ("implementation", "tokens/s median", "tokens/s mean ± std", "s/step median", "generation s",
                   "teacher s", "update s"):
        table.add_column(column, justify="right")
    for name in IMPLEMENTATIONS:
        figures = summary[name]
        if "status" in figures:
            table.add_row(name, figures["status"], "-", "-", "-", "-", "-")
            continue
        parts = [("-" if split_summary[name][part] is None else f"{split_summary[name][part]:.3f}")
                 for part in ("generation", "teacher", "update")]
        table.add_row(name, f"{figures['tokens_per_s_median']:.1f}",
                      f"{figures['tokens_per_s_mean']:.1f} ± {figures['tokens_per_s_std']:.1f}",
                      f"{figures['seconds_per_step_median']:.3f}", *parts)
    console.print(table)

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    console.print(f"throughput_vs_trl (ours / TRL tokens/s) {show(throughput_vs_trl)}; time_vs_hand_loop "
                  f"(ours / hand s/step) {show(time_vs_hand_loop)}; trl_vs_hand_loop (TRL / hand s/step) "
                  f"{show(trl_vs_hand_loop)}; medians over rounds")

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    path = write_results(args.output, {
        "throughput_vs_trl": rounded(throughput_vs_trl), "time_vs_hand_loop": rounded(time_vs_hand_loop),
        "trl_vs_hand_loop": rounded(trl_vs_hand_loop), "rounds": args.rounds, "steps_per_round": args.steps,
        "warmup_steps": args.warmup, "round_orders": orders,
        "settings": {"vocab": VOCAB, "student": STUDENT, "teacher": TEACHER, **sizes,
                     "max_position_embeddings": MAX_POSITIONS, "batch": BATCH, "prompt_tokens": PROMPT_TOKENS,
                     "new_tokens": NEW_TOKENS, "tokens_per_step": TOKENS_PER_STEP, "temperature": 1.0, "top_p": 1.0,
                     "top_k": None, "divergence": "reverse_kl", "optimizer": "adamw", "lr": LR, "weight_decay": 0.0,
                     "grad_clip": None, "dtype": "float32", "device": "cpu", "threads": THREADS,
                     "fixed_length": f"eos and pad id {UNREACHABLE_ID} (outside the vocabulary: never sampled)",
                     "trl_version": trl_version, "transformers_version": _version("transformers")},
        "implementations": summary, "split": split_summary,
    })
    console.print(f"wrote {path}")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
