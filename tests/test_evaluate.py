"""Evaluation metrics against hand-computed values, cost measures, and side-by-side evaluation's bad inputs."""

import math
import time

import pytest
import torch

from distill.config import EvaluationConfig
from distill.data import ArrayDataset
from distill.errors import DistillError
from distill.evaluate.compare import evaluate_models
from distill.evaluate.metrics import (
    calibration,
    confusion_matrix,
    inherited_errors,
    macro_f1,
    mean_jsd_to_teacher,
    mean_kl_to_teacher,
)
from distill.evaluate.speed import latency_ms, peak_forward_memory, weight_bytes
from helpers import blobs, mlp


def one_hot_logits(predictions, num_classes=3):
    return torch.nn.functional.one_hot(torch.tensor(predictions), num_classes).float() * 5


def test_macro_f1_and_confusion_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2])
    logits = one_hot_logits([0, 1, 1, 1, 0])
    # class 0: tp 1, predicted 2, actual 2 -> 0.5; class 1: tp 2, predicted 3, actual 2 -> 0.8; class 2: 0
    assert macro_f1(logits, labels) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert confusion_matrix(logits, labels).tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    from sklearn.metrics import f1_score

    assert macro_f1(logits, labels) == pytest.approx(f1_score(labels, logits.argmax(-1), average="macro"))


