"""Filters of generated records: planted exact duplicates, near duplicates and contaminated items are found (all of
the exact and contaminated ones, nearly all near ones, no false drops on distinct records), every drop is counted
by filter and reason, and distill filter writes the kept records beside a report."""

import json
import random

import pytest
import yaml
from click.testing import CliRunner

import distill
from distill import tasks
from distill.cli import main
from distill.config import load_recipe
from distill.data.records import RecordStore
from distill.generation.filters import run_filters

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "dro", "fen", "gul", "bri"]


def _record(key, prompt, completion, **fields):
    return {"key": key, "prompt": prompt, "completion": completion, "tokens": len(completion.split()),
            "finish_reason": "stop", "reference": None, "task": None, "mean_logprob": -0.5, **fields}


def _filters(*specs):
    recipe = load_recipe({"teacher": {"model": {"kind": "hf", "name_or_path": "t", "task": "causal-lm"}},
                          "generate": {"prompts": {"task": "addition", "count": 1}}, "filters": list(specs)})
    return recipe.filters


def _planted(seed=0):
    generator = random.Random(seed)
    words = ["".join(generator.choice(SYLLABLES) for _ in range(3)) for _ in range(600)]
    prompts = [item.prompt for item in tasks.examples("addition", "train", 200, seed=seed)]
    base = [_record(f"r{index}", prompts[index], " ".join(generator.choice(words) for _ in range(30)))
            for index in range(200)]
    exact = [_record(f"exact{index}", base[index]["prompt"].upper(), "  " + base[index]["completion"].title())
             for index in range(0, 40, 2)]
    near = []
    for index in range(1, 41, 2):
        changed = base[index]["completion"].split()
        changed[generator.randrange(30)] = generator.choice(words)
        near.append(_record(f"near{index}", base[index]["prompt"] + " Please.", " ".join(changed)))
    test_items = tasks.examples("addition", "test", 10, seed=0)
    contaminated = [_record(f"leak{index}", item.prompt, " ".join(generator.choice(words) for _ in range(30)))
                    for index, item in enumerate(test_items)]
    records = base + exact + near + contaminated
    generator.shuffle(records)
    # a duplicate must come after what it repeats for the first one to be kept: put the originals first
    records.sort(key=lambda record: not record["key"].startswith("r"))
    return records, {item.id for item in test_items}


def test_planted_duplicates_near_duplicates_and_contamination_are_found():
    records, leaked_ids = _planted()
    kept, report = run_filters(records, _filters(
        {"kind": "exact_dedup"}, {"kind": "near_dedup", "on": "completion", "threshold": 0.7},
        {"kind": "contamination", "sets": [{"name": "addition-test", "task": "addition"}]}))
    exact, near, contamination = report["filters"]
    assert exact["dropped"] == 20 and exact["reasons"] == {"duplicate": 20}
    dropped_near = near["dropped"]
    assert 19 <= dropped_near <= 20  # recall >= 95% on one-word edits of 30-word texts
    assert contamination["dropped"] == 10 and sum(contamination["matched_items"].values()) == 10
    assert {name.split("/")[1] for name in contamination["matched_items"]} == leaked_ids
    kept_keys = {record["key"] for record in kept}
    assert {f"r{index}" for index in range(200)} <= kept_keys  # no distinct record dropped
    assert report["records"] == 250 and report["kept"] == 250 - 20 - dropped_near - 10
    assert exact["seen"] == 250 and near["seen"] == 230 and contamination["seen"] == 230 - dropped_near


def test_short_evaluation_items_are_matched_whole_and_long_ones_by_n_grams(tmp_path):
    evaluation = tmp_path / "eval.jsonl"
    long_item = " ".join(f"w{index}" for index in range(20))
    evaluation.write_text("\n".join(json.dumps({"text": text}) for text in ("Who wrote Hamlet?", long_item)) + "\n")
    records = [_record("a", "Quiz: who wrote hamlet? Tell me.", "Shakespeare"),
               _record("b", "Who wrote Macbeth?", "Not Hamlet."),                     # not the whole short item
               _record("c", "x", " ".join(f"w{index}" for index in range(5, 18))),    # 13 words of the long item
               _record("d", "x", " ".join(f"w{index}" for index in range(5, 17)))]    # only 12
    _, report = run_filters(records, _filters({"kind": "contamination", "sets": [
        {"name": "quiz", "path": str(evaluation)}]}))
    assert [example["key"] for example in report["filters"][0]["examples"]] == ["a", "c"]
    assert report["filters"][0]["matched_items"] == {"quiz/quiz:0": 1, "quiz/quiz:1": 1}


