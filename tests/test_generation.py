"""distill generate: a teacher answers prompts into provenance-stamped, append-only records; a killed command
continues with nothing lost or duplicated and, with the seeded local backend, the same records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

import distill
from distill.cache.fingerprint import model_fingerprint
from distill.cli import main
from distill.data.records import INDEX_FILE, RecordStore
from distill.generation.generate import generate
from distill.generation.local import LocalBackend, batch_seed
from lm_helpers import saved_tiny_llama, tiny_llama, tokenizer


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return saved_tiny_llama(tmp_path_factory.mktemp("teacher"))


def _recipe(teacher, **generate_section):
    return {"name": "gen", "seed": 0,
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher), "task": "causal-lm"}},
            "generate": {"prompts": {"task": "addition", "count": 10}, "batch_size": 4,
                         "decoding": {"max_new_tokens": 12, "temperature": 1.0, "n": 2}, **generate_section}}


def _without_time(records):
    return [{**record, "provenance": {k: v for k, v in record["provenance"].items() if k != "created"}}
            for record in records]


def _records(folder):
    return list(RecordStore(folder, json.loads((folder / INDEX_FILE).read_text())["fingerprint"]).records())


def test_every_answer_is_a_record_with_its_provenance(teacher, tmp_path):
    summary = generate(_recipe(teacher), tmp_path / "data", show_progress=False)
    records = _records(tmp_path / "data")
    assert summary["records"] == len(records) == 20 and summary["prompts"] == 10
    assert len({record["key"] for record in records}) == 20
    assert sorted({record["sample"] for record in records}) == [0, 1]
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(teacher)
    first = records[0]
    assert first["provenance"]["weights"] == model_fingerprint(loaded)
    assert first["provenance"]["decoding"]["n"] == 2 and first["provenance"]["seed"] == 0
    assert first["provenance"]["tokenizer"].startswith("sha256:") and first["provenance"]["backend"] == "local"
    assert first["reference"] is not None and first["task"] == "addition" and len(first["prompt_hash"]) == 64
    for record in records:
        assert 1 <= record["tokens"] <= 12 and record["mean_logprob"] <= 0
        assert record["finish_reason"] == ("length" if record["tokens"] == 12 else "stop")
    index = json.loads((tmp_path / "data" / INDEX_FILE).read_text())
    assert index["complete"] and index["shards"][0]["records"] == 20


def test_a_greedy_answer_and_its_log_probability_are_the_teachers(teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = _recipe(teacher, batch_size=1, prompts={"task": "addition", "count": 2},
                     decoding={"max_new_tokens": 8, "temperature": 0})
    generate(recipe, tmp_path / "data", show_progress=False)
    record = _records(tmp_path / "data")[0]
    model, tok = AutoModelForCausalLM.from_pretrained(teacher).eval(), tokenizer()
    prompt_ids = tok.apply_chat_template([{"role": "user", "content": record["prompt"]}], add_generation_prompt=True,
                                         tokenize=True)
    prompt_ids = list(prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids)
    ids = torch.tensor([prompt_ids])
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                               pad_token_id=tok.pad_token_id)[0, len(prompt_ids):]
    eos = generated.tolist().index(tok.eos_token_id) + 1 if tok.eos_token_id in generated.tolist() else len(generated)
    assert record["completion"] == tok.decode(generated[:eos], skip_special_tokens=True)
    with torch.no_grad():  # teacher forcing over prompt + answer gives the same per-token log-probabilities
        logits = model(torch.cat([ids[0], generated[:eos]])[None]).logits[0, len(prompt_ids) - 1:-1]
    expected = torch.log_softmax(logits, -1).gather(-1, generated[:eos, None]).mean()
    assert record["tokens"] == eos and record["mean_logprob"] == pytest.approx(float(expected), abs=1e-4)


def test_token_log_probabilities_read_by_the_hook_equal_those_of_every_kept_step_logit():
    """Sampling with temperature and top-p; the log-probabilities are of the raw logits (temperature 1), as
    output_logits=True would give them, without keeping a step's logits after the next step."""
    from distill.config.generation import DecodingConfig
    from distill.generation.prompts import Prompt

    model, tok = tiny_llama(hidden=32).eval(), tokenizer()
    backend = LocalBackend(model, tok, DecodingConfig(max_new_tokens=10, temperature=0.8, top_p=0.9, n=2),
                           chat="never")
    batch = [(Prompt(name, text), backend.encode(Prompt(name, text))) for name, text in
             [("a", "In the beginning"), ("b", "And the earth was without form")]]
    width = max(len(ids) for _, ids in batch)
    answers = [answer for pair in backend.answer(batch, seed=3, top_logprobs=2) for answer in pair]
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(ids)) + ids for _, ids in batch])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(ids) for _, ids in batch])[:, None]).long()
    torch.manual_seed(batch_seed(3, ["a", "b"]))
    with torch.no_grad():
        output = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, max_new_tokens=10,
                                temperature=0.8, top_p=0.9, top_k=0, num_return_sequences=2,
                                pad_token_id=tok.pad_token_id, return_dict_in_generate=True, output_logits=True)
    generated = output.sequences[:, width:]
    for row, answer in enumerate(answers):
        assert list(answer.token_ids) == generated[row, :answer.tokens].tolist()
        for step, value in enumerate(answer.token_logprobs):
            raw = torch.log_softmax(output.logits[step][row].float(), -1)
            assert value == pytest.approx(float(raw[generated[row, step]]), abs=1e-5)
            best = raw.topk(2)
            assert [token for token, _ in answer.top_logprobs[step]] == best.indices.tolist()
            assert [value for _, value in answer.top_logprobs[step]] == pytest.approx(best.values.tolist(), abs=1e-5)


