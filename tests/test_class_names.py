"""Class names of string labels are kept: in the run's metrics, in every exported model (id2label for Hugging Face
classifiers), and in the confusion-matrix figure."""

import json

import numpy as np
from transformers import BertConfig, BertForSequenceClassification

import distill
from distill.training_stage import label_classes

NAMES = ["bird", "cat", "dog"]


def _csv(path):
    generator = np.random.default_rng(0)
    rows = ["f1,f2,animal"]
    for _ in range(240):
        label = int(generator.integers(0, 3))
        values = generator.normal(size=2) + label * 2
        rows.append(",".join(f"{value:.4f}" for value in values) + f",{NAMES[label]}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_string_labels_are_named_in_metrics_and_every_exported_model(tmp_path):
    recipe = {"name": "animals", "seed": 0,
              "data": {"path": str(_csv(tmp_path / "animals.csv")), "features": ["f1", "f2"], "label": "animal"},
              "teacher": {"model": {"kind": "mlp", "hidden": [16]}, "train": {"epochs": 3, "batch_size": 16}},
              "student": {"model": {"kind": "mlp", "hidden": [4]}}, "baseline": True,
              "objective": {"alpha": 0.5, "temperature": 2}, "training": {"epochs": 2, "batch_size": 16},
              "compress": {"quantize": "int8", "prune": 0.5, "finetune_steps": 4},
              "evaluation": {"latency_runs": 5, "latency_b1_runs": 20}}
    result = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    assert result.metrics["data"]["class_names"] == NAMES
    for model in ("teacher", "baseline", "student", "student_int8", "student_pruned"):
        config = json.loads((tmp_path / "run" / model / "config.json").read_text())
        assert config["class_names"] == NAMES, model
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["class_names"] == NAMES


def test_a_hugging_face_classifier_is_exported_with_id2label():
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=16, num_labels=3))
    label_classes(model, NAMES)
    assert model.config.id2label == {0: "bird", 1: "cat", 2: "dog"} and model.config.label2id["dog"] == 2
    label_classes(model, ["a", "b"])  # a label set of another size is not forced onto the head
    assert model.config.id2label[2] == "dog"
