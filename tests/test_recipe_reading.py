"""Hostile recipes are refused as one paragraph naming the field, file or line (issue 14): duplicate keys, alias
bombs, absurd nesting and names, files that are not text, non-finite numbers, suggestions from the wrong section,
``--set`` of a spec's kind, and Python arguments of the wrong type."""

import math
import time
import typing

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ValidationError

from distill.cli import main
from distill.config import Recipe, TrainingConfig, load_recipe
from distill.config.loading import RecipeArgumentError, _members
from distill.errors import DistillError

GOOD = """\
name: tiny
data: {dataset: digits}
teacher: {model: {kind: mlp, hidden: [32]}, train: {epochs: 1}}
student: {model: {kind: mlp, hidden: [8]}}
objective: {temperature: 4, alpha: 0.5}
training:
  epochs: 1
  lr: 0.1
  batch_size: 32
"""
DATA = "data: {dataset: digits}\n"


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def error_of(recipe, overrides=None):
    with pytest.raises(DistillError) as caught:
        load_recipe(recipe, overrides)
    return str(caught.value)


# --------------------------------------------------------------------------------------------------- duplicate keys
def test_duplicate_key_names_key_section_and_both_lines(tmp_path):
    path = write(tmp_path, GOOD + "  lr: 0.2\n")
    assert error_of(path) == (f"duplicate key 'lr' in training at lines 8 and 10 of {path}: YAML would silently keep "
                              "only the last value; remove one of them")


def test_duplicate_section_at_top_level_and_nested_section(tmp_path):
    assert "duplicate key 'data' at the top level at lines 2 and 10" in error_of(write(tmp_path, GOOD + DATA))
    nested = GOOD.replace("hidden: [8]", "hidden: [8], hidden: [4]")
    assert "duplicate key 'hidden' in student.model at lines 4 and 4" in error_of(write(tmp_path, nested))


def test_duplicate_keys_compare_as_python_sees_them(tmp_path):
    # 1 and 0x1 are the same int key, so the second would replace the first
    text = GOOD.replace("student: {model: {kind: mlp, hidden: [8]}}",
                        "student: {model: {kind: hf-config, config: {1: a, 0x1: b}}}")
    assert "duplicate key '0x1' in student.model.config at lines 4 and 4" in error_of(write(tmp_path, text))


def test_duplicate_key_in_a_set_value():
    message = error_of("digits-quick", ["training={lr: 1, lr: 2}"])
    assert message == ("duplicate key 'lr' at the top level at lines 1 and 1 of --set training: YAML would silently "
                       "keep only the last value; remove one of them")


def test_merge_keys_overridden_in_place_are_not_duplicates(tmp_path):
    text = GOOD.replace("training:\n", "training:\n  <<: &short {epochs: 3, batch_size: 16}\n") + "evaluation: {}\n"
    recipe = load_recipe(write(tmp_path, text))
    assert (recipe.training.epochs, recipe.training.batch_size, recipe.training.lr) == (1, 32, 0.1)


# --------------------------------------------------------------------------------------------------- aliases
def test_a_few_anchors_still_work(tmp_path):
    text = """\
data: {dataset: digits}
teacher: {model: &net {kind: mlp, hidden: [16]}, train: &train {epochs: 2, batch_size: 16}}
student: {model: *net}
objective: {alpha: 0.5}
training: {<<: *train, lr: 0.05}
"""
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.student.model.hidden == [16] and recipe.teacher.train.epochs == 2
    assert (recipe.training.epochs, recipe.training.batch_size, recipe.training.lr) == (2, 16, 0.05)


def _billion_laughs() -> str:
    lines = [DATA.strip(), 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, 9):
        previous, name = chr(ord("a") + level - 1), chr(ord("a") + level)
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_quickly_without_expanding(tmp_path):
    path = write(tmp_path, _billion_laughs())
    started = time.perf_counter()
    message = error_of(path)
    assert time.perf_counter() - started < 1.0
    assert message == (f"recipe expands to more than 100,000 values in f (an alias bomb? each alias repeats its "
                       f"anchor's whole content); refused before expanding it (line 7 of {path})")


