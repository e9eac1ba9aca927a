"""The in-process backend: Hugging Face ``generate`` on the teacher, prompts batched by length (left padding, KV
cache), stop strings, ``n`` samples per prompt, and the log-probability of every generated token under the
teacher (temperature 1, before sampling filters), for self-score filters.

A batch is seeded from the run's seed and the ids of its prompts, and batches are formed from the whole prompt
list once, so a rerun after a kill regenerates a cut-off batch with the same tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distill.errors import DistillError
from distill.generation.prompts import Prompt


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int              # generated tokens, up to the end of the answer
    logprob_sum: float | None  # of those tokens under the teacher (None: a server that gave no logprobs)
    finish_reason: str       # stop (end-of-sequence or a stop string) or length
    token_ids: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()  # per token: the k likeliest (id, log-prob)


class LocalBackend:
    """Answers prompts with ``model`` (a causal LM) and its ``tokenizer``."""

    def __init__(self, model: nn.Module, tokenizer: Any, decoding: Any, chat: str = "auto"):
        self.model, self.tokenizer, self.decoding = model.eval(), tokenizer, decoding
        self.end_ids = end_of_answer_ids(model, tokenizer)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat == "always" and not has_template:
            raise DistillError("generate.chat is always, and the teacher's tokenizer has no chat template; give a "
                               "tokenizer with one, or set generate.chat: never")
        self.wrap_plain = has_template and chat != "never"
        if tokenizer.pad_token_id is None:
            raise DistillError("the teacher's tokenizer has no padding token, which batched generation needs")

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt.content, list) or self.wrap_plain:
            if not getattr(self.tokenizer, "chat_template", None):
                raise DistillError(f"prompt {prompt.id} is a chat (a list of messages), and the teacher's tokenizer "
                                   "has no chat template to format it with; give a tokenizer with one, or plain-text "
                                   "prompts")
            messages = prompt.content if isinstance(prompt.content, list) else [
                {"role": "user", "content": prompt.content}]
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        return self.tokenizer(prompt.content, add_special_tokens=True)["input_ids"]

    def batches(self, prompts: list[Prompt], batch_size: int) -> list[list[tuple[Prompt, list[int]]]]:
        """The prompts with their token ids, sorted by length and cut into batches (fixed for a prompt list)."""
        encoded = sorted(((prompt, self.encode(prompt)) for prompt in prompts), key=lambda pair: (len(pair[1]),
                                                                                                 pair[0].id))
        return [encoded[start:start + batch_size] for start in range(0, len(encoded), batch_size)]

    @torch.no_grad()
    def answer(self, batch: list[tuple[Prompt, list[int]]], seed: int, top_logprobs: int = 0) -> list[list[Answer]]:
        """``decoding.n`` answers to each prompt of ``batch`` (with the ``top_logprobs`` likeliest tokens of each
        step)."""
        decoding, device = self.decoding, next(self.model.parameters()).device
        width = max(len(ids) for _, ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch], device=device)
        sampled = decoding.temperature > 0
        options = {"do_sample": sampled, "max_new_tokens": decoding.max_new_tokens, "num_return_sequences":
                   decoding.n, "pad_token_id": pad}
        if sampled:
            options.update(temperature=decoding.temperature, top_p=decoding.top_p, top_k=decoding.top_k or 0)
        if decoding.stop:
            options.update(stop_strings=list(decoding.stop), tokenizer=self.tokenizer)
        torch.manual_seed(batch_seed(seed, [prompt.id for prompt, _ in batch]))
        with StepLogprobs(self.model, top_logprobs) as reader:
            sequences = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **options)
        generated = sequences[:, width:]
        logprobs, top_rows = reader.finish(generated)
        top = top_rows if top_logprobs else None
        answers = [self._answer(generated[row], logprobs[row], None if top is None else top[row])
                   for row in range(generated.shape[0])]
        return [answers[index * decoding.n:(index + 1) * decoding.n] for index in range(len(batch))]

    def _answer(self, tokens: torch.Tensor, logprobs: torch.Tensor, top: list[Any] | None) -> Answer:
        ids = tokens.tolist()
        end = next((position for position, token in enumerate(ids) if token in self.end_ids), None)
        ended = end is not None
        length = end + 1 if ended else len(ids)
        while length and not ended and ids[length - 1] == self.tokenizer.pad_token_id:
            length -= 1  # a row finished early by a stop string is padded to the batch's length
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        cut = min((text.find(stop) for stop in self.decoding.stop if stop in text), default=-1)
        if cut >= 0:
            text, ended = text[:cut], True
        finish = "stop" if ended or length < self.decoding.max_new_tokens else "length"
        values = logprobs[:length].tolist()
        return Answer(text, length, round(sum(values), 6), finish, tuple(ids[:length]), tuple(values),
                      tuple(top[:length]) if top is not None else ())


def end_of_answer_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    """Every token that ends an answer: the generation config's end-of-sequence ids (Llama 3's <|eot_id|>, Gemma's
    <end_of_turn>, ...) and the tokenizer's."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {token for token in ids if token is not None}


def model_device() -> torch.device:
    """Where generation runs: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_seed(seed: int, prompt_ids: list[str]) -> int:
    digest = hashlib.sha256(f"{seed}\0{chr(0).join(prompt_ids)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2 ** 63)


class StepLogprobs:
    """Reads, while ``generate`` runs, the log-probability of each generated token under the model's raw logits
    (temperature 1, before any logits processor) and the ``k`` likeliest tokens of each step, from a forward hook.

    ``output_logits=True`` would keep a float copy of every step's logits (rows x steps x vocabulary: 0.8 GB for 32
    answers of 128 tokens over a 49k vocabulary); this keeps one step's log-softmax, since the token chosen from a
    step's logits is the next forward call's input. The last step's token is read by ``finish``."""

    def __init__(self, model: nn.Module, top_k: int = 0):
        self.model, self.top_k = model, top_k
        self.chosen: list[torch.Tensor] = []
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.pending: torch.Tensor | None = None
        self.handle: Any = None

    def __enter__(self) -> "StepLogprobs":
        self.handle = self.model.register_forward_hook(self._read, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    def _read(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if self.pending is not None:  # this call's input is the token sampled from the previous call's logits
            previous = kwargs.get("input_ids", args[0] if args else None)
            self._take(previous[:, -1])
        self.pending = torch.log_softmax(output.logits[:, -1].float(), dim=-1)
        if self.top_k:
            values, ids = self.pending.topk(self.top_k, dim=-1)
            self.top.append((ids.cpu(), values.cpu()))

    def _take(self, tokens: torch.Tensor) -> None:
        self.chosen.append(self.pending.gather(-1, tokens[:, None]).squeeze(-1).cpu())
        self.pending = None

    def finish(self, generated: torch.Tensor) -> tuple[torch.Tensor, list[list[tuple[tuple[int, float], ...]]]]:
        """``[rows, steps]`` log-probabilities of ``generated`` and, per row and step, the top-k (id, log-prob)."""
        if self.pending is not None and len(self.chosen) < generated.shape[1]:
            self._take(generated[:, len(self.chosen)])
        logprobs = torch.stack(self.chosen, dim=1) if self.chosen else torch.zeros(generated.shape)
        rows: list[list[tuple[tuple[int, float], ...]]] = [[] for _ in range(generated.shape[0])]
        for ids, values in self.top[:generated.shape[1]]:
            for row in range(ids.shape[0]):
                rows[row].append(tuple(zip(ids[row].tolist(), [round(value, 6) for value in values[row].tolist()])))
        return logprobs, rows
