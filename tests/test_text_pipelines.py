"""Task-specific text pipelines as one recipe: TinyBERT's two steps (general distillation of hidden states on
unlabelled text against the teacher as loaded, then the task), and distil-then-fine-tune (``student.finetune``)."""

import json

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

import distill
from distill.cli import main
from distill.evaluate.rundir import evaluate_run_dir
from distill.evaluate.table import rows_of
from distill.general_distillation import hidden_state_pairs
from distill.run import describe
from text_helpers import tiny_bert_classifier, topic_rows, write_csv

TIMING = {"latency_runs": 5, "latency_b1_runs": 20, "batch_size": 64, "latency_batch_size": 16}
UNLABELLED = 400


def _recipe(tmp_path, teacher, **student):
    unlabelled = write_csv(tmp_path / "unlabelled.csv", [{"sentence": row["sentence"]}
                                                         for row in topic_rows(UNLABELLED, 5)])
    return {"name": "two-step", "seed": 0,
            "data": {"path": str(write_csv(tmp_path / "topics.csv", topic_rows(300, 0))), "text": "sentence",
                     "label": "topic", "max_length": 16},
            "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)},
                        "train": {"epochs": 6, "batch_size": 16, "lr": 0.002, "warmup_steps": 10}},
            "student": {"from_teacher": {"keep": 2},
                        "general": {"texts": {"path": str(unlabelled)},
                                    "training": {"epochs": 2, "batch_size": 16, "lr": 0.002}},
                        "finetune": {"epochs": 1, "batch_size": 16, "lr": 0.0005}, **student},
            "baseline": True, "objective": {"alpha": 0.7, "temperature": 2},
            "training": {"epochs": 4, "batch_size": 16, "lr": 0.002, "warmup_steps": 10}, "evaluation": TIMING}


def _hidden_state_errors(student, teacher, texts, tokenizer):
    """The default general objective's terms, by hand: MSE between student hidden state i and teacher hidden
    state j for each pair of a 2-block student derived from teacher blocks [0, 3]."""
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        student_states = student.eval()(**batch, output_hidden_states=True).hidden_states
        teacher_states = teacher.eval()(**batch, output_hidden_states=True).hidden_states
    return [float(torch.nn.functional.mse_loss(student_states[i], teacher_states[j]))
            for i, j in ((0, 0), (1, 1), (2, 4))]


def test_hidden_states_map_to_the_blocks_a_derived_student_came_from_else_uniformly():
    assert hidden_state_pairs(2, 6, origin=[0, 5]) == [(0, 0), (1, 1), (2, 6)]
    assert hidden_state_pairs(3, 12) == [(0, 0), (1, 4), (2, 8), (3, 12)]  # TinyBERT: g(m) = m * N / M
    assert hidden_state_pairs(4, 6) == [(0, 0), (1, 2), (2, 3), (3, 5), (4, 6)]  # halves round up


