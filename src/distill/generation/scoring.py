"""A teacher behind an OpenAI-compatible server, as a trainer's teacher source: each sequence of a batch is sent
as token ids to ``/completions`` with ``echo`` and ``logprobs`` (and vLLM's ``prompt_logprobs``), ``concurrency``
requests in flight, retried with back-off; the reply's log-probability of every token (and its top-k) becomes the
``final_hidden`` signal the ``sampled_kl`` loss reads (a ``TopKTeacher`` with ``token_logprobs``), aligned with the
batch's next-token labels.

Two reply shapes are read: vLLM's ``prompt_logprobs`` (per position ``{token_id: {logprob, ...}}``) and the
completions API's ``logprobs`` with ``echo`` (``tokens``, ``token_logprobs``, ``top_logprobs`` keyed by token
strings, mapped back to ids with the shared tokenizer). ``distill serve`` returns both.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill.capture import TopKTeacher
from distill.data.lm import IGNORE_INDEX
from distill.errors import DistillError
from distill.generation.endpoint import http_client, post_with_retries

FINAL_HIDDEN = "final_hidden"
PROBE_TEXT = "Tokenizer probe: 12 + 345 = 357, naïve café — ok?"
SCORES_KEY = "teacher_scores"  # a batch's scores, fetched for a whole window before its first backward pass


@dataclass(frozen=True)
class SequenceScores:
    """A server's reading of one sequence: per position from the second, the log-probability of the token there
    and the ``k`` likeliest (id, log-probability) pairs."""
    token_logprobs: list[float]
    top: list[list[tuple[int, float]]]


class EndpointTeacher:
    def __init__(self, endpoint: Any, tokenizer: Any):
        self.endpoint, self.tokenizer = endpoint, tokenizer
        self.client = http_client(endpoint, "teacher.endpoint")
        self.k = endpoint.top_logprobs
        self.url = endpoint.url.rstrip("/")

    # ------------------------------------------------------------------ the teacher-source protocol
    def bind(self, names: set[str]) -> "EndpointTeacher":
        other = sorted(set(names) - {FINAL_HIDDEN})
        if other:
            raise DistillError(f"teacher.endpoint gives only log-probabilities (the signal final_hidden, read by "
                               f"sampled_kl); the objective also reads {', '.join(other)}")
        return self

    def signals(self, batch: dict[str, Any], split: str = "train") -> dict[str, Any]:
        scores = batch.get(SCORES_KEY)
        if scores is None:
            scores = self.score_batch(batch)
        return {FINAL_HIDDEN: scores}

    def remove(self) -> None:
        pass  # nothing hooked; the connection pool stays for the run's later stages

    def prefetch(self, window: list[dict[str, Any]]) -> None:
        """Score every micro-batch of ``window`` (all requests in flight together), before any backward pass: a
        server that dies then stops the step before it touched the weights."""
        sequences = [self._sequence(batch, row) for batch in window for row in range(batch["input_ids"].shape[0])]
        scored = iter(self.score(sequences))
        for batch in window:
            batch[SCORES_KEY] = self._aligned(batch, [next(scored) for _ in range(batch["input_ids"].shape[0])])

    def score_batch(self, batch: dict[str, Any]) -> TopKTeacher:
        rows = range(batch["input_ids"].shape[0])
        return self._aligned(batch, self.score([self._sequence(batch, row) for row in rows]))

    # ------------------------------------------------------------------ requests
    def score(self, sequences: list[list[int]]) -> list[SequenceScores]:
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            return list(pool.map(self._score_one, sequences))

    def _score_one(self, ids: list[int]) -> SequenceScores:
        asked = max(self.k, 1)
        body = {"model": self.endpoint.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "echo": True,
                "logprobs": asked, "prompt_logprobs": asked}
        reply = post_with_retries(self.client, self.endpoint, "/completions", body,
                                  f"scoring a sequence of {len(ids)} tokens",
                                  "Training stopped at its last checkpoint; run the same command with --resume "
                                  "once the server is back")
        choices = reply.get("choices") or [{}]
        return self._read(choices[0], ids)

    def _read(self, choice: dict[str, Any], ids: list[int]) -> SequenceScores:
        positions = len(ids) - 1
        prompt_logprobs = choice.get("prompt_logprobs")
        if prompt_logprobs:  # vLLM: [None, {id: {logprob, rank, decoded_token}}, ...]
            steps = [{int(key): float(value["logprob"] if isinstance(value, dict) else value)
                      for key, value in step.items()} for step in prompt_logprobs[1:len(ids)]]
            token = [step.get(token_id) for step, token_id in zip(steps, ids[1:])]
        else:
            logprobs = choice.get("logprobs") or {}
            token = list(logprobs.get("token_logprobs") or [])[1:len(ids)]
            steps = [{self.tokenizer.convert_tokens_to_ids(name): float(value) for name, value in step.items()}
                     if step else {} for step in list(logprobs.get("top_logprobs") or [])[1:len(ids)]]
        if len(token) < positions or any(value is None for value in token):
            raise DistillError(f"endpoint {self.url}/completions returned no log-probability for the tokens of a "
                               "given sequence (echo with logprobs, or vLLM's prompt_logprobs): the teacher must be "
                               "a server that scores a given text (distill serve, vLLM); a chat-only API cannot be "
                               "an on-policy teacher")
        top = [sorted(step.items(), key=lambda pair: -pair[1])[:self.k] for step in steps] if self.k else []
        if self.k and (len(top) < positions or min((len(step) for step in top), default=self.k) < self.k):
            fewest = min((len(step) for step in top), default=0)
            raise DistillError(f"endpoint {self.url}: asked for the top {self.k} log-probabilities at each position "
                               f"(teacher.endpoint.top_logprobs) and got {fewest}; lower top_logprobs to what the "
                               "server returns (OpenAI's API caps it at 5 for completions, vLLM at its "
                               "--max-logprobs)")
        return SequenceScores([float(value) for value in token], top)

    # ------------------------------------------------------------------ alignment with the batch
    @staticmethod
    def _sequence(batch: dict[str, Any], row: int) -> list[int]:
        length = int(batch["attention_mask"][row].sum()) if "attention_mask" in batch else batch["input_ids"].shape[1]
        return batch["input_ids"][row, :length].tolist()  # right-padded, as the LM data pads

    def _aligned(self, batch: dict[str, Any], scores: list[SequenceScores]) -> TopKTeacher:
        """Position t predicts token t + 1, so the server's reading of token t + 1 lands at t."""
        labels: Tensor = batch["labels"]
        rows, width = labels.shape
        k = max(self.k, 1)
        token = torch.zeros(rows, width)
        values, ids, tail = torch.zeros(rows, width, k), torch.zeros(rows, width, k, dtype=torch.long), \
            torch.zeros(rows, width)
        for row, scored in enumerate(scores):
            count = len(scored.token_logprobs)
            token[row, :count] = torch.tensor(scored.token_logprobs)
            for position, step in enumerate(scored.top):
                values[row, position] = torch.tensor([value for _, value in step])
                ids[row, position] = torch.tensor([token_id for token_id, _ in step])
            if self.k:  # the mass outside the top k (floored: a top k holding it all leaves log 0)
                mass = values[row, :count].exp().sum(-1).clamp_max(1.0)
                tail[row, :count] = torch.log1p(-mass).clamp_min(-1e4)
        token = token.masked_fill(labels.cpu() == IGNORE_INDEX, 0.0)
        device = labels.device
        return TopKTeacher(values.to(device), ids.to(device), tail.to(device), token.to(device))

    # ------------------------------------------------------------------ the tokenizer check
    def check_tokenizer(self) -> None:
        """The server must read token ids as the shared tokenizer does: a probe text's ids are sent, and the
        tokens the server echoes must be the tokenizer's (by name, or decoded)."""
        ids = self.tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        body = {"model": self.endpoint.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "echo": True,
                "logprobs": 1, "prompt_logprobs": 1}
        reply = post_with_retries(self.client, self.endpoint, "/completions", body, "the tokenizer probe",
                                  "Nothing was trained; start the server and run the command again")
        choice = (reply.get("choices") or [{}])[0]
        echoed = (choice.get("logprobs") or {}).get("tokens")
        if echoed is None and choice.get("prompt_logprobs"):
            echoed = [None] + [next((value.get("decoded_token") for key, value in step.items()
                                     if int(key) == token_id and isinstance(value, dict)), None)
                               for step, token_id in zip(choice["prompt_logprobs"][1:], ids[1:])]
        if not echoed:
            self._read(choice, ids)  # a server that scores nothing is refused there, by name
            return
        names = self.tokenizer.convert_ids_to_tokens(ids)
        for position, (token_id, name, theirs) in enumerate(zip(ids, names, echoed)):
            if theirs is not None and theirs not in (name, self.tokenizer.decode([token_id])):
                raise DistillError(
                    f"teacher.endpoint {self.url} (model {self.endpoint.model!r}) reads token ids differently from "
                    f"the student's tokenizer (data.tokenizer): at position {position} of the probe text, id "
                    f"{token_id} is {theirs!r} on the server and {name!r} here. Token-level distillation needs one "
                    "tokenizer; serve a teacher with the student's, or distil across tokenizers with sequence-level "
                    "KD (distill generate)")
