"""The endpoint backend: any OpenAI-compatible server answers (``generate.endpoint``), ``concurrency`` requests at
a time (httpx), retried with exponential back-off on connection errors, timeouts, 429 and 5xx. Chat prompts (and
plain ones, unless ``generate.chat: never``) go to ``/chat/completions`` with ``logprobs``; a server that returns
none leaves ``mean_logprob`` empty, which the ``self_score`` filter then refuses by name."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distill.errors import DistillError
from distill.generation.local import Answer, batch_seed
from distill.generation.prompts import Prompt

RETRIED_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointBackend:
    def __init__(self, endpoint: Any, decoding: Any, chat: str = "auto"):
        self.endpoint, self.decoding, self.chat = endpoint, decoding, chat
        self.client = http_client(endpoint, "generate.endpoint")

    def batches(self, prompts: list[Prompt], batch_size: int) -> list[list[tuple[Prompt, None]]]:
        """Batches (commit units) of at least ``concurrency`` prompts, so that many requests are in flight."""
        size = max(batch_size, self.endpoint.concurrency)
        return [[(prompt, None) for prompt in prompts[start:start + size]] for start in range(0, len(prompts), size)]

    def answer(self, batch: list[tuple[Prompt, Any]], seed: int) -> list[list[Answer]]:
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            return list(pool.map(lambda pair: self._ask(pair[0], seed), batch))

    def _request(self, prompt: Prompt, seed: int) -> tuple[str, dict[str, Any]]:
        decoding = self.decoding
        body: dict[str, Any] = {"model": self.endpoint.model, "max_tokens": decoding.max_new_tokens,
                                "temperature": decoding.temperature, "top_p": decoding.top_p, "n": decoding.n,
                                "seed": batch_seed(seed, [prompt.id]) % (2 ** 31)}
        if decoding.stop:
            body["stop"] = list(decoding.stop)
        if decoding.top_k is not None:
            body["top_k"] = decoding.top_k  # an extension of the API that vLLM, SGLang, llama.cpp and distill take
        if isinstance(prompt.content, list) or self.chat != "never":
            messages = prompt.content if isinstance(prompt.content, list) else [
                {"role": "user", "content": prompt.content}]
            return "/chat/completions", {**body, "messages": messages, "logprobs": True}
        return "/completions", {**body, "prompt": prompt.content, "logprobs": 0}

    def _ask(self, prompt: Prompt, seed: int) -> list[Answer]:
        path, body = self._request(prompt, seed)
        reply = self._post(path, body, prompt)
        choices = sorted(reply.get("choices") or [], key=lambda choice: choice.get("index", 0))
        if len(choices) != self.decoding.n:
            raise DistillError(f"endpoint {self.endpoint.url}: asked for {self.decoding.n} answers to prompt "
                               f"{prompt.id}, got {len(choices)}")
        shared_tokens = ((reply.get("usage") or {}).get("completion_tokens") or 0) // max(len(choices), 1)
        return [_answer(choice, path, shared_tokens) for choice in choices]

    def _post(self, path: str, body: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
        return post_with_retries(self.client, self.endpoint, path, body, f"prompt {prompt.id}",
                                 "The records generated so far are kept; run the same command again to continue")


def post_with_retries(client: Any, endpoint: Any, path: str, body: dict[str, Any], what: str, after: str
                      ) -> dict[str, Any]:
    """POST ``body`` to ``endpoint.url + path`` and return the JSON reply, retrying connection errors, timeouts,
    429 and 5xx ``endpoint.retries`` times with exponential back-off; then a DistillError naming ``what`` the
    request was for, and ``after``: what was kept and how to go on."""
    import httpx

    url = f"{endpoint.url.rstrip('/')}{path}"
    problem = ""
    for attempt in range(endpoint.retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 30.0))
        try:
            response = client.post(path, json=body)
        except httpx.TimeoutException:
            problem = f"timed out after {endpoint.timeout:g} s"
            continue
        except httpx.TransportError as error:
            problem = f"unreachable ({error})"
            continue
        if response.status_code in RETRIED_STATUS:
            problem = f"answered {response.status_code} {response.reason_phrase}"
            continue
        if response.status_code >= 400:
            raise DistillError(f"endpoint {url} refused {what}: {response.status_code} {response.text[:300]}")
        try:
            return response.json()
        except ValueError:
            raise DistillError(f"endpoint {url} answered {what} with something that is not JSON") from None
    raise EndpointUnavailable(f"endpoint {url} {problem}, {endpoint.retries + 1} attempts for {what}. {after}")


class EndpointUnavailable(DistillError):
    """A server stayed unreachable (or overloaded) through every retry."""


def http_client(endpoint: Any, section: str) -> Any:
    """An httpx client for ``endpoint``, with its API key when ``api_key_env`` names one."""
    import httpx

    key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
    if endpoint.api_key_env and not key:
        raise DistillError(f"{section}.api_key_env: the environment variable {endpoint.api_key_env} is not set")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=endpoint.url.rstrip("/"), headers=headers, timeout=endpoint.timeout)


def _answer(choice: dict[str, Any], path: str, usage_tokens: int) -> Answer:
    finish = "length" if choice.get("finish_reason") == "length" else "stop"
    logprobs = choice.get("logprobs") or {}
    text = ((choice.get("message") or {}).get("content") if path == "/chat/completions" else choice.get("text")) or ""
    if logprobs.get("token_logprobs") is not None:  # the completions API's arrays (OpenAI, vLLM)
        values = list(logprobs["token_logprobs"])
    else:  # chat's list of {token, logprob, ...} (also llama.cpp's /v1/completions)
        values = [step.get("logprob") for step in logprobs.get("content") or []]
    if not values or any(value is None for value in values):
        return Answer(text, len(values) or usage_tokens, None, finish)  # type: ignore[arg-type]
    return Answer(text, len(values), round(sum(values), 6), finish, token_logprobs=tuple(values))
