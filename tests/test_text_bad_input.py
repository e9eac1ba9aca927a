"""Bad labelled-text input, through the CLI: each case exits non-zero with one paragraph naming the column, file
or field (no traceback), before any model is trained or written."""

import csv

import pytest
import yaml
from click.testing import CliRunner

from distill.cli import main
from text_helpers import tiny_bert_classifier, topic_rows, write_csv


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return tiny_bert_classifier(tmp_path_factory.mktemp("bert") / "teacher", positions=32)


def _rows(count=60, seed=0):
    return topic_rows(count, seed)


def _write(path, rows, fields=None):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _fail(tmp_path, teacher, data, **sections):
    recipe = {"name": "bad", "data": {"max_length": 16, **data},
              "teacher": {"model": {"kind": "hf", "name_or_path": str(teacher)}, "train": {"max_steps": 1}},
              "student": {"from_teacher": {"keep": 1}}, "objective": {"alpha": 0.5},
              "training": {"max_steps": 1, "batch_size": 8}, **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["train", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    run = tmp_path / "run"
    written = sorted(p.name for p in run.rglob("*") if p.is_file()) if run.exists() else []
    assert set(written) <= {"recipe.yaml", "log.jsonl"}, written  # no model, checkpoint or metrics
    return " ".join(result.output.split())


def test_a_missing_text_column_lists_the_columns_there_are(tmp_path, teacher):
    path = write_csv(tmp_path / "t.csv", _rows())
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "review", "label": "topic"})
    assert "Column 'review' is not in" in output and "available columns: sentence, topic" in output


def test_a_missing_label_column_lists_the_columns_there_are(tmp_path, teacher):
    path = write_csv(tmp_path / "t.csv", _rows())
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "sentence", "label": "rating"})
    assert "Column 'rating' is not in" in output and "sentence, topic" in output


def test_an_empty_text_names_its_row(tmp_path, teacher):
    rows = _rows()
    rows[2]["sentence"] = "   "
    path = write_csv(tmp_path / "t.csv", rows)
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "sentence", "label": "topic"})
    assert "empty 'sentence'" in output and "data row 3" in output and str(path) in output


def test_a_test_label_never_seen_in_training_is_refused(tmp_path, teacher):
    train = write_csv(tmp_path / "train.csv", [row for row in _rows() if row["topic"] != "tool"])
    test = write_csv(tmp_path / "test.csv", _rows(20, 1))
    output = _fail(tmp_path, teacher, {"path": str(train), "test_path": str(test), "text": "sentence",
                                       "label": "topic"})
    assert "'tool'" in output and "never in the training data" in output and "test.csv" in output


def test_a_label_column_with_one_class_is_refused(tmp_path, teacher):
    rows = [{**row, "topic": "food"} for row in _rows()]
    path = write_csv(tmp_path / "t.csv", rows)
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "sentence", "label": "topic"})
    assert "single class (only 'food')" in output and "'topic'" in output


def test_a_numeric_column_given_as_text_says_to_use_features(tmp_path, teacher):
    rows = [{**row, "score": str(index)} for index, row in enumerate(_rows())]
    path = write_csv(tmp_path / "t.csv", rows)
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "score", "label": "topic"})
    assert "Text column 'score'" in output and "not text" in output and "data.features" in output


def test_a_text_column_given_as_features_says_to_use_text(tmp_path, teacher):
    path = write_csv(tmp_path / "t.csv", _rows())
    recipe = {"name": "bad", "data": {"path": str(path), "features": ["sentence"], "label": "topic"},
              "teacher": {"model": {"kind": "mlp"}, "train": {"max_steps": 1}}, "student": {"model": {"kind": "mlp"}},
              "objective": {"alpha": 0.5}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["train", str(tmp_path / "r.yaml"), "--output", str(tmp_path / "run")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "text goes in data.text, not data.features" in " ".join(result.output.split())


def test_a_pair_with_one_side_missing_names_both_columns(tmp_path, teacher):
    rows = [{"premise": row["sentence"], "hypothesis": "a cat", "label": row["topic"]} for row in _rows()]
    rows[5]["hypothesis"] = ""
    path = _write(tmp_path / "pairs.csv", rows)
    output = _fail(tmp_path, teacher, {"path": str(path), "text": ["premise", "hypothesis"], "label": "label"})
    assert "empty 'hypothesis'" in output and "data row 6" in output
    assert "needs both 'premise' and 'hypothesis'" in output


def test_max_length_beyond_the_models_positions_is_refused(tmp_path, teacher):
    path = write_csv(tmp_path / "t.csv", _rows())
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "sentence", "label": "topic", "max_length": 128})
    assert "data.max_length is 128" in output and "only 32 positions" in output


def test_features_and_text_together_are_refused_by_the_recipe_check(tmp_path, teacher):
    path = write_csv(tmp_path / "t.csv", _rows())
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "sentence", "features": ["x"], "label": "topic"})
    assert "data.features" in output and "data.text" in output and "not both" in output


def test_a_teacher_tokenizer_that_is_not_the_models_own_is_refused(tmp_path, teacher):
    from text_helpers import word_tokenizer

    big = word_tokenizer(tmp_path / "big", [f"w{index}" for index in range(100)])
    path = write_csv(tmp_path / "t.csv", _rows())
    output = _fail(tmp_path, teacher, {"path": str(path), "text": "sentence", "label": "topic",
                                       "tokenizer": str(tmp_path / "big")})
    assert f"has {len(big)} tokens" in output and "embedding table has" in output
