"""Bad recipes fail early, as one readable paragraph naming the field."""

import textwrap

import pytest
from click.testing import CliRunner

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError

GOOD = """
name: tiny
data: {dataset: digits}
teacher: {model: {kind: mlp, hidden: [32]}, train: {epochs: 1}}
student: {model: {kind: mlp, hidden: [8]}}
objective: {temperature: 4, alpha: 0.5}
training: {epochs: 1, batch_size: 32}
"""


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path, text=GOOD, overrides=None):
    with pytest.raises(DistillError) as caught:
        load_recipe(write(tmp_path, text), overrides)
    return str(caught.value)


def test_good_recipe_expands_alpha_into_named_terms(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD))
    terms = {term.display_name: (term.loss, term.weight) for term in recipe.objective.terms}
    assert terms == {"soft": ("soft_kl", 0.5), "hard": ("cross_entropy", 0.5)}
    assert recipe.needs_teacher()


def test_overrides_are_typed_and_nested(tmp_path):
    recipe = load_recipe(write(tmp_path, GOOD), ["training.lr=0.25", "student.model.hidden=[4, 4]", "seed=7"])
    assert recipe.training.lr == 0.25 and recipe.student.model.hidden == [4, 4] and recipe.seed == 7


def test_missing_recipe_file_names_it_and_suggests_builtin():
    with pytest.raises(DistillError, match=r"'hinton-mnst'.*not found.*'hinton-mnist'"):
        load_recipe("hinton-mnst")


def test_yaml_syntax_error_gives_line(tmp_path):
    message = error_of(tmp_path, "name: x\ndata: {dataset: digits\nteacher: 3\n")
    assert "YAML syntax error" in message and "line 3" in message


def test_unknown_key_suggests_closest(tmp_path):
    message = error_of(tmp_path, GOOD.replace("batch_size: 32", "batchsize: 32"))
    assert "unknown key 'training.batchsize'" in message and "did you mean 'batch_size'" in message


def test_wrong_type_names_field(tmp_path):
    message = error_of(tmp_path, GOOD.replace("epochs: 1, batch_size", "epochs: 1, batch_size: many, x"))
    assert "training.batch_size" in message and "'many'" in message and "unknown key 'training.x'" in message


def test_wrong_type_value(tmp_path):
    message = error_of(tmp_path, overrides=["training.batch_size=lots"])
    assert "training.batch_size" in message and "lots" in message


@pytest.mark.parametrize("value", ["0", "-1"])
def test_temperature_must_be_positive(tmp_path, value):
    message = error_of(tmp_path, overrides=[f"objective.temperature={value}"])
    assert "objective.temperature" in message and "greater than 0" in message


@pytest.mark.parametrize("value", ["1.5", "-0.1"])
def test_alpha_must_be_in_unit_interval(tmp_path, value):
    message = error_of(tmp_path, overrides=[f"objective.alpha={value}"])
    assert "objective.alpha" in message


def test_unknown_loss_and_option_and_negative_weight(tmp_path):
    terms = "objective: {terms: [{loss: soft_kll}]}"
    assert "Did you mean 'soft_kl'" in error_of(tmp_path,
                                                GOOD.replace("objective: {temperature: 4, alpha: 0.5}", terms))
    terms = "objective: {terms: [{loss: soft_kl, options: {temprature: 2}}]}"
    message = error_of(tmp_path, GOOD.replace("objective: {temperature: 4, alpha: 0.5}", terms))
    assert "no option 'temprature'" in message
    terms = "objective: {terms: [{loss: soft_kl, weight: -1}]}"
    assert "weight" in error_of(tmp_path, GOOD.replace("objective: {temperature: 4, alpha: 0.5}", terms))


def test_cli_prints_one_paragraph_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_lists_builtin_recipes():
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 0
    assert "hinton-mnist" in result.output and "digits-quick" in result.output
