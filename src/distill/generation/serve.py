"""``distill serve MODEL``: a causal LM behind an OpenAI-compatible HTTP API (FastAPI on uvicorn), on 127.0.0.1.

``POST /v1/chat/completions`` and ``POST /v1/completions`` (with ``logprobs`` / ``top_logprobs``, and ``echo``
with ``max_tokens: 0`` to score a given text), ``GET /v1/models``. Concurrent requests with the same decoding
settings are answered in one batch: a worker collects the requests that arrive within ``batch_window`` seconds
(up to ``max_batch``) and runs them through the in-process backend together. vLLM, SGLang and llama.cpp serve the
same API, so clients (``distill generate`` with an endpoint) do not change when a real server replaces this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, Field

from distill.config import DecodingConfig
from distill.errors import DistillError
from distill.generation.local import Answer, LocalBackend
from distill.generation.prompts import Prompt


class _SamplingRequest(BaseModel):
    """What both endpoints take: how to sample."""
    model: str | None = None
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, gt=0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None


class ChatRequest(_SamplingRequest):
    messages: list[dict[str, Any]]
    max_tokens: int = Field(128, ge=0)
    logprobs: bool = False
    top_logprobs: int = Field(0, ge=0, le=20)


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]  # texts, or token ids (read as given: for scoring)
    max_tokens: int = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    prompt_logprobs: int | None = Field(None, ge=0, le=20)  # vLLM's: per prompt token, {id: {logprob, ...}}


@dataclass
class _Pending:
    prompt: Prompt
    ids: list[int]
    decoding: DecodingConfig
    top: int
    seed: int
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Collects concurrent requests and answers those with the same decoding settings in one batch."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_window: float, max_batch: int):
        self.model, self.tokenizer = model, tokenizer
        self.batch_window, self.max_batch = batch_window, max_batch
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches: list[int] = []  # sizes of the batches run, for tests and logs
        # one forward at a time: generation (its log-prob hook on the model) and echo scoring share the model
        self.model_lock = threading.Lock()

    async def submit(self, prompt: Prompt, ids: list[int], decoding: DecodingConfig, top: int, seed: int
                     ) -> list[Answer]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(prompt, ids, decoding, top, seed, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            deadline = loop.time() + self.batch_window
            while len(pending) < self.max_batch:
                try:
                    pending.append(await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 0)))
                except asyncio.TimeoutError:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for item in pending:
                # greedy answers do not depend on the seed, so every greedy request can share one batch
                key = (item.decoding.model_dump_json(), item.top, item.seed if item.decoding.temperature > 0 else 0)
                groups.setdefault(key, []).append(item)
            for items in groups.values():
                try:
                    answers = await loop.run_in_executor(None, self._answer, items)
                except Exception as error:  # the request fails, the server stays up
                    for item in items:
                        if not item.future.done():  # a client that hung up cancelled it
                            item.future.set_exception(error)
                    continue
                for item, answer in zip(items, answers):
                    if not item.future.done():
                        item.future.set_result(answer)

    def _answer(self, items: list[_Pending]) -> list[list[Answer]]:
        backend = LocalBackend(self.model, self.tokenizer, items[0].decoding, chat="never")
        self.batches.append(len(items))
        with self.model_lock:
            return backend.answer([(item.prompt, item.ids) for item in items], items[0].seed,
                                  top_logprobs=items[0].top)

    async def score(self, ids: list[int], top: int) -> dict[str, list[Any]]:
        """``_score`` off the event loop, one forward at a time with generation."""
        def locked() -> dict[str, list[Any]]:
            with self.model_lock:
                return _score(self.model, self.tokenizer, ids, top)
        return await asyncio.get_running_loop().run_in_executor(None, locked)


def _decoding(request: Any) -> DecodingConfig:
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    n = request.n if request.temperature > 0 else 1
    return DecodingConfig(max_new_tokens=max(request.max_tokens, 1), temperature=request.temperature,
                          top_p=request.top_p, top_k=request.top_k, n=n, stop=stop)


def create_app(model: Any, tokenizer: Any, *, model_name: str, api_key: str | None = None,
               batch_window: float = 0.01, max_batch: int = 16) -> Any:
    """The FastAPI application serving ``model``."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse

    model.eval()
    batcher = Batcher(model, tokenizer, batch_window=batch_window, max_batch=max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    app = FastAPI(title=f"distill serve {model_name}", lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def check_key(request: Request, call_next: Any) -> Any:
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if api_key is not None and not secrets.compare_digest(given, f"Bearer {api_key}".encode()):
            return JSONResponse({"error": {"message": "invalid or missing API key", "type": "invalid_request_error"}},
                                status_code=401)
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "distill"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        if not getattr(tokenizer, "chat_template", None):
            raise HTTPException(400, "this model's tokenizer has no chat template; use /v1/completions")
        prompt = Prompt("request", [{"role": str(m.get("role")), "content": str(m.get("content"))}
                                    for m in request.messages])
        ids = LocalBackend(model, tokenizer, _decoding(request)).encode(prompt)
        answers = await batcher.submit(prompt, ids, _decoding(request),
                                       request.top_logprobs if request.logprobs else 0, request.seed or 0)
        choices = [{"index": index, "message": {"role": "assistant", "content": answer.text},
                    "logprobs": _chat_logprobs(answer, tokenizer) if request.logprobs else None,
                    "finish_reason": answer.finish_reason} for index, answer in enumerate(answers)]
        return _response("chat.completion", model_name, choices, len(ids), answers)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest) -> dict[str, Any]:
        choices, prompt_tokens, all_answers = [], 0, []
        for text, ids in _prompts(request.prompt, tokenizer):
            prompt_tokens += len(ids)
            top = request.logprobs or 0
            scored = request.prompt_logprobs is not None or (request.echo and request.logprobs is not None)
            echoed = await batcher.score(ids, max(top, request.prompt_logprobs or 0)) if scored else None
            answers = ([Answer("", 0, 0.0, "length")] * request.n if request.max_tokens == 0 else
                       await batcher.submit(Prompt("request", text), ids, _decoding(request), top, request.seed or 0))
            all_answers += answers
            for answer in answers:
                logprobs = (_completion_logprobs(answer, tokenizer, echoed if request.echo else None, top)
                            if request.logprobs is not None else None)
                choice = {"index": len(choices), "text": (text if request.echo else "") + answer.text,
                          "logprobs": logprobs, "finish_reason": answer.finish_reason}
                if request.prompt_logprobs is not None:
                    choice["prompt_logprobs"] = _prompt_logprobs(echoed, tokenizer, request.prompt_logprobs)
                choices.append(choice)
        return _response("text_completion", model_name, choices, prompt_tokens, all_answers)

    return app


def _prompts(prompt: Any, tokenizer: Any) -> list[tuple[str, list[int]]]:
    """Each prompt of a request as (text, token ids): texts are tokenised, token ids are taken as they are."""
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    return [(item, tokenizer(item, add_special_tokens=True)["input_ids"]) if isinstance(item, str)
            else (tokenizer.decode(item), list(item)) for item in prompt]


def _score(model: Any, tokenizer: Any, ids: list[int], top: int) -> dict[str, list[Any]]:
    """Log-probability of each token of a given text under the model (the first has none) and the ``top``
    likeliest tokens (id, log-probability) at each position, for ``echo`` and ``prompt_logprobs``."""
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=next(model.parameters()).device)).logits[0].float()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    chosen = logprobs.gather(-1, torch.tensor(ids[1:], device=logprobs.device)[:, None]).squeeze(-1).tolist()
    tops: list[Any] = [None] * len(ids)
    if top:
        values, indices = logprobs.topk(top, dim=-1)
        tops = [None, *(list(zip(row_ids, [round(value, 6) for value in row]))
                        for row_ids, row in zip(indices.tolist(), values.tolist()))]
    return {"ids": list(ids), "token_logprobs": [None, *chosen], "top": tops}


