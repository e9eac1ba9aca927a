"""distill generate through an OpenAI-compatible endpoint: against distill serve the records equal the in-process
ones; a flaky server is retried, a dead or slow one stops the command with the endpoint named and the records
so far kept; a server without logprobs leaves them empty and the self_score filter says so."""

import json
import time
from pathlib import Path

import pytest

import distill
from distill.data.records import INDEX_FILE, RecordStore
from distill.generation.filters import run_filters
from distill.generation.generate import generate
from distill.generation.serve import create_app, free_port, serving
from lm_helpers import saved_tiny_llama, tokenizer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return saved_tiny_llama(tmp_path_factory.mktemp("teacher"))


def _recipe(teacher=None, endpoint=None, count=6, **decoding):
    section = {"prompts": {"task": "addition", "count": count}, "batch_size": 3,
               "decoding": {"max_new_tokens": 8, "temperature": 0, **decoding}}
    if endpoint is not None:
        section["endpoint"] = {"model": "tiny", "retries": 2, "timeout": 5, **endpoint}
    recipe = {"name": "gen", "seed": 0, "generate": section}
    if teacher is not None:
        recipe["teacher"] = {"model": {"kind": "hf", "name_or_path": str(teacher), "task": "causal-lm"}}
    return recipe


def _records(folder):
    return list(RecordStore(folder, json.loads((folder / INDEX_FILE).read_text())["fingerprint"]).records())


def _fake_server(behaviour):
    """An OpenAI-compatible stand-in whose /chat/completions does what ``behaviour(call_number)`` says."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app, calls = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        calls.append(body)
        action = behaviour(len(calls))
        if isinstance(action, int):
            return JSONResponse({"error": "down"}, status_code=action)
        if action == "slow":
            time.sleep(1.5)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Answer: 7"},
                             "finish_reason": "stop"}], "usage": {"completion_tokens": 3}}
    return app, calls


def test_records_through_distill_serve_equal_the_in_process_ones(teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    generate(_recipe(teacher), tmp_path / "local", show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    with serving(create_app(model, tokenizer(), model_name="tiny")) as url:
        generate(_recipe(endpoint={"url": url}), tmp_path / "served", show_progress=False)
    local = {record["key"]: record for record in _records(tmp_path / "local")}
    served = {record["key"]: record for record in _records(tmp_path / "served")}
    assert sorted(served) == sorted(local) and len(served) == 6
    assert {key: record["completion"] for key, record in served.items()} == {
        key: record["completion"] for key, record in local.items()}
    for key, record in served.items():
        assert record["mean_logprob"] == pytest.approx(local[key]["mean_logprob"], abs=1e-4)
        assert record["tokens"] == local[key]["tokens"]
    first = next(iter(served.values()))
    assert first["provenance"]["teacher"] == {"endpoint": url, "model": "tiny"}
    assert first["provenance"]["backend"] == "endpoint"


def test_a_flaky_server_is_retried_and_missing_logprobs_are_named_by_the_filter(tmp_path):
    app, calls = _fake_server(lambda call: 503 if call in (1, 2) else "ok")
    with serving(app) as url:
        generate(_recipe(endpoint={"url": url, "concurrency": 1}, count=3), tmp_path / "data", show_progress=False)
    records = _records(tmp_path / "data")
    assert len(calls) == 3 + 2 and len(records) == 3  # two 503s retried
    assert records[0]["mean_logprob"] is None and records[0]["tokens"] == 3
    with pytest.raises(distill.DistillError, match="the endpoint returned no logprobs"):
        run_filters(records, distill.load_recipe({**_recipe(endpoint={"url": url}),
                                                  "filters": [{"kind": "self_score", "min_mean_logprob": -1}]}).filters)


def test_a_server_that_goes_down_stops_the_command_and_keeps_the_records_so_far(tmp_path):
    app, calls = _fake_server(lambda call: "ok" if call <= 3 else 500)
    with serving(app) as url:
        with pytest.raises(distill.DistillError, match=f"endpoint {url}/chat/completions answered 500 .*3 attempts.* "
                                                       "records generated so far are kept"):
            generate(_recipe(endpoint={"url": url, "concurrency": 1}), tmp_path / "data", show_progress=False)
    assert [record["key"].split("#")[1] for record in _records(tmp_path / "data")] == ["0", "0", "0"]


def test_an_unreachable_or_slow_endpoint_is_named(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(distill.DistillError, match=f"endpoint {url}/chat/completions unreachable"):
        generate(_recipe(endpoint={"url": url, "retries": 1}), tmp_path / "a", show_progress=False)
    app, _ = _fake_server(lambda call: "slow")
    with serving(app) as slow:
        with pytest.raises(distill.DistillError, match="timed out after 0.5 s, 2 attempts"):
            generate(_recipe(endpoint={"url": slow, "retries": 1, "timeout": 0.5}), tmp_path / "b",
                     show_progress=False)


FIXTURES = Path(__file__).parent / "fixtures" / "endpoint_responses"


@pytest.mark.parametrize("name", ["openai_chat_logprobs", "vllm_chat_logprobs", "llamacpp_chat_logprobs",
                                  "llamacpp_completions", "sglang_chat"])
def test_recorded_responses_of_real_servers_are_read(name, monkeypatch):
    """Bodies recorded from the OpenAI reference, vLLM 0.26, llama.cpp server b10505 and b4501, and SGLang's docs
    (sources inside each file): answer text, token count, summed log-probability, finish reason, and no logprobs
    where a server gave none."""
    from distill.config import DecodingConfig, EndpointConfig
    from distill.generation.endpoint import EndpointBackend
    from distill.generation.prompts import Prompt

    recorded = json.loads((FIXTURES / f"{name}.json").read_text())["response"]
    choices = recorded["choices"]
    backend = EndpointBackend(EndpointConfig(url="http://127.0.0.1:9/v1", model="m"),
                              DecodingConfig(max_new_tokens=16, temperature=0.7, n=len(choices)),
                              chat="never" if "completions" in name and "chat" not in name else "auto")
    monkeypatch.setattr(backend, "_post", lambda path, body, prompt: recorded)
    answers = backend._ask(Prompt("p", "Hello"), seed=0)
    for choice, answer in zip(choices, answers):
        steps = (choice.get("logprobs") or {}).get("content")
        expected_text = (choice.get("message") or {}).get("content") if "message" in choice else choice["text"]
        assert answer.text == (expected_text or "")
        assert answer.finish_reason == ("length" if choice["finish_reason"] == "length" else "stop")
        if steps:
            assert answer.tokens == len(steps)
            assert answer.logprob_sum == pytest.approx(sum(step["logprob"] for step in steps), abs=1e-5)
        else:
            assert answer.logprob_sum is None and answer.tokens == recorded["usage"]["completion_tokens"]
