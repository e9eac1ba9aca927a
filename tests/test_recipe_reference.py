"""The recipe reference is generated from the schema: docs/recipes.md stays in step with src/distill/config.py,
every field says what it does, and `distill check RECIPE --explain` shows a recipe's own values."""

from pathlib import Path
from typing import get_args

from click.testing import CliRunner

from distill import config
from distill.cli import main
from distill.recipe_reference import REGENERATE, render_markdown, render_text
from distill.recipe_schema import all_models, walk

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def row_cells(markdown, path):
    """The table row of one dotted field path, split into its cells."""
    start = f"| `{path}` |"
    found = [line for line in markdown.splitlines() if line.startswith(start)]
    assert len(found) == 1, f"expected one row for {path}, found {len(found)}"
    return [cell.strip() for cell in found[0].strip("|").split(" | ")]


def test_docs_recipes_md_is_up_to_date():
    current = DOCS.read_text() if DOCS.is_file() else ""
    assert current == render_markdown(), (
        f"docs/recipes.md is out of date with the schema in src/distill/config.py; regenerate it with:  {REGENERATE}")


def test_every_field_of_every_model_has_a_description():
    missing = [f"{model.__name__}.{name}" for model in all_models()
               for name, info in model.model_fields.items() if not (info.description or "").strip()]
    assert not missing, f"fields without Field(description=...) in src/distill/config.py: {', '.join(missing)}"


def test_every_model_has_a_docstring_and_a_section():
    undocumented = [model.__name__ for model in all_models() if not (model.__dict__.get("__doc__") or "").strip()]
    assert not undocumented, f"models without a docstring in src/distill/config.py: {', '.join(undocumented)}"
    reached = {section.model for section in walk().sections}
    orphans = [model.__name__ for model in all_models() if model not in reached]
    assert not orphans, f"models the reference never reaches from Recipe: {', '.join(orphans)}"


def test_rows_show_dotted_paths_types_defaults_and_constraints():
    markdown = render_markdown()
    assert row_cells(markdown, "training.lr")[1:4] == ["float", "`0.001`", "`> 0`"]
    assert row_cells(markdown, "training.momentum")[3] == "`>= 0, < 1`"
    assert row_cells(markdown, "training.optimizer")[3] == "`one of: sgd, adamw, adam`"
    assert row_cells(markdown, "data.val_size")[1:3] == [r"float \| null", "`null`"]
    assert row_cells(markdown, "generate.prompts")[2] == "required"
    assert "required, except in a recipe that only generates" in row_cells(markdown, "data")[-1]
    assert row_cells(markdown, "student")[2] == "(section defaults)"  # a teacher-only recipe has none
    assert row_cells(markdown, "objective.terms[].loss")[2] == "required"
    assert row_cells(markdown, "mode.teachers[].name")[3] == "`matches ^[A-Za-z_][A-Za-z0-9_]*$`"
    # a model spec sits at several places, so its fields are shown by name, with where it is used
    assert row_cells(markdown, "hidden")[1:4] == ["list[int]", "`[256]`", "`each > 0`"]
    assert "Used at: `teacher.model`, `student.model`" in markdown
    assert row_cells(markdown, "teacher.model")[1] == r"[model](#models) \| null"
    assert ("Also used at: `teacher.train`, `student.finetune`, `student.general.training`, "
            "`mode.teachers[].train`.") in markdown


def test_regimes_are_grouped_under_one_heading():
    markdown = render_markdown()
    headings = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert headings == ["## Sections", "## Models (`kind:`)", "## Prompt sources (`generate.prompts`)",
                        "## Filters (`filters[].kind:`)", "## Regimes (`mode:`)"]
    before, regimes = markdown.split("## Regimes (`mode:`)")
    regime_models = [*get_args(get_args(config.ModeSpec)[0]), config.NamedTeacher, config.UnlabelledData]
    for model in regime_models:
        assert f"— {model.__name__}\n" in regimes and f"— {model.__name__}\n" not in before, model.__name__
    assert "### `mode.kind: multi_teacher` — MultiTeacherMode" in regimes


def test_rendering_is_deterministic_and_the_text_form_has_the_same_fields():
    assert render_markdown() == render_markdown()
    text = render_text()
    assert text == render_text()
    assert "training.lr: float, default 0.001; > 0" in text
    assert "mode.kind: data_free (DataFreeMode)" in text and "`" not in text


def test_check_explain_prints_the_recipes_sections_with_their_values():
    result = CliRunner().invoke(main, ["check", "digits-quick", "--explain", "--set", "training.lr=0.25"])
    assert result.exit_code == 0, result.output
    assert "training.lr = 0.25  [set]   (float, default 0.001; > 0)" in result.output
    assert "student.model (MLPSpec)" in result.output and "student.model.hidden = " in result.output
    assert "objective.terms[0] (TermConfig)" in result.output
    # sections the recipe does not use are left out
    assert "mode.teachers" not in result.output and "data.lm." not in result.output


def test_check_without_explain_still_prints_the_resolved_yaml():
    result = CliRunner().invoke(main, ["check", "digits-quick"])
    assert result.exit_code == 0 and result.output.startswith("name: digits-quick")
