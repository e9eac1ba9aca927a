"""On-policy distillation as a batch source of the trainer: the student answers the prompts of its training
window itself, and the window's micro-batches become prompt + the student's answer, supervised on the answer only.
The teacher then scores those tokens through the objective as for any batch (token_kd with reverse_kl, jsd, ...,
chunked), and the trainer's step, accumulation, DDP, checkpoints and logging are the ordinary ones.

Every random choice is a function of the recipe seed, the optimizer step and the process: whether a step is
on-policy (the same on every process) and the sampler's seed (its own on each). A run resumed after a kill
therefore samples exactly what the uninterrupted run sampled, with no generator state to store beside the
checkpoint; sampling runs under ``fork_rng``, so it leaves the training RNG (dropout) as it found it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from distill.data.lm import IGNORE_INDEX, next_token_targets, pad_lm_batch
from distill.errors import DistillError
from distill.generation.endpoint import EndpointUnavailable
from distill.generation.local import batch_seed, end_of_answer_ids
from distill.trainer import StageRun, epoch_windows, with_token_counts


def draw(seed: int, step: int, what: str, process: int = 0) -> int:
    """A 63-bit number fixed by (seed, step, what, process)."""
    return batch_seed(seed, [str(step), what, str(process)])


def is_on_policy_step(seed: int, step: int, lmbda: float) -> bool:
    """Whether optimizer step ``step`` trains on the student's own samples: a uniform draw below ``lmbda``."""
    if lmbda >= 1.0 or lmbda <= 0.0:
        return lmbda >= 1.0
    return draw(seed, step, "on-policy") / 2 ** 63 < lmbda


def prompt_of(input_ids: Tensor, labels: Tensor) -> list[int]:
    """The tokens before the first supervised one (the prompt of a chat example: its turns up to the first answer,
    with the assistant header). ``labels`` are next-token targets, so the first supervised label sits on the last
    prompt token."""
    supervised = (labels != IGNORE_INDEX).nonzero()
    if supervised.numel() == 0:
        raise DistillError("on_policy: a training example has no supervised token, so it has no prompt to answer")
    return input_ids[: int(supervised[0]) + 1].tolist()


def check_prompt_room(dataset: Any, max_new_tokens: int, contexts: dict[str, int | None]) -> None:
    """Refuses, before training, prompts that leave less than ``max_new_tokens`` of a model's context."""
    lengths = [len(prompt_of(item["input_ids"], item["labels"])) for item in (dataset[index]
                                                                                 for index in range(len(dataset)))]
    longest = max(lengths)
    for role, context in contexts.items():
        if context is not None and longest + max_new_tokens > context:
            over = sum(length + max_new_tokens > context for length in lengths)
            raise DistillError(f"on_policy: {over} of the {len(lengths)} training prompts are longer than the "
                               f"{role}'s context leaves for on_policy.sampling.max_new_tokens ({context} - "
                               f"{max_new_tokens} = {context - max_new_tokens} tokens; the longest prompt has "
                               f"{longest}). Lower max_new_tokens, or shorten those prompts")


@dataclass
class Sampled:
    """A completion: its tokens (up to and including the end-of-sequence token when it stopped) and whether it ran
    into max_new_tokens."""
    tokens: list[int]
    truncated: bool


class StudentSampler:
    """Samples completions from ``model`` with Hugging Face ``generate`` (KV cache), prompts left-padded and sorted
    by length into batches of ``batch_size``."""

    def __init__(self, model: nn.Module, tokenizer: Any, sampling: Any, batch_size: int):
        self.model, self.tokenizer, self.sampling, self.batch_size = model, tokenizer, sampling, batch_size
        self.end_ids = end_of_answer_ids(model, tokenizer)
        if tokenizer.pad_token_id is None:
            raise DistillError("on_policy: the tokenizer has no padding token, which batched sampling needs")

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], seed: int) -> list[Sampled]:
        order = sorted(range(len(prompts)), key=lambda index: len(prompts[index]))
        results: dict[int, Sampled] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=_devices(self.model)):
                torch.manual_seed(seed)
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    for index, sampled in zip(chunk, self._generate([prompts[index] for index in chunk])):
                        results[index] = sampled
        finally:
            self.model.train(was_training)
        return [results[index] for index in range(len(prompts))]

    def _generate(self, prompts: list[list[int]]) -> list[Sampled]:
        sampling, pad = self.sampling, self.tokenizer.pad_token_id
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        options: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": pad,
                                   "eos_token_id": sorted(self.end_ids), "do_sample": sampling.temperature > 0}
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        generated = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)[:, width:]
        return [self._completion(row) for row in generated.tolist()]

    def _completion(self, ids: list[int]) -> Sampled:
        end = next((position for position, token in enumerate(ids) if token in self.end_ids), None)
        if end is not None:
            return Sampled(ids[:end + 1], False)
        length = len(ids)
        while length and ids[length - 1] == self.tokenizer.pad_token_id:
            length -= 1  # a row stopped by a stop string is padded to the batch's length
        return Sampled(ids[:length], length >= self.sampling.max_new_tokens)


