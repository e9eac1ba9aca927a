"""Self-Instruct through an endpoint: the teacher writes instructions, those too similar (ROUGE-L > 0.7) to a kept
one or of the wrong length are rejected and counted, the kept ones are committed with their provenance and then
answered like any prompt; a rerun continues without asking again."""

import json

import pytest

import distill
from distill.data.records import INDEX_FILE, RecordStore
from distill.generation.generate import generate
from distill.generation.self_instruct import Novelty, parse_candidates, request_text
from distill.generation.serve import serving

ROUNDS = [  # what the scripted teacher writes, request by request
    "Write a haiku about rain.\n6. Write a haiku about the rain.\n7. Go\n8. Translate 'good night' into French.",
    "List three prime numbers greater than fifty.\n6. Describe how a rainbow forms in the sky.",
    "Summarise the plot of a famous novel in two sentences.",
]


def _teacher_app():
    from fastapi import FastAPI

    app, asked = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        text = body["messages"][-1]["content"]
        if text.startswith("Come up with"):
            asked.append(text)
            content = ROUNDS[min(len(asked), len(ROUNDS)) - 1]
        else:
            content = f"Here is my answer to: {text}"
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": {"content": [{"token": "x", "logprob": -0.25}]}, "finish_reason": "stop"}]}
    return app, asked


def _recipe(tmp_path, url, count):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join(json.dumps({"instruction": text}) for text in (
        "Give three tips for staying healthy.", "Explain what a prime number is.", "Write a limerick about a cat.",
        "Name the capital of Spain.")) + "\n")
    return {"name": "si", "seed": 0, "generate": {
        "prompts": {"seeds": str(seeds), "count": count, "per_request": 4, "examples": 3},
        "decoding": {"max_new_tokens": 64, "temperature": 0.7},
        "endpoint": {"url": url, "model": "teacher", "retries": 0}}}


def test_instructions_are_kept_when_novel_and_answered_with_provenance(tmp_path):
    app, asked = _teacher_app()
    with serving(app) as url:
        summary = generate(_recipe(tmp_path, url, count=4), tmp_path / "data", show_progress=False)
        # a rerun: everything is there, nothing is asked again
        again = generate(_recipe(tmp_path, url, count=4), tmp_path / "data", show_progress=False)
    assert again["self_instruct"]["requests"] == 0 and again["records"] == 4
    facts = summary["self_instruct"]
    assert facts["kept"] == 4 and facts["requests"] == 2 == len(asked)
    assert facts["rejected"] == {"ROUGE-L > 0.7 to a kept instruction": 1, "too short": 1}
    assert facts["candidates"] == 6
    folder = tmp_path / "data" / "prompts"
    kept = list(RecordStore(folder, json.loads((folder / INDEX_FILE).read_text())["fingerprint"]).records())
    assert [record["prompt"] for record in kept] == [
        "Write a haiku about rain.", "Translate 'good night' into French.",
        "List three prime numbers greater than fifty.", "Describe how a rainbow forms in the sky."]
    assert kept[0]["provenance"]["teacher"] == {"endpoint": url, "model": "teacher"} and len(kept[0]["shown"]) == 3
    records = list(RecordStore(tmp_path / "data", json.loads((tmp_path / "data" / INDEX_FILE).read_text())
                               ["fingerprint"]).records())
    assert sorted(record["prompt"] for record in records) == sorted(record["prompt"] for record in kept)
    assert all(record["completion"].startswith("Here is my answer") for record in records)


def test_rouge_l_novelty_and_parsing_follow_the_paper():
    novelty = Novelty(["Write a poem about the sea"])
    assert novelty.closest("Write a short poem about the ocean") == pytest.approx(10 / 13)  # LCS 5 of 6 and 7 words
    assert novelty.closest("Name three rivers in Africa") == 0.0
    assert parse_candidates("Write a poem.\n6. Name a river.\nnot numbered\n7) Sort the list.") == [
        "Write a poem.", "Name a river.", "Sort the list."]
    assert request_text(["A.", "B."], 3).endswith("1. A.\n2. B.\n3.")


def test_seed_instructions_without_their_column_are_refused(tmp_path):
    seeds = tmp_path / "other-seeds.jsonl"
    seeds.write_text(json.dumps({"task": "Say hi."}) + "\n")
    recipe = _recipe(tmp_path, "http://127.0.0.1:9/v1", count=2)
    recipe["generate"]["prompts"]["seeds"] = str(seeds)
    with pytest.raises(distill.DistillError, match="Column 'instruction' is not in"):
        generate(recipe, tmp_path / "data", show_progress=False)