def test_a_killed_generation_continues_with_nothing_lost_or_duplicated(teacher, tmp_path):
    recipe = _recipe(teacher, prompts={"task": "addition", "count": 160}, batch_size=2)
    recipe["generate"]["decoding"]["max_new_tokens"] = 24
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    command = [sys.executable, "-m", "distill.cli", "generate", str(path), "-o", str(tmp_path / "killed"), "--quiet"]
    child = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    index = tmp_path / "killed" / INDEX_FILE
    deadline = time.time() + 120
    while time.time() < deadline and not (index.is_file() and json.loads(index.read_text())["shards"]
                                          and json.loads(index.read_text())["shards"][0]["records"] >= 40):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    state = json.loads(index.read_text())
    assert not state["complete"], "the child finished before it was killed; give it more work"
    with open(tmp_path / "killed" / state["shards"][-1]["file"], "ab") as handle:
        handle.write(b'{"key": "torn')  # a write the kill cut off: past the committed length
    resumed = CliRunner().invoke(main, ["generate", str(path), "-o", str(tmp_path / "killed"), "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    generate(recipe, tmp_path / "straight", show_progress=False)
    killed, straight = _records(tmp_path / "killed"), _records(tmp_path / "straight")
    assert len(killed) == 320 and len({record["key"] for record in killed}) == 320
    assert _without_time(killed) == _without_time(straight)


def test_a_rerun_with_other_settings_is_refused_and_the_records_kept(teacher, tmp_path):
    generate(_recipe(teacher), tmp_path / "data", show_progress=False)
    before = (tmp_path / "data" / "shard-00000.jsonl").read_bytes()
    with pytest.raises(distill.DistillError, match="other settings .*decoding.temperature"):
        generate(_recipe(teacher, decoding={"max_new_tokens": 12, "temperature": 0.5, "n": 2}), tmp_path / "data",
                 show_progress=False)
    assert (tmp_path / "data" / "shard-00000.jsonl").read_bytes() == before


def test_a_prompt_file_without_its_column_lists_the_columns(teacher, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"question": f"What is {n} + 1?"}) for n in range(4)))
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(_recipe(teacher, prompts={"path": str(prompts), "column": "prompt"})))
    result = CliRunner().invoke(main, ["generate", str(path), "-o", str(tmp_path / "data")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Column 'prompt' is not in" in result.output and "question" in result.output
    assert not (tmp_path / "data").exists()


def test_chat_prompts_need_a_chat_template(teacher, tmp_path):
    plain = tmp_path / "plain"
    tiny_llama(vocab_size=512, hidden=32, layers=2).save_pretrained(plain)
    untemplated = tokenizer()
    untemplated.chat_template = None
    untemplated.save_pretrained(plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    prompts = tmp_path / "chats.jsonl"
    prompts.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hello?"}]}) + "\n")
    with pytest.raises(distill.DistillError, match="is a chat .* no chat template"):
        generate(_recipe(plain, prompts={"path": str(prompts)}), tmp_path / "data", show_progress=False)
    with pytest.raises(distill.DistillError, match="generate.chat is always"):
        generate(_recipe(plain, chat="always"), tmp_path / "data2", show_progress=False)


def test_the_record_store_cuts_uncommitted_bytes_and_refuses_lost_ones(tmp_path):
    store = RecordStore(tmp_path / "r", {"a": 1}, shard_records=2)
    store.append([{"key": "x", "v": 1}, {"key": "y", "v": 2}])
    store.append([{"key": "z", "v": 3}, {"key": "x", "v": 9}])  # x is there already: not written twice
    assert [record["key"] for record in store.records()] == ["x", "y", "z"] and len(store) == 3
    with open(tmp_path / "r" / "shard-00001.jsonl", "ab") as handle:
        handle.write(b'{"key": "w"')
    (tmp_path / "r" / "shard-00002.jsonl").write_text('{"key": "q"}\n')  # never committed
    reopened = RecordStore(tmp_path / "r", {"a": 1})
    assert [record["key"] for record in reopened.records()] == ["x", "y", "z"]
    assert not (tmp_path / "r" / "shard-00002.jsonl").exists()
    (tmp_path / "r" / "shard-00000.jsonl").write_text("")
    with pytest.raises(distill.DistillError, match="shorter than index.json says"):
        RecordStore(tmp_path / "r", {"a": 1})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(distill.DistillError, match="not a folder of generated records"):
        RecordStore(tmp_path / "other", {"a": 1})


def test_generation_recipes_are_checked_before_anything_loads(teacher):
    with pytest.raises(distill.DistillError, match="would be the same"):
        distill.load_recipe(_recipe(teacher, decoding={"temperature": 0, "n": 3}))
    with pytest.raises(distill.DistillError, match="it trains nothing. Run distill generate"):
        distill.train(_recipe(teacher), output="/tmp/never-written")
    with pytest.raises(distill.DistillError, match="data: Field required"):
        distill.load_recipe({"teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)}}})


def test_kept_records_train_a_student_on_the_answers_alone(teacher, tmp_path):
    from distill.data.lm import load_lm_splits
    from distill.generation.filter_run import filter_generated

    recipe = _recipe(teacher, prompts={"task": "addition", "count": 24}, batch_size=8)
    recipe["filters"] = [{"kind": "exact_dedup", "on": "completion"}]
    generate(recipe, tmp_path / "gen", show_progress=False)
    report = filter_generated(recipe, tmp_path / "gen", tmp_path / "kept")
    data = {"path": str(tmp_path / "kept"), "lm": {"format": "chat", "test_fraction": 0.2}, "max_length": 64,
            "tokenizer": "builtin:kjv-bpe-512"}
    config = distill.load_recipe({"data": data, "student": {"model": {"kind": "hf-config", "architecture": "llama",
                                                                        "config": {"hidden_size": 16}}}})
    splits = load_lm_splits(config.data, tokenizer(), seed=0)
    records = {record["key"]: record for record in _records(tmp_path / "kept")}
    assert len(splits.train) + len(splits.test) == report["kept"] == len(records)
    # the loss falls on the teacher's answer: the supervised tokens decode to the answer text (plus the end of turn)
    item = splits.train[0]
    supervised = item["labels"][item["labels"] != -100]
    answer = tokenizer().decode(supervised, skip_special_tokens=True).strip()
    assert answer in {record["completion"].strip() for record in records.values()}
    student = {"model": {"kind": "hf-config", "architecture": "llama", "config": {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 128}}}
    run = distill.train({"name": "seq-kd", "data": data, "student": student,
                         "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher), "task": "causal-lm"}},
                         "objective": {"terms": [{"loss": "token_kd", "weight": 0.5, "student": "final_hidden",
                                                  "teacher": "final_hidden"},
                                                 {"loss": "token_ce", "weight": 0.5, "student": "final_hidden"}]},
                         "training": {"max_steps": 3, "batch_size": 4},
                         "evaluation": {"task": "language-modeling", "task_suite": {
                             "task": "addition", "count": 10, "max_new_tokens": 8, "batch_size": 5}}},
                        output=tmp_path / "run", show_progress=False)
    metrics = run.metrics
    assert metrics["student"]["perplexity"] > 1 and metrics["stages"]["student"]["steps"] == 3
    # exact match on held-out task problems, independent of the generated data; students against the teacher
    teacher_right = round(metrics["teacher"]["task_exact_match"] * 10)
    assert metrics["student"]["task_teacher_errors"] == 10 - teacher_right
    assert 0 <= metrics["student"]["task_inherited_errors"] <= metrics["student"]["task_teacher_errors"]
    assert 0 <= metrics["student"]["task_answer_agreement"] <= 1 and metrics["task_suite"]["task"] == "addition"


def test_task_suite_metrics_count_exact_matches_and_inherited_errors(monkeypatch):
    from distill import tasks
    from distill.config import TaskSuiteEvaluation
    from distill.evaluate import task_suite

    items = tasks.examples("addition", "test", 5, seed=0)
    right = {item.id: f"Answer: {item.answer}" for item in items}
    wrong = {item.id: f"Answer: {int(item.answer) + 1}" for item in items}
    given = {"teacher": [right, right, right, wrong, wrong],   # errs on items 3 and 4
             "student": [right, wrong, right, wrong, {items[4].id: "no idea"}]}  # inherits item 3's error only

    def answers(model, tokenizer, prompts, suite):
        return {item.id: given[model][index][item.id] for index, item in enumerate(items)}
    monkeypatch.setattr(task_suite, "answers_of", answers)
    metrics = task_suite.task_suite_metrics({"teacher": "teacher", "student": "student"}, None,
                                            TaskSuiteEvaluation(task="addition", count=5))
    assert metrics["teacher"] == {"task_exact_match": 0.6}
    assert metrics["student"] == {"task_exact_match": 0.4, "task_answer_agreement": 0.6,
                                  "task_inherited_errors": 1, "task_teacher_errors": 2}


def test_a_task_of_the_suite_is_chat_data_for_a_teacher_trained_here(tmp_path):
    llama = {"kind": "hf-config", "architecture": "llama", "config": {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 256}}
    run = distill.train({"name": "task-teacher", "data": {
        "dataset": "task:word_problems", "tokenizer": "builtin:kjv-bpe-512", "max_length": 192,
        "lm": {"format": "chat", "task_train": 40, "task_test": 8, "rationales": False}},
        "teacher": {"model": llama, "train": {"max_steps": 2, "batch_size": 8}},
        "evaluation": {"task": "language-modeling", "task_suite": {"task": "word_problems", "count": 4,
                                                                  "max_new_tokens": 6}}},
        output=tmp_path / "run", show_progress=False)
    data = run.metrics["data"]
    assert data["name"] == "task:word_problems" and data["train"]["records"] == 40 and data["test"]["records"] == 8
    # answers only: the supervised tokens of a record are its "Answer: N" line (and the end of the turn)
    assert data["train"]["supervised_tokens"] < 40 * 12
    assert 0 <= run.metrics["teacher"]["task_exact_match"] <= 1


def test_one_recipe_generates_filters_distils_and_evaluates(teacher, tmp_path):
    from distill.run import describe

    student = {"kind": "hf-config", "architecture": "llama", "config": {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 256}}
    recipe = {**_recipe(teacher, prompts={"task": "addition", "count": 20}, batch_size=10),
              "filters": [{"kind": "length", "drop_truncated": False}, {"kind": "exact_dedup", "on": "completion"}],
              "data": {"dataset": "generated", "tokenizer": str(teacher), "max_length": 96,
                       "lm": {"format": "chat", "test_fraction": 0.2}},
              "student": {"model": student}, "baseline": True,
              "objective": {"terms": [{"loss": "token_ce", "student": "final_hidden"}]},
              "training": {"max_steps": 2, "batch_size": 4},
              "evaluation": {"task": "language-modeling",
                             "task_suite": {"task": "addition", "count": 4, "max_new_tokens": 6}}}
    stages = [line.split()[1] for line in describe(recipe).splitlines() if line[:1].isdigit()]
    assert stages == ["generate", "filter", "data", "prepare", "pair", "baseline", "student", "evaluate"]
    run = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    metrics = run.metrics
    kept = _records(tmp_path / "run" / "kept")
    assert metrics["stages"]["student"]["steps"] == 2 and metrics["stages"]["filter"]["records"] == 40
    assert metrics["stages"]["filter"]["kept"] == len(kept) and set(metrics["stages"]["filter"]["dropped"]) == {
        "length", "exact_dedup"}
    assert metrics["data"]["name"] == "generated"
    assert metrics["data"]["train"]["records"] + metrics["data"]["test"]["records"] == len(kept)
    assert json.loads((tmp_path / "run" / "kept" / "filter_report.json").read_text())["records"] == 40
    assert {"task_exact_match", "perplexity"} <= set(metrics["student"])
    from distill.evaluate.table import columns_for, rows_of

    assert "task exact match" in [column.header for column in columns_for(rows_of(metrics))]  # in the table
    done = json.loads((tmp_path / "run" / "generate" / "stage_done.json").read_text())
    assert done["records"] == 40 and done["prompts"] == 20
    from distill.evaluate.html_report import build_report

    report = build_report([tmp_path / "run"], output=tmp_path / "report")
    page = report.html.read_text()
    assert '<table id="filters">' in page and "<td>exact_dedup</td><td>40</td>" in page
    assert json.loads(report.json.read_text())["filters"][0]["filter"] == "length"
    index = (tmp_path / "run" / "generated" / INDEX_FILE).read_bytes()
    distill.train(recipe, output=tmp_path / "run", resume=True, show_progress=False)
    assert (tmp_path / "run" / "generated" / INDEX_FILE).read_bytes() == index  # nothing generated again
    with pytest.raises(distill.DistillError, match="the teacher generates the data, so it is not trained here"):
        distill.load_recipe({**recipe, "teacher": {**recipe["teacher"], "train": {"max_steps": 1}}})


def test_generated_records_are_held_out_by_prompt(teacher, tmp_path):
    from distill.data.lm import load_lm_splits

    generate(_recipe(teacher, prompts={"task": "addition", "count": 20}), tmp_path / "gen", show_progress=False)
    config = distill.load_recipe({"data": {"path": str(tmp_path / "gen"), "max_length": 64,
                                           "tokenizer": "builtin:kjv-bpe-512",
                                           "lm": {"format": "chat", "test_fraction": 0.25}},
                                  "generate": {"prompts": {"task": "addition", "count": 1}}})
    splits = load_lm_splits(config.data, tokenizer(), seed=0)
    assert len(splits.test) == 2 * 5 and len(splits.train) == 2 * 15  # 5 of 20 prompts, both answers of each

    def prompts(dataset):  # the unsupervised head of each example: the prompt's tokens
        heads = []
        for index in range(len(dataset)):
            item = dataset[index]
            first = int((item["labels"] != -100).nonzero()[0])
            heads.append(tuple(item["input_ids"][:first].tolist()))
        return heads
    test_prompts, train_prompts = prompts(splits.test), prompts(splits.train)
    assert len(set(test_prompts)) == 5 and not set(test_prompts) & set(train_prompts)


def test_the_builtin_teacher_and_seq_kd_recipes_chain_through_the_cli(tmp_path, monkeypatch):
    """addition-teacher then addition-seq-kd as README shows them, from the default paths, on tiny sizes."""
    monkeypatch.chdir(tmp_path)
    small = ["--set", "teacher.model.config.hidden_size=32", "--set", "teacher.model.config.intermediate_size=64"]
    trained = CliRunner().invoke(main, [
        "train", "addition-teacher", "--quiet", "-o", "runs/addition-teacher", *small,
        "--set", "data.lm.task_train=64", "--set", "data.lm.task_test=8", "--set", "teacher.train.max_steps=3",
        "--set", "evaluation.task_suite.count=4", "--set", "evaluation.task_suite.max_new_tokens=8"])
    assert trained.exit_code == 0, trained.output
    teacher_metrics = json.loads(Path("runs/addition-teacher/metrics.json").read_text())
    assert teacher_metrics["models"] == ["teacher"] and teacher_metrics["data"]["train"]["records"] == 64
    assert 0 <= teacher_metrics["teacher"]["task_exact_match"] <= 1
    shortened = ["--set", "generate.prompts.count=6", "--set", "generate.decoding.max_new_tokens=8",
                 "--set", "training.max_steps=2", "--set", "training.batch_size=4",
                 "--set", "evaluation.task_suite.count=4",
                 "--set", "evaluation.task_suite.max_new_tokens=8", "--set", "data.lm.test_fraction=0.2"]
    # a teacher of 3 steps gets every answer wrong: verify keeps nothing, and the run says so before training
    refused = CliRunner().invoke(main, ["train", "addition-seq-kd", "--quiet", "-o", "runs/refused", *shortened,
                                        "--set", "filters.0.drop_truncated=false"])
    assert refused.exit_code == 2 and "runs/refused/kept holds no records" in refused.output, refused.output
    report = json.loads(Path("runs/refused/kept/filter_report.json").read_text())
    assert [step["filter"] for step in report["filters"]] == ["length", "exact_dedup", "contamination", "verify"]
    assert report["records"] == 12 and report["kept"] == 0 and report["filters"][-1]["reasons"]  # 6 problems x 2
    distilled = CliRunner().invoke(main, ["train", "addition-seq-kd", "--quiet", "-o", "runs/seq-kd", *shortened,
                                          "--set", "filters=[{kind: length, drop_truncated: false}]"])
    assert distilled.exit_code == 0, distilled.output
    metrics = json.loads(Path("runs/seq-kd/metrics.json").read_text())
    assert metrics["stages"]["filter"]["records"] == 12 and metrics["stages"]["student"]["steps"] == 2
    generated = _records(tmp_path / "runs" / "seq-kd" / "generated")
    assert {record["provenance"]["teacher"]["name_or_path"] for record in generated} == {
        "runs/addition-teacher/teacher"}
    assert {"task_exact_match", "task_inherited_errors"} <= set(metrics["student"])


def test_a_local_model_path_that_does_not_exist_is_named_not_sent_to_the_hub(tmp_path):
    from distill.model_sources import resolve_hf_path

    for missing in ("runs/nothing/teacher", str(tmp_path / "absent"), "./absent"):
        with pytest.raises(distill.DistillError, match="no such folder"):
            resolve_hf_path(missing)
    assert resolve_hf_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"  # a hub id passes
