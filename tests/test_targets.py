"""Multi-label and regression targets end to end, for tabular and text data: the data path, the hard-label
objective (binary cross-entropy, mean squared error), their distillation counterparts, the metrics, the export."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoConfig, pipeline

import distill
from distill.evaluate.target_metrics import mean_average_precision, micro_f1, per_label_f1
from distill.losses import get_loss
from text_helpers import tiny_bert_classifier, topic_rows, write_csv

TIMING = {"latency_runs": 5, "latency_b1_runs": 20}


def test_the_hard_label_losses_match_the_formulas_and_skip_unlabelled_rows():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.0], [1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [float("nan"), float("nan")]])
    expected = 0.0
    for row in range(2):
        for column in range(2):
            probability = 1 / (1 + math.exp(-float(logits[row, column])))
            target = float(labels[row, column])
            expected -= target * math.log(probability) + (1 - target) * math.log(1 - probability)
    assert get_loss("multilabel_bce").fn(logits, labels).item() == pytest.approx(expected / 4, rel=1e-6)
    assert get_loss("multilabel_bce").fn(logits[2:], labels[2:]).item() == 0.0
    predictions, targets = torch.tensor([[1.0], [3.0], [0.0]]), torch.tensor([2.0, 1.0, float("nan")])
    assert get_loss("regression_mse").fn(predictions, targets).item() == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="one number per sample"):
        get_loss("regression_mse").fn(torch.zeros(3, 2), torch.zeros(3))


def test_multi_label_metrics_by_hand():
    logits = torch.tensor([[1.0, -1.0, 2.0], [1.0, 1.0, -3.0], [-1.0, 1.0, 0.5], [-2.0, -1.0, -1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # label 0: predicted rows 0,1, actual rows 0,3 -> tp 1, F1 2/4; label 1: predicted 1,2, actual 1,2 -> 1.0;
    # label 2: predicted 0,2, actual 0 -> 2/3
    assert per_label_f1(logits, labels) == pytest.approx([0.5, 1.0, 2 / 3])
    assert micro_f1(logits, labels) == pytest.approx(2 * 4 / (6 + 5))  # tp 4, predicted 6, actual 5
    # AP: label 0 ranks rows 0,1 (tie broken by order),2,3: positives at ranks 1 and 4 -> (1 + 2/4) / 2
    # label 1: rows 1,2 first -> 1.0; label 2: row 0 first -> 1.0
    assert mean_average_precision(logits, labels) == pytest.approx((0.75 + 1 + 1) / 3)


def _multilabel_csv(path, count=300, seed=0):
    generator = np.random.default_rng(seed)
    rows = ["x1,x2,x3,sports,music,art"]
    for _ in range(count):
        x = generator.normal(size=3)
        labels = [int(x[0] > 0), int(x[1] > 0.3), int(x[0] + x[2] > 0.5)]
        rows.append(",".join(f"{value:.4f}" for value in x) + "," + ",".join(map(str, labels)))
    path.write_text("\n".join(rows) + "\n")
    return path


def _regression_csv(path, count=300, seed=0):
    generator = np.random.default_rng(seed)
    rows = ["x1,x2,price"]
    for _ in range(count):
        x = generator.normal(size=2)
        rows.append(f"{x[0]:.4f},{x[1]:.4f},{3 * x[0] - 2 * x[1] + 0.1 * generator.normal() + 10:.4f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _tabular(tmp_path, data):
    return {"name": "targets", "seed": 0, "data": data,
            "teacher": {"model": {"kind": "mlp", "hidden": [64]}, "train": {"epochs": 30, "batch_size": 32}},
            "student": {"model": {"kind": "mlp", "hidden": [8]}}, "baseline": True,
            "objective": {"alpha": 0.5, "temperature": 2}, "training": {"epochs": 10, "batch_size": 32},
            "evaluation": TIMING}


def test_tabular_multi_label_trains_with_bce_and_reports_f1_and_map(tmp_path):
    path = _multilabel_csv(tmp_path / "tags.csv")
    result = distill.train(_tabular(tmp_path, {"path": str(path), "features": ["x1", "x2", "x3"],
                                               "label": ["sports", "music", "art"]}),
                           output=tmp_path / "run", show_progress=False)
    metrics = result.metrics
    assert metrics["target_kind"] == "multi_label" and metrics["num_classes"] == 3
    assert metrics["teacher"]["micro_f1"] > 0.85 and metrics["teacher"]["map"] > 0.9
    assert 0 <= metrics["student"]["agreement"] <= 1 and "gap_recovered" in metrics["student"]
    assert len(metrics["details"]["student"]["per_label_f1"]) == 3
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("loss/hard" in line for line in log if line.get("stage") == "teacher")
    recipe = json.loads(json.dumps(distill.load_recipe(tmp_path / "run" / "recipe.yaml").model_dump(mode="json")))
    assert [term["loss"] for term in recipe["objective"]["terms"]] == ["multilabel_kd", "multilabel_bce"]
    config = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert config["target_kind"] == "multi_label" and config["class_names"] == ["sports", "music", "art"]


def test_tabular_regression_trains_with_mse_and_reports_r2(tmp_path):
    path = _regression_csv(tmp_path / "prices.csv")
    recipe = _tabular(tmp_path, {"path": str(path), "features": ["x1", "x2"], "label": "price",
                                 "label_kind": "regression"})
    recipe["teacher"]["train"]["lr"] = recipe["training"]["lr"] = 0.01  # targets are used unscaled (mean 10)
    result = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    metrics = result.metrics
    assert metrics["target_kind"] == "regression" and metrics["num_classes"] == 1
    assert metrics["teacher"]["r2"] > 0.8 and metrics["teacher"]["rmse"] < 2
    assert metrics["student"]["mse_to_teacher"] >= 0 and metrics["baseline"]["mae"] > 0
    recipe = distill.load_recipe(tmp_path / "run" / "recipe.yaml")
    assert [term.loss for term in recipe.objective.terms] == ["regression_kd", "regression_mse"]


def test_text_multi_label_and_regression_export_for_pipeline(tmp_path):
    rows = topic_rows(240, 0)
    for row in rows:
        row["animal"], row["food"] = int(row["topic"] == "animal"), int(row["topic"] != "tool")
        row["score"] = {"animal": -1.5, "food": 0.0, "tool": 1.5}[row["topic"]]
    path = write_csv(tmp_path / "texts.csv", rows)
    teacher = tiny_bert_classifier(tmp_path / "pretrained", num_labels=2)
    for kind, label in (("multi_label", ["animal", "food"]), ("regression", "score")):
        recipe = {"name": kind, "seed": 0,
                  "data": {"path": str(path), "text": "sentence", "label": label, "label_kind": kind,
                           "max_length": 16},
                  "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)},
                              "train": {"epochs": 8, "batch_size": 16, "lr": 0.002, "warmup_steps": 10}},
                  "student": {"from_teacher": {"keep": 1}}, "objective": {"alpha": 0.5},
                  "training": {"epochs": 1, "batch_size": 16}, "evaluation": TIMING}
        result = distill.train(recipe, output=tmp_path / kind, show_progress=False)
        folder = tmp_path / kind / "student"
        config = AutoConfig.from_pretrained(folder)
        classify = pipeline("text-classification", model=str(folder), device="cpu", top_k=None)
        scores = classify(["the cat and my dog"])[0]
        if kind == "multi_label":
            assert config.problem_type == "multi_label_classification" and config.id2label[1] == "food"
            assert {score["label"] for score in scores} == {"animal", "food"}
            assert sum(score["score"] for score in scores) != pytest.approx(1.0)  # a sigmoid each, not a softmax
            assert result.metrics["teacher"]["micro_f1"] > 0.8
        else:
            assert config.problem_type == "regression" and config.num_labels == 1
            assert result.metrics["teacher"]["r2"] > 0.5 and "rmse" in result.metrics["student"]


def test_bad_targets_are_refused_naming_the_column(tmp_path):
    path = _multilabel_csv(tmp_path / "tags.csv")
    text = path.read_text().replace(",1\n", ",2\n", 1)
    (tmp_path / "bad.csv").write_text(text)
    base = {"features": ["x1", "x2", "x3"], "label": ["sports", "music", "art"]}
    with pytest.raises(distill.DistillError, match="multi-label columns hold 0 or 1"):
        distill.train(_tabular(tmp_path, {"path": str(tmp_path / "bad.csv"), **base}), output=tmp_path / "r1")
    never = "\n".join(line[:-2] + ",0" if index else line for index, line in enumerate(path.read_text().splitlines()))
    (tmp_path / "never.csv").write_text(never + "\n")
    with pytest.raises(distill.DistillError, match="'art' are never 1 in the training data"):
        distill.train(_tabular(tmp_path, {"path": str(tmp_path / "never.csv"), **base}), output=tmp_path / "r2")
    prices = _regression_csv(tmp_path / "prices.csv")
    with pytest.raises(distill.DistillError, match="label_kind: regression"):
        distill.train(_tabular(tmp_path, {"path": str(prices), "features": ["x1", "x2"], "label": "price"}),
                      output=tmp_path / "r3")
    with pytest.raises(distill.DistillError, match="multi-label data, not regression"):
        distill.load_recipe(_tabular(tmp_path, {"path": str(prices), "features": ["x1"], "label": ["x2", "price"],
                                                "label_kind": "regression"}))