def test_too_many_aliases_are_refused(tmp_path):
    path = write(tmp_path, DATA + "x: &x 1\nlist: [" + ", ".join(["*x"] * 101) + "]\n")
    assert error_of(path) == (f"more than 100 YAML aliases (*x) in list.100; a recipe needs a few, and this many "
                              f"looks like an alias bomb, refused before expanding it (line 3 of {path})")


def test_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, DATA + "loop: &loop [1, *loop]\n")
    assert error_of(path) == (f"YAML alias *loop in loop.1 refers to the list or mapping that contains it; a "
                              f"recursive structure cannot be a recipe (line 2 of {path})")


# --------------------------------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("nested, where", [("[" * 10_000 + "]" * 10_000, "x.0.0.0.0"),
                                           ("{a: " * 10_000 + "1" + "}" * 10_000, "x.a.a.a.a"),
                                           ("\n" + "".join(" " * i + "- \n" for i in range(0, 400, 2)), "x.0.0.0")])
def test_absurd_nesting_is_refused_not_a_recursion_error(tmp_path, nested, where):
    message = error_of(write(tmp_path, DATA + "x: " + nested + "\n"))
    assert message.startswith(f"recipe nested more than 50 levels deep in {where}") and "recipe.yaml)" in message


def test_absurd_nesting_from_python_and_set_is_refused():
    deep: dict = {"leaf": 1}
    for _ in range(10_000):
        deep = {"a": deep}
    message = error_of({"data": {"dataset": "digits"}, "x": deep})
    assert message.startswith("invalid recipe (dict): nested more than 50 levels deep in 'x.a.a.a")
    message = error_of("digits-quick", ["x=" + "[" * 5000 + "]" * 5000])
    assert message.startswith("recipe nested more than 50 levels deep in 0.0.0") and "of --set x)" in message


def test_huge_key_in_yaml_is_refused_with_its_length(tmp_path):
    path = write(tmp_path, DATA + "k" * 100_000 + ": 1\n")
    assert error_of(path) == (f"YAML syntax error in {path} at line 2, column 100001: could not find expected ':' "
                              "(the key there is 100,000 characters long; recipe keys have at most 256)")
    path = write(tmp_path, "training:\n  " + "k" * 300 + ": 1\n" + DATA)
    assert error_of(path) == (f"key '{'k' * 40}...' in training is 300 characters long (at most 256) "
                              f"(line 2 of {path})")


def test_huge_key_from_set_or_python_is_refused():
    message = error_of("digits-quick", ["training." + "k" * 100_000 + "=1"])
    assert message.endswith(f"key '{'k' * 40}...' in training is 100,000 characters long (at most 256)")
    assert "100,000 characters" in error_of({"data": {"dataset": "digits"}, "k" * 100_000: 1})


@pytest.mark.parametrize("name, problem", [("n" * 5000, "name is 5,000 bytes long ('nnnnnnnnnn"),
                                           ("é" * 101, "name is 202 bytes long"),
                                           ("..", "name '..' cannot name the run directory"),
                                           ("", "name '' cannot name the run directory"),
                                           ("a\tb", "name 'a\\tb' cannot name the run directory")])
def test_names_that_cannot_be_a_directory_are_refused(name, problem):
    message = error_of({"name": name, "data": {"dataset": "digits"}})
    assert message.startswith(f"invalid recipe (dict): {problem}")


def test_long_name_from_set_and_long_recipe_argument():
    assert "name is 5,000 bytes long" in error_of("digits-quick", ["name=" + "n" * 5000])
    # a path no file system takes is "not found", not an OSError (ENAMETOOLONG)
    message = error_of("r" * 5000)
    assert message.startswith(f"recipe file '{'r' * 79}... not found, and it is not a built-in recipe.")