def _completion_logprobs(answer: Answer, tokenizer: Any, echoed: dict[str, list[Any]] | None,
                         top: int) -> dict[str, Any]:
    """The completions API's logprobs: tokens by name, their log-probabilities, the top ones by name; with
    ``echo`` the prompt's first."""
    ids, values, steps = list(answer.token_ids), list(answer.token_logprobs), list(answer.top_logprobs)
    if echoed is not None:
        ids, values = echoed["ids"] + ids, echoed["token_logprobs"] + values
        steps = [step[:top] if step else None for step in echoed["top"]] + (steps or [None] * len(answer.token_ids))
    names = tokenizer.convert_ids_to_tokens
    tops = [{names(index): value for index, value in step} if step else None for step in steps] if top else []
    return {"tokens": names(ids), "token_logprobs": values, "top_logprobs": tops or [None] * len(ids)}


def _prompt_logprobs(echoed: dict[str, list[Any]], tokenizer: Any, top: int) -> list[Any]:
    """vLLM's prompt_logprobs: per prompt token (None for the first) {id: {logprob, rank, decoded_token}} of the
    token there and the ``top`` likeliest."""
    result: list[Any] = [None]
    for position in range(1, len(echoed["ids"])):
        token_id, value = echoed["ids"][position], echoed["token_logprobs"][position]
        ranked = list(echoed["top"][position] or [])[:top]
        entries = {str(index): {"logprob": lp, "rank": rank, "decoded_token": tokenizer.decode([index])}
                   for rank, (index, lp) in enumerate(ranked, start=1)}
        if str(token_id) not in entries:
            entries[str(token_id)] = {"logprob": round(value, 6), "rank": None,
                                      "decoded_token": tokenizer.decode([token_id])}
        result.append(entries)
    return result


