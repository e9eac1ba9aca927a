"""distill serve: a causal LM behind an OpenAI-compatible API on 127.0.0.1 (a free port, started and stopped here):
greedy answers equal the in-process backend's, logprobs are the model's, echo scores a given text, concurrent
requests are batched, an API key is enforced, a port in use is refused."""

import asyncio
import socket

import httpx
import pytest
import torch
from click.testing import CliRunner

from distill.cli import main
from distill.config import DecodingConfig
from distill.generation.local import LocalBackend
from distill.generation.prompts import Prompt
from distill.generation.serve import create_app, serving
from lm_helpers import tiny_llama, tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_llama(vocab_size=512, hidden=32, layers=2, seed=0).eval()


@pytest.fixture(scope="module")
def server(model):
    with serving(create_app(model, tokenizer(), model_name="tiny", api_key="sekret")) as url:
        yield url


HEADERS = {"Authorization": "Bearer sekret"}


def test_a_greedy_chat_answer_is_the_in_process_one_with_the_models_logprobs(server, model):
    messages = [{"role": "user", "content": "What is 12 + 30?"}]
    reply = httpx.post(f"{server}/chat/completions", headers=HEADERS, timeout=30, json={
        "model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0, "logprobs": True,
        "top_logprobs": 3}).json()
    backend = LocalBackend(model, tokenizer(), DecodingConfig(max_new_tokens=8, temperature=0))
    prompt = Prompt("p", messages)
    (expected,), = backend.answer([(prompt, backend.encode(prompt))], seed=0)
    choice = reply["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": expected.text}
    assert [step["logprob"] for step in choice["logprobs"]["content"]] == pytest.approx(list(expected.token_logprobs),
                                                                                          abs=1e-5)
    first = choice["logprobs"]["content"][0]
    assert len(first["top_logprobs"]) == 3 and first["top_logprobs"][0]["logprob"] >= first["logprob"] - 1e-6
    assert reply["usage"]["completion_tokens"] == expected.tokens and reply["object"] == "chat.completion"


def test_echo_scores_a_given_text_with_the_models_log_probabilities(server, model):
    text = "In the beginning God created the heaven"
    reply = httpx.post(f"{server}/completions", headers=HEADERS, timeout=30, json={
        "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    ids = tokenizer()(text)["input_ids"]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
    expected = logprobs.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).tolist()
    scored = reply["choices"][0]["logprobs"]["token_logprobs"]
    assert scored[0] is None and scored[1:] == pytest.approx(expected, abs=1e-5)
    assert reply["choices"][0]["text"] == text


def test_concurrent_requests_are_answered_in_one_batch(model):
    app = create_app(model, tokenizer(), model_name="tiny", batch_window=0.5, max_batch=8)
    with serving(app) as url:
        async def ask_all():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(f"{url}/completions", json={
                    "prompt": f"Verse {index}", "max_tokens": 4, "temperature": 0}) for index in range(6)))
        replies = asyncio.run(ask_all())
    assert all(reply.status_code == 200 for reply in replies)
    assert max(app.state.batcher.batches) > 1, app.state.batcher.batches  # not one forward per request


def test_the_api_key_is_required_and_models_are_listed(server):
    assert httpx.get(f"{server}/models", timeout=10).status_code == 401
    assert httpx.get(f"{server}/models", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    listed = httpx.get(f"{server}/models", headers=HEADERS, timeout=10).json()
    assert listed["data"][0]["id"] == "tiny"


def test_a_port_in_use_is_refused_before_the_model_loads(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", str(tmp_path / "no-model"), "--port", str(port)])
    assert result.exit_code == 2 and f"cannot serve on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