def test_binary_file_is_named(tmp_path):
    path = write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "model.png")
    assert error_of(path) == (f"recipe {path} is a binary file (it holds NUL bytes), not YAML text: is it the right "
                              "file?")


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = write(tmp_path, "name: caf\xe9\n".encode("latin-1") + DATA.encode())
    assert error_of(path) == (f"recipe {path} is not UTF-8 text (byte 0xe9 at offset 9): save it as UTF-8, or check "
                              "that it is the recipe")


def test_control_character_and_oversized_file(tmp_path):
    path = write(tmp_path, "name: a\x07b\n" + DATA)
    assert error_of(path) == (f"{path} holds the character 0x7 at offset 7, which YAML does not allow: is it a text "
                              "file?")
    path = write(tmp_path, DATA + "# " + "x" * 1_000_000 + "\n")
    assert error_of(path) == (f"recipe {path} is 1,000,027 bytes; a recipe is a small YAML file of settings (at most "
                              "1,000,000 bytes): is it the right file?")


def test_utf8_with_byte_order_mark_is_read(tmp_path):
    assert load_recipe(write(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())).name == "tiny"


# --------------------------------------------------------------------------------------------------- finite numbers
@pytest.mark.parametrize("override, field", [
    ("training.lr=.nan", "training.lr is nan"), ("training.epochs=.inf", "training.epochs is inf"),
    ("objective.temperature=-.inf", "objective.temperature is -inf"),
    ("data.val_size=.nan", "data.val_size is nan"),
    ("objective={terms: [{loss: soft_kl, weight: .inf}]}", "objective.terms.0.weight is inf"),
    ("objective={terms: [{loss: crd, options: {margin: .nan}}]}", "objective.terms.0.options.margin is nan"),
    ("student.model={kind: hf-config, config: {rope_theta: .inf}}", "student.model.config.rope_theta is inf"),
])
def test_non_finite_numbers_are_refused_with_the_field(override, field):
    assert error_of("digits-quick", [override]).endswith(
        f"digits-quick.yaml: {field}; every number in a recipe must be finite (inf and nan are refused)")


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity"])
def test_non_finite_numbers_written_as_text_are_refused(text):
    # YAML reads these as strings, which pydantic would turn into floats
    assert error_of("digits-quick", [f"training.lr={text}"]).endswith(
        f"training.lr: Input should be a finite number (got {text!r})")


def test_non_finite_numbers_in_multi_teacher_weights():
    message = error_of("mnist1d-multi-teacher", ["mode.combine=fixed", "mode.weights=[1, .nan]"])
    assert message.endswith("mode.weights.1 is nan; every number in a recipe must be finite (inf and nan are refused)")


def _float_fields(model: type[BaseModel], seen: set) -> list[tuple[type[BaseModel], str, typing.Any]]:
    """(model, field, a value typed by it holding nan) for every float field reachable from ``model``."""
    if model in seen:
        return []
    seen.add(model)
    found = []
    for name, field in model.model_fields.items():
        for member in _members(field.annotation):
            inner = typing.get_args(member)[0] if typing.get_origin(member) is list else None
            if member is float or _members(inner) == [float]:
                found.append((model, name, math.nan if member is float else [math.nan]))
            for candidate in [member, *(typing.get_args(member))]:
                for option in _members(candidate):
                    if isinstance(option, type) and issubclass(option, BaseModel):
                        found.extend(_float_fields(option, seen))
    return found


FLOAT_FIELDS = _float_fields(Recipe, set())


def test_every_float_field_is_found():
    names = {f"{model.__name__}.{name}" for model, name, _ in FLOAT_FIELDS}
    assert {"TrainingConfig.lr", "TrainingConfig.epochs", "MultiTeacherMode.weights", "DataConfig.val_size",
            "TermConfig.weight", "DataFreeMode.generator_lr"} <= names and len(names) >= 25