def test_general_then_task_distillation_then_fine_tuning_in_one_recipe(tmp_path):
    pretrained = tiny_bert_classifier(tmp_path / "pretrained", initializer_range=0.2)
    recipe = _recipe(tmp_path, pretrained)
    stages = [line.split()[1] for line in describe(recipe).splitlines() if line[:1].isdigit()]
    assert stages == ["prepare", "general", "teacher", "pair", "baseline", "student", "student_finetuned",
                      "evaluate"]
    result = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    train_texts = UNLABELLED - UNLABELLED // 5  # a fifth (at most val_texts = 200) validates the general step
    assert metrics["data"]["general"] == {"texts": UNLABELLED, "validation": UNLABELLED // 5,
                                          "source": str(tmp_path / "unlabelled.csv")}
    assert metrics["stages"]["general"]["steps"] == 2 * (train_texts // 16)

    # the general step learnt the teacher as loaded (before its fine-tuning) on the unlabelled texts: the block
    # copied from teacher block 3 now stands in for blocks 1-3, so its error to teacher hidden state 4 shrinks
    tokenizer = AutoTokenizer.from_pretrained(run / "general")
    texts = [row["sentence"] for row in topic_rows(64, 9)]
    loaded = AutoModelForSequenceClassification.from_pretrained(pretrained)
    initial = distill.derive.derive_student(loaded, [0, 3])
    before = _hidden_state_errors(initial, loaded, texts, tokenizer)
    after = _hidden_state_errors(AutoModelForSequenceClassification.from_pretrained(run / "general"), loaded, texts,
                                 tokenizer)
    assert before[0] == before[1] == 0.0 and before[2] > 0  # derived: the first two states are the teacher's
    assert after[2] < 0.6 * before[2], (before, after)
    fine_tuned = AutoModelForSequenceClassification.from_pretrained(run / "teacher")
    assert after[2] < _hidden_state_errors(initial, fine_tuned, texts, tokenizer)[2]

    # distil, then fine-tune: a model of its own, beside the others, that pipeline() loads with the label names
    assert set(metrics) >= {"teacher", "baseline", "student", "student_finetuned"}
    assert metrics["student_finetuned"]["accuracy"] is not None and metrics["student_finetuned"]["agreement"] <= 1
    assert metrics["stages"]["student_finetuned"]["steps"] == metrics["data"]["train"] // 16  # 1 epoch, full batches
    assert "distilled student, then fine-tuned on gold labels" in [label for label, _ in rows_of(metrics)]  # table
    distilled, finetuned = (load_file(str(run / name / "model.safetensors")) for name in ("student",
                                                                                        "student_finetuned"))
    assert any(not torch.equal(distilled[key], finetuned[key]) for key in distilled)
    classify = pipeline("text-classification", model=str(run / "student_finetuned"), device="cpu")
    assert classify("a hammer with a saw")[0]["label"] in ("animal", "food", "tool")
    assert result.student.config.num_hidden_layers == 2

    # resumed, nothing trains again and the same numbers come back
    lines = (run / "log.jsonl").read_text().count('"stage": "general"')
    again = distill.train(recipe, output=run, resume=True, show_progress=False)
    assert (run / "log.jsonl").read_text().count('"stage": "general"') == lines
    assert again.metrics["student_finetuned"]["accuracy"] == metrics["student_finetuned"]["accuracy"]
    evaluated = evaluate_run_dir(run, output=tmp_path / "eval.json", show_progress=False)  # distill eval RUN
    assert evaluated["status"]["student_finetuned"] == "exported"
    assert evaluated["student_finetuned"]["accuracy"] == metrics["student_finetuned"]["accuracy"]


def _refused(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    run = tmp_path / "run"
    written = sorted(p.name for p in run.rglob("*") if p.is_file()) if run.exists() else []
    assert set(written) <= {"recipe.yaml", "log.jsonl"}, written
    return " ".join(result.output.split())


@pytest.mark.parametrize("change, message", [
    ({"general": {"objective": {"terms": [{"loss": "cross_entropy"}]}}}, "reads labels"),
    ({"general": {"texts": {"path": "PLACEHOLDER", "text": "review"}}}, "Column 'review' is not in"),
    ({"general": {"texts": {"path": "missing.csv"}}}, "missing.csv"),
], ids=["labels", "column", "file"])
def test_a_general_step_that_cannot_work_is_refused_before_training(tmp_path, change, message):
    teacher = tiny_bert_classifier(tmp_path / "teacher")
    recipe = _recipe(tmp_path, teacher)
    recipe["student"].update(change)
    texts = recipe["student"]["general"].get("texts", {})
    if texts.get("path") == "PLACEHOLDER":
        texts["path"] = str(tmp_path / "unlabelled.csv")
    elif texts.get("path") == "missing.csv":
        texts["path"] = str(tmp_path / "missing.csv")
    assert message in _refused(tmp_path, recipe)


def test_general_distillation_needs_text_data_and_finetune_a_plain_run():
    tabular = {"data": {"dataset": "digits"}, "teacher": {"model": {"kind": "mlp", "hidden": [8]}},
               "student": {"model": {"kind": "mlp", "hidden": [4]}, "general": {}}, "objective": {"alpha": 0.5}}
    with pytest.raises(distill.DistillError, match="student.general distils on unlabelled texts"):
        distill.load_recipe(tabular)
    regime = {**tabular, "student": {"model": {"kind": "mlp", "hidden": [4]}, "finetune": {"epochs": 1}},
              "mode": {"kind": "born_again"}}
    with pytest.raises(distill.DistillError, match="student.finetune fine-tunes the single student"):
        distill.load_recipe(regime)


def test_the_default_general_objective_is_refused_for_a_student_with_its_own_tokenizer(tmp_path):
    teacher = tiny_bert_classifier(tmp_path / "teacher")
    student = tiny_bert_classifier(tmp_path / "student-pretrained", layers=1, words=["the", "cat"], seed=1)
    recipe = _recipe(tmp_path, teacher)
    recipe["student"].pop("from_teacher")
    recipe["student"]["model"] = {"kind": "hf", "name_or_path": str(student)}
    output = _refused(tmp_path, recipe)
    assert "student.general's default objective matches hidden states token by token" in output
    recipe["student"]["general"]["objective"] = {"terms": [
        {"loss": "hint", "student": "hidden_states[1]", "teacher": "hidden_states[2]"}]}
    assert "student.general.objective term 'hint' compares 'hidden_states[1]' token by token" in _refused(
        tmp_path, recipe)