def _chat_logprobs(answer: Answer, tokenizer: Any) -> dict[str, Any]:
    content = []
    for position, (index, value) in enumerate(zip(answer.token_ids, answer.token_logprobs)):
        token = tokenizer.convert_ids_to_tokens(index)
        top = answer.top_logprobs[position] if answer.top_logprobs else ()
        content.append({"token": token, "logprob": value, "bytes": list(token.encode()),
                        "top_logprobs": [{"token": tokenizer.convert_ids_to_tokens(i), "logprob": v,
                                          "bytes": list(tokenizer.convert_ids_to_tokens(i).encode())}
                                         for i, v in top]})
    return {"content": content}


def _response(kind: str, model_name: str, choices: list[dict[str, Any]], prompt_tokens: int,
              answers: list[Answer]) -> dict[str, Any]:
    completion_tokens = sum(answer.tokens for answer in answers)
    return {"id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{secrets.token_hex(8)}", "object": kind,
            "created": int(time.time()), "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def check_port(host: str, port: int) -> None:
    """Refuse, before the model loads, a port another program holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a socket in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as error:
            raise DistillError(f"cannot serve on {host}:{port}: {error.strerror or error}. Another program holds "
                               "the port; choose another --port (0 picks a free one)") from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(app: Any, host: str = "127.0.0.1", port: int | None = None) -> Any:
    """Run ``app`` on uvicorn in a background thread for the ``with`` block; yields its base URL (``.../v1``)."""
    import uvicorn

    port = port or free_port(host)
    check_port(host, port)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)
    if not server.started:
        server.should_exit = True
        raise DistillError(f"the server did not start on {host}:{port}")
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def load_served_model(source: str, dtype: str = "float32") -> tuple[Any, Any, str]:
    """The model behind ``distill serve SOURCE``: a folder, a hub id or package:NAME (a run directory serves its
    student), with its tokenizer."""
    from pathlib import Path

    from distill.causal_lm import tokenizer_of
    from distill.config import HFSpec
    from distill.models import build_model
    from distill.stages import is_run_dir

    if Path(source).is_dir() and is_run_dir(Path(source)):
        source = str(Path(source) / "student")
    spec = HFSpec(name_or_path=source, task="causal-lm", dtype=dtype)
    tokenizer = tokenizer_of(spec)
    if tokenizer is None:
        raise DistillError(f"{source} has no tokenizer saved with it; distill serve needs the model's tokenizer")
    from distill.generation.local import model_device

    model = build_model(spec, input_shape=None, num_classes=None).to(model_device())
    return model, tokenizer, Path(source).name or source