@pytest.mark.parametrize("model, name, value", FLOAT_FIELDS, ids=lambda item: getattr(item, "__name__", str(item)))
def test_every_float_field_refuses_nan_from_python(model, name, value):
    with pytest.raises(ValidationError) as caught:
        model.model_validate({name: value})
    assert any(error["type"] == "finite_number" and error["loc"][0] == name for error in caught.value.errors())


def test_assignment_is_checked_too():
    training = TrainingConfig()
    with pytest.raises(ValidationError, match="finite number"):
        training.lr = math.inf


# --------------------------------------------------------------------------------------------------- suggestions
@pytest.mark.parametrize("override, expected", [
    ("data.momentum=1", "unknown key 'data.momentum'"),         # not "did you mean 'momentum'" (training's)
    ("data.datset=mnist", "unknown key 'data.datset'; did you mean 'dataset'?"),
    ("teacher.model.hiden=[3]", "unknown key 'teacher.model.hiden'; did you mean 'hidden'?"),
    ("teacher.model.chanels=[3]", "unknown key 'teacher.model.chanels'"),   # an MLP has no channels
    ("training.augment.shfit=1", "unknown key 'training.augment.shfit'; did you mean 'shift'?"),
    ("seeed=1", "unknown key 'seeed'; did you mean 'seed'?"),
])
def test_suggestions_come_from_the_same_section(override, expected):
    assert error_of("digits-quick", [override]).endswith(f"digits-quick.yaml: {expected}")


def test_suggestions_inside_union_members_and_lists():
    message = error_of("mnist1d-mutual", ["mode.peers=[{kind: mlp, hiddn: [4]}, {kind: cnn, chanels: [2]}]"])
    assert message.endswith("unknown key 'mode.peers.0.hiddn'; did you mean 'hidden'?; "
                            "unknown key 'mode.peers.1.chanels'; did you mean 'channels'?")
    message = error_of("digits-quick", ["objective={terms: [{loss: soft_kl, wieght: 2}]}"])
    assert message.endswith("unknown key 'objective.terms.0.wieght'; did you mean 'weight'?")


def test_union_member_labels_are_not_shown_in_locations():
    message = error_of("digits-quick", ["data.features=[1]"])
    assert message.endswith("data.features: Input should be a valid string (got [1]); data.features.0: Input should "
                            "be a valid string (got 1)")


def test_long_values_are_cut_in_messages():
    message = error_of("digits-quick", ["training.batch_size=" + "x" * 1000])
    assert message.endswith(f"training.batch_size: Input should be a valid integer, unable to parse string as an "
                            f"integer (got '{'x' * 79}...)")


# --------------------------------------------------------------------------------------------------- --set of a kind
def test_set_kind_replaces_the_spec_and_reports_its_missing_fields():
    message = error_of("digits-quick", ["teacher.model.kind=saved"])
    assert message.endswith("digits-quick.yaml: teacher.model.path: Field required")


@pytest.mark.parametrize("overrides", [["teacher.model.kind=saved", "teacher.model.path=runs/x/teacher"],
                                       ["teacher.model.path=runs/x/teacher", "teacher.model.kind=saved"]])
def test_set_kind_with_its_fields_in_either_order(overrides):
    model = load_recipe("digits-quick", overrides).teacher.model
    assert model.model_dump() == {"kind": "saved", "path": "runs/x/teacher"}


def test_set_kind_keeps_fields_set_for_the_old_kind_in_the_same_call():
    # the user asked for both: the earlier field is applied to the new kind, and refused there
    message = error_of("digits-quick", ["teacher.model.dropout=0.5", "teacher.model.kind=saved"])
    assert message.endswith("teacher.model.path: Field required; unknown key 'teacher.model.dropout'")


def test_set_the_same_kind_keeps_the_spec():
    recipe = load_recipe("digits-quick", ["teacher.model.kind=mlp"])
    assert recipe.teacher.model == load_recipe("digits-quick").teacher.model


