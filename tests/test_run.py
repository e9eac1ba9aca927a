"""A whole run through the Python API and the CLI: artifacts, metrics, bad inputs."""

import json

import numpy as np
import pytest
import torch
import yaml

import distill
from distill.data import ArrayDataset
from distill.errors import DistillError
from distill.evaluate.metrics import predict_logits
from distill.models import load_saved
from distill.run import RunData
from helpers import blobs, mlp

QUICK = ["teacher.train.epochs=4", "training.epochs=3", "evaluation.latency_runs=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "digits"
    return distill.train("digits-quick", output=run_dir, overrides=QUICK, show_progress=False)


def test_run_directory_holds_every_artifact(finished):
    run_dir = finished.run_dir
    for name in ("recipe.yaml", "metrics.json", "log.jsonl", "teacher/model.safetensors", "baseline/config.json",
                 "student/model.safetensors", "student/config.json"):
        assert (run_dir / name).is_file(), name
    resolved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert resolved["teacher"]["train"]["epochs"] == 4 and resolved["objective"]["terms"][0]["loss"] == "soft_kl"
    assert {line["stage"] for line in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())} == {
        "teacher", "baseline", "student"}
    evals = [line for line in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
             if line["stage"] == "student" and "eval/accuracy" in line]
    assert len(evals) == 3  # one validation pass per epoch
    last = evals[-1]
    assert {"eval/loss/soft", "eval/loss/hard"} <= set(last)
    from distill.data import load_builtin

    splits = load_builtin("digits")  # the run's validation split: seed 0, carved from training data
    logits, labels = predict_logits(finished.student, ArrayDataset(splits.val_x, splits.val_y))
    assert last["eval/accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item(), abs=1e-6)
    assert last["eval/loss"] == pytest.approx(0.7 * last["eval/loss/soft"] + 0.3 * last["eval/loss/hard"], rel=1e-4)


def test_metrics_are_complete_and_consistent(finished):
    metrics = json.loads((finished.run_dir / "metrics.json").read_text())
    for name in ("teacher", "baseline", "student"):
        row = metrics[name]
        assert {"accuracy", "errors", "params", "latency_ms"} <= set(row)
        assert row["errors"] == round((1 - row["accuracy"]) * metrics["test_size"])
    assert metrics["teacher"]["params"] == 64 * 128 + 128 + 128 * 10 + 10
    expected_gap = ((metrics["baseline"]["errors"] - metrics["student"]["errors"])
                    / (metrics["baseline"]["errors"] - metrics["teacher"]["errors"]))
    assert metrics["gap_recovered"] == pytest.approx(expected_gap, abs=1e-4)
    assert 0 <= metrics["agreement"] <= 1 and metrics["seed"] == 0
    assert metrics["steps"] == metrics["stages"]["student"]["steps"] == 3 * (1257 // 32)
    assert metrics["wall_seconds"] > 0


def test_exported_student_reloads_with_identical_predictions(finished):
    reloaded = load_saved(finished.run_dir / "student")
    test = ArrayDataset(*_digits_test())
    original_logits, _ = predict_logits(finished.student, test)
    reloaded_logits, _ = predict_logits(reloaded, test)
    assert torch.equal(original_logits, reloaded_logits)


def _digits_test():
    from distill.data import load_builtin

    splits = load_builtin("digits")
    return splits.test_x, splits.test_y


def test_resume_with_a_different_recipe_is_refused(finished):
    with pytest.raises(DistillError, match="differs.*training.lr"):
        distill.train("digits-quick", output=finished.run_dir, overrides=[*QUICK, "training.lr=0.5"], resume=True,
                      show_progress=False)


def test_existing_run_directory_is_not_overwritten(finished):
    with pytest.raises(DistillError, match="already holds a run"):
        distill.train("digits-quick", output=finished.run_dir, overrides=QUICK, show_progress=False)


def test_resume_of_finished_run_skips_all_stages(finished):
    again = distill.train("digits-quick", output=finished.run_dir, overrides=QUICK, resume=True, show_progress=False)
    before = json.loads((finished.run_dir / "metrics.json").read_text())
    assert again.metrics["student"]["errors"] == before["student"]["errors"]


def _python_data(num_classes=4):
    everything = blobs(320, num_classes=num_classes)
    train = ArrayDataset(everything.inputs[:256].numpy(), everything.labels[:256].numpy())
    test = ArrayDataset(everything.inputs[256:].numpy(), everything.labels[256:].numpy())
    return RunData(train=train, val=None, test=test, input_shape=(12,), num_classes=num_classes)


PYTHON_RECIPE = {"name": "py", "data": {"dataset": "digits"}, "teacher": {}, "student": {},
                 "objective": {"alpha": 0.5, "temperature": 2},
                 "training": {"epochs": 10, "batch_size": 16, "lr": 0.01}, "evaluation": {"latency_runs": 5}}


def test_any_nn_module_through_python(tmp_path):
    result = distill.train(PYTHON_RECIPE, output=tmp_path / "py", teacher=mlp(hidden=32, seed=1), student=mlp(),
                           data=_python_data(), show_progress=False)
    assert result.metrics["student"]["accuracy"] > 0.5
    config = json.loads((tmp_path / "py" / "student" / "config.json").read_text())
    assert config["python_class"].endswith("Sequential")
    with pytest.raises(DistillError, match="Python class"):
        load_saved(tmp_path / "py" / "student")


def test_teacher_and_student_with_different_classes_fail_before_training(tmp_path):
    with pytest.raises(DistillError, match="teacher predicts 5 classes but the data has 4"):
        distill.train(PYTHON_RECIPE, output=tmp_path / "bad", teacher=mlp(num_classes=5), student=mlp(),
                      data=_python_data(), show_progress=False)
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_missing_dataset_file_and_column(tmp_path):
    recipe = {**PYTHON_RECIPE, "data": {"path": str(tmp_path / "nope.csv"), "features": ["a"], "label": "y"},
              "teacher": {"model": {"kind": "mlp"}, "train": {"epochs": 1}}, "student": {"model": {"kind": "mlp"}}}
    with pytest.raises(DistillError, match="nope.csv"):
        distill.train(recipe, output=tmp_path / "a", show_progress=False)
    assert not (tmp_path / "a").exists()  # nothing written for a run that could not start
    csv = tmp_path / "data.csv"
    csv.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(40)))
    recipe["data"] = {"path": str(csv), "features": ["a", "c"], "label": "y"}
    with pytest.raises(DistillError, match="'c'"):
        distill.train(recipe, output=tmp_path / "b", show_progress=False)


def test_user_csv_runs_end_to_end(tmp_path):
    generator = np.random.default_rng(0)
    rows = ["f1,f2,f3,label"]
    for _ in range(300):
        label = int(generator.integers(0, 3))
        values = generator.normal(size=3) + label * 2
        rows.append(",".join(f"{value:.4f}" for value in values) + f",{label}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    recipe = {**PYTHON_RECIPE, "data": {"path": str(tmp_path / "data.csv"), "features": ["f1", "f2", "f3"],
                                        "label": "label"},
              "teacher": {"model": {"kind": "mlp", "hidden": [32]},
                          "train": {"epochs": 20, "batch_size": 16, "lr": 0.01}},
              "student": {"model": {"kind": "mlp", "hidden": [4]}}}
    result = distill.train(recipe, output=tmp_path / "run", show_progress=False)
    assert result.metrics["teacher"]["accuracy"] > 0.8
    assert result.metrics["data"]["num_classes"] == 3