def test_length_verify_self_score_and_format_filters_give_their_reasons():
    problem = tasks.examples("addition", "train", 1, seed=0)[0]
    records = [_record("ok", problem.prompt, f"{problem.rationale}\nAnswer: {problem.answer}",
                       reference=problem.answer, task="addition"),
               _record("wrong", problem.prompt, "Answer: 1", reference=problem.answer, task="addition"),
               _record("cut", "p", "a b c", finish_reason="length"),
               _record("unsure", "p", "Answer: 3", mean_logprob=-4.0),
               _record("prose", "p", "no json here")]
    kept, report = run_filters(records, _filters({"kind": "length"}, {"kind": "verify"},
                                                 {"kind": "self_score", "min_mean_logprob": -2.0},
                                                 {"kind": "format", "regex": "Answer: \\d+"}))
    assert [record["key"] for record in kept] == ["ok"]
    assert [step["reasons"] for step in report["filters"]] == [
        {"truncated at max_new_tokens": 1}, {"wrong answer": 1}, {"mean log-probability": 1},
        {"does not match the regex": 1}]
    _, report = run_filters([_record("j", "p", '{"a": 1}'), _record("k", "p", '{"b": 1}'), _record("l", "p", "{")],
                            _filters({"kind": "format", "valid_json": True, "required_keys": ["a"]}))
    assert report["filters"][0]["reasons"] == {"JSON without key": 1, "not valid JSON": 1}


def test_self_score_needs_log_probabilities():
    with pytest.raises(distill.DistillError, match="has none: the endpoint returned no logprobs"):
        run_filters([_record("x", "p", "a", mean_logprob=None, provenance={"backend": "endpoint"})],
                    _filters({"kind": "self_score", "min_mean_logprob": -1}))


def test_distill_filter_writes_kept_records_and_a_report_and_leaves_the_input_alone(tmp_path):
    source = RecordStore(tmp_path / "generated", {"made": "here"})
    records, _ = _planted(1)
    source.append(records)
    source.finish({})
    before = (tmp_path / "generated" / "shard-00000.jsonl").read_bytes()
    recipe = {"teacher": {"model": {"kind": "hf", "name_or_path": "t", "task": "causal-lm"}},
              "generate": {"prompts": {"task": "addition", "count": 1}},
              "filters": [{"kind": "length"}, {"kind": "exact_dedup"},
                          {"kind": "contamination", "sets": [{"name": "addition-test", "task": "addition"}]}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["filter", str(path), "-i", str(tmp_path / "generated"), "-o",
                                       str(tmp_path / "kept")])
    assert result.exit_code == 0, result.output
    assert "exact_dedup    dropped     20 of    250  (duplicate 20)" in result.output
    report = json.loads((tmp_path / "kept" / "filter_report.json").read_text())
    kept = list(RecordStore(tmp_path / "kept", json.loads((tmp_path / "kept" / "index.json").read_text())
                            ["fingerprint"]).records())
    assert len(kept) == report["kept"] == 250 - 20 - 10
    assert (tmp_path / "generated" / "shard-00000.jsonl").read_bytes() == before


@pytest.mark.parametrize("case, message", [
    ("no-index", "holds no generated records"),
    ("unfinished", "is not finished (3 records so far)"),
    ("unreadable-eval-set", "missing.jsonl"),
])
def test_filter_input_that_cannot_work_is_refused(tmp_path, case, message):
    folder = tmp_path / "generated"
    if case != "no-index":
        store = RecordStore(folder, {"made": "here"})
        store.append([_record(f"k{index}", "p", f"answer {index}") for index in range(3)])
        if case != "unfinished":
            store.finish({})
    recipe = {"teacher": {"model": {"kind": "hf", "name_or_path": "t", "task": "causal-lm"}},
              "generate": {"prompts": {"task": "addition", "count": 1}},
              "filters": [{"kind": "contamination", "sets": [{"name": "e", "path": str(tmp_path / "missing.jsonl")}]}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["filter", str(path), "-i", str(folder), "-o", str(tmp_path / "kept")])
    assert result.exit_code == 2 and "Traceback" not in result.output and message in result.output, result.output
    assert not (tmp_path / "kept" / "index.json").exists()


def test_task_problems_leak_only_as_whole_problems_not_by_their_shared_template():
    train = tasks.examples("word_problems", "train", 300, seed=0)
    leaked = tasks.examples("word_problems", "test", 3, seed=0)
    records = [_record(item.id, item.prompt, item.completion()) for item in [*train, *leaked]]
    _, report = run_filters(records, _filters({"kind": "contamination", "sets": [
        {"name": "wp-test", "task": "word_problems", "count": 1000}]}))
    assert report["filters"][0]["dropped"] == 3  # the 300 train problems share 13-grams with test ones, no more
    assert {name.split("/")[1] for name in report["filters"][0]["matched_items"]} == {item.id for item in leaked}


def test_an_operator_is_part_of_the_problem_so_train_and_test_arithmetic_do_not_collide():
    test_item = tasks.examples("arithmetic", "test", 1000, seed=0)
    subtraction = next(item for item in test_item if " - " in item.prompt)
    addition = _record("add", subtraction.prompt.replace(" - ", " + "), "Answer: 1")
    _, report = run_filters([addition, _record("same", subtraction.prompt, "Answer: 2")], _filters(
        {"kind": "contamination", "sets": [{"name": "t", "task": "arithmetic", "count": 1000}]}))
    assert [example["key"] for example in report["filters"][0]["examples"]] == ["same"]