def test_set_mode_kind_and_nested_kinds_replace_their_spec():
    assert error_of("mnist1d-multi-teacher", ["mode.kind=mutual"]).endswith("mode.peers: Field required")
    recipe = load_recipe("mnist1d-multi-teacher", ["mode.teachers.0.model.kind=saved",
                                                   "mode.teachers.0.model.path=runs/a/teacher"])
    assert recipe.mode.teachers[0].model.model_dump() == {"kind": "saved", "path": "runs/a/teacher"}
    assert recipe.mode.teachers[1] == load_recipe("mnist1d-multi-teacher").mode.teachers[1]


def test_set_changes_only_the_named_copy_of_an_aliased_section(tmp_path):
    text = GOOD.replace("teacher: {model: {kind: mlp, hidden: [32]}", "teacher: {model: &net {kind: mlp, hidden: "
                        "[32]}").replace("student: {model: {kind: mlp, hidden: [8]}}", "student: {model: *net}")
    recipe = load_recipe(write(tmp_path, text), ["teacher.model.kind=saved", "teacher.model.path=t"])
    assert recipe.teacher.model.kind == "saved" and recipe.student.model.hidden == [32]


def test_set_list_items_by_index():
    recipe = load_recipe("mnist1d-multi-teacher", ["mode.teachers.1.name=second"])
    assert recipe.mode.teachers[1].name == "second"
    assert error_of("mnist1d-multi-teacher", ["mode.teachers.5.name=x"]) == (
        "--set mode.teachers.5.name: mode.teachers.5 is not an item of a list of 2 (give an index from 0 to 1)")
    assert error_of("digits-quick", ["training.lr.x=1"]) == (
        "--set training.lr.x: training.lr is 0.003, not a section of the recipe")


# --------------------------------------------------------------------------------------------------- Python types
def test_overrides_as_a_string_names_the_argument():
    with pytest.raises(RecipeArgumentError) as caught:
        load_recipe("digits-quick", overrides="training.lr=1")
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, DistillError)
    assert str(caught.value) == ("overrides must be a list of 'key=value' strings, got str 'training.lr=1' (write "
                                 "overrides=['training.lr=1'])")
    with pytest.raises(TypeError, match=r"^overrides must be 'key=value' strings, got int 3$"):
        load_recipe("digits-quick", ["seed=1", 3])
    assert load_recipe("digits-quick", ("seed=5",)).seed == 5


@pytest.mark.parametrize("recipe, shown", [(["a"], "list ['a']"), (42, "int 42"),
                                           (b"digits-quick", "bytes b'digits-quick'"), (None, "NoneType None")])
def test_a_recipe_of_the_wrong_type_names_the_argument(recipe, shown):
    with pytest.raises(TypeError) as caught:
        load_recipe(recipe)
    assert str(caught.value) == ("recipe must be a recipe file path, a built-in recipe name, a dict or a Recipe; got "
                                 f"{shown}")


@pytest.mark.parametrize("item", ["training..lr=1", "=1", ".lr=1", "training.=1", " . =1"])
def test_set_keys_with_empty_parts_are_refused(item):
    message = error_of("digits-quick", [item])
    assert message.startswith(f"--set {item!r}: the key ") and message.endswith(
        "has an empty part; give a dotted path of recipe keys, e.g. --set training.lr=0.01")


def test_cli_set_with_empty_key_part_is_one_line_exit_2():
    result = CliRunner().invoke(main, ["check", "digits-quick", "--set", "training..lr=1"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip() == ("error: --set 'training..lr=1': the key 'training..lr' has an empty part; give a "
                                     "dotted path of recipe keys, e.g. --set training.lr=0.01")


@pytest.mark.parametrize("value", [2 ** 63, -(2 ** 63), 10 ** 30])
def test_integers_beyond_int64_are_refused(value):
    assert error_of("digits-quick", [f"training.batch_size={value}"]).endswith(
        f"training.batch_size is {value}, larger than any setting can take (at most 2**63 - 1 = "
        "9,223,372,036,854,775,807)")
    assert load_recipe("digits-quick", [f"seed={2 ** 63 - 1}"]).seed == 2 ** 63 - 1
