"""A run with compression, re-evaluated from disk with `distill eval`, whole and interrupted."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

import distill
from distill.cli import main
from distill.compress import make_pruning_permanent, prune_magnitude, weight_sparsity
from distill.data import ArrayDataset, load_builtin
from distill.evaluate.metrics import predict_logits
from distill.models import load_saved
from distill.quantized import quantize_int8
from helpers import mlp

QUICK = ["teacher.train.epochs=3", "training.epochs=2", "evaluation.latency_runs=5", "evaluation.latency_b1_runs=20",
         "compress.quantize=int8", "compress.prune=0.5", "compress.finetune_steps=20"]


@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "digits"
    return distill.train("digits-quick", output=run_dir, overrides=QUICK, show_progress=False)


def _test_set():
    splits = load_builtin("digits")
    return ArrayDataset(splits.test_x, splits.test_y)


def test_compressed_variants_are_exported_and_evaluated(compressed_run):
    metrics = compressed_run.metrics
    assert metrics["models"] == ["teacher", "baseline", "student", "student_int8", "student_pruned",
                                 "student_pruned_int8"]
    run_dir = compressed_run.run_dir
    # int8 on disk: one byte per weight instead of four, for 64x16 + 16x10 weights (biases, scales and the
    # safetensors header take the rest of these tiny files)
    assert metrics["student_int8"]["params"] == metrics["student"]["params"] == 64 * 16 + 16 + 16 * 10 + 10
    saved = metrics["student"]["size_bytes"] - metrics["student_int8"]["size_bytes"]
    assert 3 * (64 * 16 + 16 * 10) * 0.75 < saved <= 3 * (64 * 16 + 16 * 10)
    assert compressed_run.metrics["compression_variants"]["student_pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    pruned = load_saved(run_dir / "student_pruned")
    assert weight_sparsity(pruned) == pytest.approx(0.5, abs=1e-3)  # the fine-tune kept the pruned weights at zero
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert max(line["step"] for line in log if line["stage"] == "student_pruned") == 20
    # the exported int8 student reloads to exactly the predictions evaluated in the run
    test = _test_set()
    reloaded, labels = predict_logits(load_saved(run_dir / "student_int8"), test)
    assert int((reloaded.argmax(-1) != labels).sum()) == metrics["student_int8"]["errors"]
    for name in ("student_int8", "student_pruned", "student_pruned_int8"):
        assert metrics[name]["gap_recovered"] is None or isinstance(metrics[name]["gap_recovered"], float)
        assert 0 <= metrics[name]["inherited_share"] <= 1


def test_int8_quantization_is_close_to_float():
    model = mlp(hidden=64)
    inputs = torch.randn(256, 12)
    quantized = quantize_int8(model)
    assert quantized(inputs).shape == model(inputs).shape
    # int8 weights with per-tensor scales: small, nonzero differences
    difference = (quantized(inputs) - model(inputs)).abs().max().item()
    assert 0 < difference < 0.05
    assert (quantized(inputs).argmax(-1) == model(inputs).argmax(-1)).float().mean() > 0.95


def test_global_magnitude_pruning_removes_the_smallest_weights():
    model = mlp(hidden=64)
    weights = torch.cat([model[0].weight.detach().abs().flatten(), model[2].weight.detach().abs().flatten()])
    threshold = weights.sort().values[int(0.7 * len(weights)) - 1]
    make_pruning_permanent(prune_magnitude(model, 0.7))
    assert weight_sparsity(model) == pytest.approx(0.7, abs=1 / len(weights))
    kept = torch.cat([model[0].weight.detach().abs().flatten(), model[2].weight.detach().abs().flatten()])
    assert kept[kept > 0].min() >= threshold
    assert "weight_orig" not in dict(model[0].named_parameters())


def test_eval_cli_reproduces_the_runs_numbers(compressed_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(compressed_run.run_dir, copy)
    result = CliRunner().invoke(main, ["eval", str(copy), "--quiet"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((copy / "metrics.json").read_text())
    for name in compressed_run.metrics["models"]:
        assert metrics[name]["errors"] == compressed_run.metrics[name]["errors"], name
    assert metrics["complete"] and metrics["missing"] == []
    assert metrics["stages"] == compressed_run.metrics["stages"]  # run facts kept


def test_eval_of_an_interrupted_run_reports_what_exists(compressed_run, tmp_path):
    # the state a kill during the student stage leaves: teacher and baseline done, student only checkpointed
    run_dir = tmp_path / "interrupted"
    shutil.copytree(compressed_run.run_dir, run_dir)
    for name in ("student", "student_int8", "student_pruned", "student_pruned_int8", "metrics.json",
                 "checkpoints/student_pruned"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "student_int8: missing: not written" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] is False
    assert set(metrics["missing"]) == {"student_int8", "student_pruned", "student_pruned_int8"}
    assert metrics["status"]["student"].startswith("checkpoint step 78 of 78")
    # the last checkpoint is the finished student: same predictions as the exported one had
    assert metrics["student"]["errors"] == compressed_run.metrics["student"]["errors"]
    assert metrics["teacher"]["errors"] == compressed_run.metrics["teacher"]["errors"]

    # the report of an interrupted run evaluates it first (no metrics.json yet) and says what is missing
    (run_dir / "metrics.json").unlink()
    result = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    notes = json.loads((tmp_path / "report" / "report.json").read_text())["notes"]
    assert "interrupted: student checkpoint step 78 of 78 (stage unfinished)" in notes
    assert "interrupted: student_int8 missing: not written (the run stopped before compression)" in notes
    assert "student_int8 missing" in (tmp_path / "report" / "report.html").read_text()

    shutil.rmtree(run_dir / "checkpoints")
    for name in ("teacher", "baseline"):
        shutil.rmtree(run_dir / name)
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--quiet"])
    assert result.exit_code == 2 and "holds no model to evaluate yet" in result.output
    assert "student missing: the stage never started" in result.output


def test_eval_of_a_directory_that_is_no_run(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "no recipe.yaml" in result.output


# ------------------------------------------------------------------------------------------ distill report
def _browser():
    return next((found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))),
                None)


@pytest.fixture(scope="module")
def report(compressed_run, tmp_path_factory):
    output = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, ["report", str(compressed_run.run_dir), "--output", str(output)])
    assert result.exit_code == 0, result.output
    return output


def test_report_files_and_figures(report, compressed_run):
    import base64
    import io
    import re

    from PIL import Image

    saved = json.loads((report / "report.json").read_text())
    assert [row["model"] for row in saved["rows"]][:3] == ["teacher", "baseline student", "distilled student"]
    assert set(saved["figures"]) == {"curves.png", "accuracy-vs-latency.png", "accuracy-vs-size.png", "reliability.png",
                                     "confusion.png", "inherited-errors.png"}
    # the Pareto front is computed: no model off the front is both smaller and more accurate than one on it
    rows = {row["model"]: row for row in saved["rows"]}
    for name in saved["pareto"]["size"]:
        assert not any(other["size_bytes"] < rows[name]["size_bytes"] and other["accuracy"] > rows[name]["accuracy"]
                       for other in rows.values())
    page = (report / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 6 and "<img" in page and 'src="http' not in page  # self-contained
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).size[0] > 300
    markdown = (report / "report.md").read_text()
    errors = compressed_run.metrics["student_int8"]["errors"]
    assert f"| distilled student, int8 | {errors} |" in markdown and "![confusion](confusion.png)" in markdown


def test_report_renders_in_headless_chromium(report, compressed_run, tmp_path):
    import subprocess
    from html.parser import HTMLParser

    browser = _browser()
    if browser is None:
        pytest.skip("no chromium binary on PATH (CI installs Debian's `chromium`; apt-get install -y chromium)")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                          "--dump-dom", (report / "report.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=120).stdout

    class TableReader(HTMLParser):
        def __init__(self):
            super().__init__()
            self.inside, self.rows, self.cell = False, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table" and dict(attrs).get("id") == "comparison":
                self.inside = True
            elif self.inside and tag == "tr":
                self.rows.append([])
            elif self.inside and tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag == "table":
                self.inside = False
            elif self.inside and tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    reader = TableReader()
    reader.feed(dom)
    header, *rows = reader.rows
    assert header[:3] == ["model", "errors", "accuracy"]
    assert [row[0] for row in rows] == ["teacher", "baseline student", "distilled student", "distilled student, int8",
                                        "distilled student, pruned + fine-tuned", "distilled student, pruned + int8"]
    assert rows[2][1] == f"{compressed_run.metrics['student']['errors']:,}"
    assert dom.count("data:image/png;base64,") == 6


def test_report_refuses_runs_with_different_label_sets(compressed_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(compressed_run.run_dir, other)
    metrics = json.loads((other / "metrics.json").read_text())
    metrics["num_classes"], metrics["data"]["name"] = 3, "iris"
    (other / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(main, ["report", str(compressed_run.run_dir), str(other), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "different datasets or label sets" in result.output
    assert "iris with 3 classes" in result.output


def test_report_of_several_runs_prefixes_rows(compressed_run, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(compressed_run.run_dir, second)
    result = CliRunner().invoke(main, ["report", str(compressed_run.run_dir), str(second), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    rows = [row["model"] for row in json.loads((tmp_path / "r" / "report.json").read_text())["rows"]]
    assert len(rows) == 12 and rows[0] == "digits: teacher" and rows[6] == "second: teacher"


def test_compress_section_is_validated():
    from distill.config import load_recipe
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="compress: compress needs quantize: int8 and/or prune"):
        load_recipe("digits-quick", ["compress.finetune_steps=0"])
    with pytest.raises(DistillError, match="finetune_steps fine-tunes a pruned student"):
        load_recipe("digits-quick", ["compress.quantize=int8", "compress.finetune_steps=10"])
    with pytest.raises(DistillError, match="compress.prune"):
        load_recipe("digits-quick", ["compress.prune=1.5"])
    with pytest.raises(DistillError, match="compress.quantize"):
        load_recipe("digits-quick", ["compress.quantize=int4"])


def test_eval_refuses_a_run_whose_data_came_from_python(tmp_path):
    from distill.run import RunData
    from helpers import blobs

    everything = blobs(160)
    data = RunData(train=ArrayDataset(everything.inputs[:128].numpy(), everything.labels[:128].numpy()), val=None,
                   test=ArrayDataset(everything.inputs[128:].numpy(), everything.labels[128:].numpy()),
                   input_shape=(12,), num_classes=4)
    recipe = {"name": "py", "data": {"dataset": "digits"}, "teacher": {}, "student": {},
              "objective": {"alpha": 0.5}, "training": {"epochs": 1, "batch_size": 32},
              "evaluation": {"latency_runs": 5, "latency_b1_runs": 20}}
    distill.train(recipe, output=tmp_path / "py", teacher=mlp(seed=1), student=mlp(), data=data, show_progress=False)
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "py")])
    assert result.exit_code == 2 and "data passed from Python" in result.output


def test_resume_accepts_changed_evaluation_settings(compressed_run):
    again = distill.train("digits-quick", output=compressed_run.run_dir,
                          overrides=[*QUICK, "evaluation.calibration_bins=10"], resume=True, show_progress=False)
    assert again.metrics["details"]["student"]["reliability"]["bins"] == 10
    assert again.metrics["student"]["errors"] == compressed_run.metrics["student"]["errors"]


@pytest.mark.parametrize("finished", [True, False])
def test_eval_refuses_a_regime_run_rather_than_dropping_its_combined_models(tmp_path, finished):
    from distill.config import load_recipe

    run_dir = tmp_path / "mutual"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text(load_recipe("mnist1d-mutual").to_yaml())
    original = json.dumps({"student": {"accuracy": 0.9}, "peer-1": {"accuracy": 0.8}})
    if finished:
        (run_dir / "metrics.json").write_text(original)
    result = CliRunner().invoke(main, ["eval", str(run_dir)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "mode: mutual" in result.output
    assert ("`distill report` reads it" if finished else "--resume") in result.output
    if finished:
        assert (run_dir / "metrics.json").read_text() == original  # untouched


def test_compress_on_a_language_model_run_is_refused_before_training():
    from distill.config import load_recipe
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="compress: int8 quantization and pruning are implemented for classifier"):
        load_recipe("llm-tiny", ["compress.quantize=int8"])


def test_language_model_evaluation_of_an_empty_split_is_refused():
    from distill.config import EvaluationConfig
    from distill.errors import DistillError
    from distill.evaluate.lm import evaluate_language_models

    with pytest.raises(DistillError, match="test split is empty"):
        evaluate_language_models({"student": torch.nn.Linear(2, 2)}, [], evaluation=EvaluationConfig())