def _devices(model: nn.Module) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


def on_policy_micro_batches(window: list[dict[str, Tensor]], completions: list[Sampled], pad_id: int
                            ) -> list[dict[str, Tensor]]:
    """``window``'s micro-batches with each example's answer replaced by the student's: prompt + completion,
    next-token labels on the completion only, right-padded like the data's own batches."""
    made, row = [], 0
    for batch in window:
        items = []
        for input_ids, labels in zip(batch["input_ids"], batch["labels"]):
            prompt, completion = prompt_of(input_ids, labels), completions[row].tokens
            row += 1
            ids = prompt + completion
            targets = next_token_targets(ids, [False] * len(prompt) + [True] * len(completion))
            items.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(targets)})
        made.append({key: value.to(batch["input_ids"].device) for key, value in pad_lm_batch(items, pad_id).items()})
    return made


@dataclass
class OnPolicyStats:
    """What each log line adds: the share of on-policy steps, the mean completion length and the share of
    completions cut off at max_new_tokens, since the last line."""
    steps: int = 0
    on_policy_steps: int = 0
    completions: int = 0
    completion_tokens: int = 0
    truncated: int = 0

    def summary(self) -> dict[str, float]:
        figures = {"on_policy_share": round(self.on_policy_steps / max(self.steps, 1), 4)}
        if self.completions:
            figures.update(completion_tokens_mean=round(self.completion_tokens / self.completions, 2),
                           truncated_share=round(self.truncated / self.completions, 4))
        self.steps = self.on_policy_steps = self.completions = self.completion_tokens = self.truncated = 0
        return figures


def on_policy_batches(config: Any, tokenizer: Any, sampler: Any = None):
    """The batch source of an on-policy stage (``config``: the recipe's ``on_policy`` section). ``sampler`` (with
    ``sample(prompts, seed) -> [Sampled]``) replaces the student's own, for tests that need fixed samples."""

    def batches(run: StageRun) -> Iterator[tuple[dict[str, Any], float | None]]:
        training, accelerator = run.training, run.accelerator
        active = sampler or StudentSampler(run.step_module.student, tokenizer, config.sampling,
                                           config.generation_batch_size or training.batch_size * training.grad_accum)
        stats = OnPolicyStats()
        run.extras = stats.summary
        for window in epoch_windows(run):
            step = run.step  # the optimizer step this window trains
            stats.steps += 1
            if step >= config.warmup_steps and is_on_policy_step(run.seed, step, config.lmbda):
                prompts = [prompt_of(input_ids, labels) for batch in window
                           for input_ids, labels in zip(batch["input_ids"], batch["labels"])]
                completions = active.sample(prompts, draw(run.seed, step, "sample", accelerator.process_index))
                window = on_policy_micro_batches(window, completions, tokenizer.pad_token_id)
                stats.on_policy_steps += 1
                stats.completions += len(completions)
                stats.completion_tokens += sum(len(sampled.tokens) for sampled in completions)
                stats.truncated += sum(sampled.truncated for sampled in completions)
                if config.log_samples_every and (step + 1) % config.log_samples_every == 0:
                    run.after.log.write({"stage": run.checkpoints.stage, "step": step + 1, "sample": {
                        "prompt": tokenizer.decode(prompts[0], skip_special_tokens=False),
                        "completion": tokenizer.decode(completions[0].tokens, skip_special_tokens=False),
                        "truncated": completions[0].truncated}})
            prefetch = getattr(run.teacher_signals_from, "prefetch", None)
            if prefetch is not None:  # a teacher behind a server: scored for the whole window, before any backward
                try:
                    prefetch(window)
                except EndpointUnavailable as error:
                    raise EndpointUnavailable(f"{error}{stopped_at(run)}") from None
            yield from with_token_counts(window, training.grad_accum, accelerator)

    return batches


def stopped_at(run: StageRun) -> str:
    """Checkpoints the steps trained so far (the window being scored has not touched the weights), so that
    ``--resume`` continues where the server stopped answering."""
    if run.step == 0:
        return " (no step was trained yet)"
    if run.step not in run.checkpoints.saved_steps():
        run.checkpoints.save(run.step)
    return f" (checkpoint of step {run.step} written to {run.checkpoints.directory})"