def test_kl_and_jsd_by_hand():
    teacher = torch.tensor([[0.0, 0.0]])  # p = (1/2, 1/2)
    student = torch.tensor([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    assert mean_kl_to_teacher(student, teacher) == pytest.approx(0.5 * math.log(0.5 / 0.75)
                                                                 + 0.5 * math.log(0.5 / 0.25))
    middle = (0.625, 0.375)
    kl_p = 0.5 * math.log(0.5 / middle[0]) + 0.5 * math.log(0.5 / middle[1])
    kl_q = 0.75 * math.log(0.75 / middle[0]) + 0.25 * math.log(0.25 / middle[1])
    assert mean_jsd_to_teacher(student, teacher) == pytest.approx(0.5 * kl_p + 0.5 * kl_q)
    assert mean_jsd_to_teacher(teacher, teacher) == pytest.approx(0.0, abs=1e-12)
    # JSD stays finite where the student puts (numerically) no mass on the teacher's class
    assert (mean_jsd_to_teacher(torch.tensor([[1000.0, 0.0]]), torch.tensor([[0.0, 1000.0]]))
            == pytest.approx(math.log(2)))


def test_ece_and_reliability_bins_by_hand():
    confidences = torch.tensor([0.85, 0.85, 0.65, 0.65])
    logits = torch.stack([confidences.log(), (1 - confidences).log()], -1)  # class 0 predicted, at that confidence
    labels = torch.tensor([0, 1, 0, 0])
    result = calibration(logits, labels, bins=10)
    # bin (0.8, 0.9]: confidence 0.85, accuracy 0.5; bin (0.6, 0.7]: confidence 0.65, accuracy 1.0
    assert result["ece"] == pytest.approx(0.5 * 0.35 + 0.5 * 0.35)
    assert result["count"] == [0, 0, 0, 0, 0, 0, 2, 0, 2, 0]
    assert result["accuracy"][8] == pytest.approx(0.5) and result["confidence"][6] == pytest.approx(0.65)


def test_inherited_errors_by_hand():
    labels = torch.tensor([0, 1, 2, 0, 1])
    teacher = one_hot_logits([0, 2, 1, 1, 1])  # wrong at 1, 2, 3
    student = one_hot_logits([0, 2, 2, 0, 0])  # same wrong answer at 1, fixes 2 and 3, own error at 4
    result = inherited_errors(student, teacher, labels)
    assert result == {"teacher_errors": 3, "inherited": 1, "inherited_share": pytest.approx(1 / 3), "fixed": 2,
                      "own_errors": 1, "student_errors": 2}
    # wrong where the teacher is wrong, but with another wrong answer: not inherited
    assert inherited_errors(one_hot_logits([0, 0, 0, 2, 1]), teacher, labels)["inherited"] == 0


def test_peak_memory_counts_live_activations_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    memory = peak_forward_memory(model, {"inputs": torch.randn(1000, 64)})
    # the first layer's output and the ReLU's copy of it are alive together (float32)
    assert memory["activations"] == 2 * 1000 * 256 * 4
    assert memory["weights"] == weight_bytes(model) == (64 * 256 + 256 + 256 * 10 + 10) * 4


def test_latency_reports_its_protocol():
    timing = latency_ms(mlp(), {"inputs": torch.randn(1, 12)}, runs=20)
    assert timing["runs"] == 20 and timing["batch_size"] == 1 and timing["threads"] == torch.get_num_threads()
    assert 0 < timing["median"] <= timing["p95"]


def nearest_centroid(dataset):
    """A strong teacher without training: the linear classifier of the class centroids."""
    centres = torch.stack([dataset.inputs[dataset.labels == label].mean(0) for label in range(4)])
    layer = torch.nn.Linear(centres.shape[1], 4)
    with torch.no_grad():
        layer.weight.copy_(centres)
        layer.bias.copy_(-0.5 * (centres ** 2).sum(-1))
    return layer


def _models(test=None):
    teacher = nearest_centroid(test) if test is not None else mlp(hidden=32, seed=1)
    return {"teacher": teacher, "baseline": mlp(seed=2), "student": mlp(seed=3)}


def test_side_by_side_rows_are_complete_and_consistent():
    test = blobs(200, seed=5)
    test.labels[:20] = (test.labels[:20] + 1) % 4  # label noise: mistakes even the best teacher makes
    evaluation = EvaluationConfig(latency_runs=5, latency_b1_runs=20, batch_size=64)
    metrics = evaluate_models(_models(test), test, evaluation=evaluation)
    assert metrics["teacher"]["errors"] < metrics["baseline"]["errors"]
    assert metrics["models"] == ["teacher", "baseline", "student"]
    for name in metrics["models"]:
        row = metrics[name]
        assert row["errors"] == round((1 - row["accuracy"]) * 200)
        assert sum(map(sum, metrics["details"][name]["confusion"])) == 200
        assert sum(metrics["details"][name]["reliability"]["count"]) == 200
        assert row["latency_b1_ms"] > 0 and row["throughput"] > 0 and row["peak_memory_bytes"] > row["params"] * 4
    for name in ("baseline", "student"):
        inherited = metrics["details"][name]["inherited"]
        assert inherited["teacher_errors"] == metrics["teacher"]["errors"]
        assert metrics[name]["inherited_share"] == pytest.approx(inherited["inherited"] / inherited["teacher_errors"],
                                                                 abs=1e-6)
    expected = ((metrics["baseline"]["errors"] - metrics["student"]["errors"])
                / (metrics["baseline"]["errors"] - metrics["teacher"]["errors"]))
    assert metrics["gap_recovered"] == pytest.approx(expected, abs=1e-4)
    assert metrics["latency_b1_runs"] == 20 and metrics["throughput_batch_size"] == 64


def test_models_with_different_label_sets_are_refused():
    models = {"teacher": mlp(num_classes=5), "student": mlp(num_classes=4)}
    with pytest.raises(DistillError, match="different label sets.*teacher 5 classes.*student 4 classes"):
        evaluate_models(models, blobs(40), evaluation=EvaluationConfig(latency_runs=5))
    with pytest.raises(DistillError, match="labels run from 0 to 3 but the models predict 3 classes"):
        evaluate_models({"student": mlp(num_classes=3)}, blobs(40), evaluation=EvaluationConfig(latency_runs=5))


def test_empty_evaluation_split_is_refused():
    empty = ArrayDataset(torch.zeros(0, 12).numpy(), torch.zeros(0, dtype=torch.long).numpy())
    with pytest.raises(DistillError, match="evaluation split is empty"):
        evaluate_models(_models(), empty, evaluation=EvaluationConfig())


def test_pareto_front():
    from distill.evaluate.plots import pareto_front

    points = [("fast", 1.0, 0.90), ("best", 2.0, 0.95), ("dominated", 3.0, 0.93), ("tiny", 0.5, 0.50)]
    assert pareto_front(points) == ["fast", "best", "tiny"]
    assert pareto_front([("a", 1, 20.0), ("b", 2, 15.0), ("c", 3, 18.0)], lower_is_better=True) == ["a", "b"]


def test_report_takes_a_language_model_run_with_perplexity(tmp_path):
    """Another model kind slots in by its keys: rows with perplexity and no accuracy get a perplexity column and
    perplexity Pareto plots (lower is better), without a new table."""
    import json

    from distill.evaluate.html_report import build_report

    run = tmp_path / "lm"
    run.mkdir()
    rows = {"teacher": {"perplexity": 12.5, "params": 135_000_000, "size_bytes": 540_000_000, "latency_b1_ms": 30.0},
            "student": {"perplexity": 18.0, "params": 30_000_000, "size_bytes": 120_000_000, "latency_b1_ms": 9.0},
            "student_int8": {"perplexity": 18.4, "params": 30_000_000, "size_bytes": 40_000_000,
                             "latency_b1_ms": 12.0}}
    (run / "metrics.json").write_text(json.dumps({"models": list(rows), **rows, "data": {"name": "kjv-verses"},
                                                  "threads": 2, "task": "language-modeling", "test_tokens": 4096}))
    (run / "log.jsonl").write_text(json.dumps({"stage": "student", "step": 10, "loss": 2.0, "loss/kd": 1.5}) + "\n")
    result = build_report([run])
    saved = json.loads(result.json.read_text())
    assert "perplexity-vs-latency.png" in saved["figures"] and "curves.png" in saved["figures"]
    # int8 is slower here and worse: off the latency front; smallest: on the size front
    assert saved["pareto"]["latency"] == ["teacher", "distilled student"]
    assert saved["pareto"]["size"] == ["teacher", "distilled student", "distilled student, int8"]
    assert "| distilled student | 18.00 |" in result.markdown.read_text()
    # the notes describe what an LM run measured, not the classifier's batch-1 protocol it never ran
    assert "on 4096 held-out tokens" in result.markdown.read_text() and " of ? timed" not in result.markdown.read_text()


def test_a_student_below_its_baseline_is_said_with_the_shortfall(tmp_path, capsys):
    from distill.evaluate.report import baseline_warning, print_summary

    below = {"teacher": {"accuracy": 0.92}, "baseline": {"accuracy": 0.711}, "student": {"accuracy": 0.630}}
    warning = baseline_warning(below)
    assert warning is not None and "8.1 points below" in warning and "objective.temperature" in warning
    # within the tolerance (one point by default), above the baseline, or without a baseline: nothing to say
    assert baseline_warning({**below, "student": {"accuracy": 0.705}}) is None
    assert baseline_warning({**below, "student": {"accuracy": 0.75}}) is None
    assert baseline_warning({"teacher": {"accuracy": 0.9}, "student": {"accuracy": 0.5}}) is None
    assert baseline_warning({**below, "student": {"accuracy": 0.705}}, tolerance=0.001) is not None
    print_summary({**below, "gap_recovered": -0.39}, tmp_path)
    assert "8.1 points below" in " ".join(capsys.readouterr().out.split())


class _Sleepy(torch.nn.Module):
    """A model whose forward takes a set time, and that can be told to slow down from some call on (a load that
    starts half-way through the timing)."""

    def __init__(self, seconds, slow_from=None, slow_by=0.0, clock=None):
        super().__init__()
        self.seconds, self.slow_from, self.slow_by = seconds, slow_from, slow_by
        self.clock = clock if clock is not None else [0]
        self.head = torch.nn.Linear(12, 4)

    def forward(self, inputs):
        self.clock[0] += 1
        slow = self.slow_from is not None and self.clock[0] >= self.slow_from
        time.sleep(self.seconds + (self.slow_by if slow else 0.0))
        return self.head(inputs)


def test_interleaved_timing_keeps_the_ratio_when_the_load_changes_half_way():
    from distill.evaluate.speed import interleaved_latency_ms

    clock = [0]  # shared: the 'machine' slows every model down from the 40th forward on, whichever runs then
    models = {"teacher": _Sleepy(0.004, slow_from=40, slow_by=0.012, clock=clock),
              "student": _Sleepy(0.002, slow_from=40, slow_by=0.012, clock=clock)}
    figures, spread = interleaved_latency_ms(models, {"inputs": torch.randn(2, 12)}, runs=30, warmup=2)
    # both saw the slow half equally: the teacher stays the slower one, and the change shows as a spread
    assert figures["teacher"]["median"] > figures["student"]["median"]
    assert spread > 0.2 and figures["student"]["runs"] == 30 and figures["teacher"]["batch_size"] == 2
    steady, calm = interleaved_latency_ms({"teacher": _Sleepy(0.004), "student": _Sleepy(0.002)},
                                          {"inputs": torch.randn(2, 12)}, runs=20, warmup=1)
    assert 1.4 < steady["teacher"]["median"] / steady["student"]["median"] < 2.6 and calm < 0.2


def test_the_speed_line_says_slower_and_warns_about_noise():
    from distill.evaluate.speed import noise_warning, speed_phrase, speed_summary

    assert speed_phrase(1.94) == "1.9x faster" and speed_phrase(0.5) == "2.0x slower"
    lines = speed_summary({"speedup": 0.5, "compression": 1.9, "threads": 2, "latency_spread": 0.35})
    assert lines[0] == "student is 1.9x smaller and 2.0x slower than the teacher (2 threads)"
    assert "timings varied by 35% between rounds" in lines[1]
    assert noise_warning(0.1) is None and speed_summary({"latency_spread": 0.05}) == []


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_end_of_run_table_fits_the_terminal_without_cutting_cells(width):
    import io

    from rich.console import Console

    from distill.evaluate.report import summary_table

    row = {"errors": 284, "accuracy": 0.2111, "agreement": 0.2389, "gap_recovered": -0.1627,
           "inherited_share": 0.3659, "size_bytes": 38_707, "latency_b1_ms": 0.2115}
    metrics = {"recipe": "digits-quick", "test_size": 360, "seed": 0, "threads": 2,
               "models": ["teacher", "student_pruned_int8"], "teacher": {**row, "agreement": None},
               "student_pruned_int8": row}
    console = Console(width=width, file=io.StringIO())
    console.print(summary_table(metrics, width=width))
    lines = console.file.getvalue().splitlines()
    assert all(len(line) <= width for line in lines) and not any("…" in line for line in lines)
    assert "student_pruned_int8" in console.file.getvalue() and "284" in console.file.getvalue()
    shown = {"60": 3, "80": 6, "120": 7}[str(width)]
    assert sum(header in lines[2] for header in ("errors", "accuracy", "agrees", "gap rec.", "inherits", "size",
                                                  "ms@b1")) == shown
    assert ("more column" in lines[-1]) == (shown < 7)
