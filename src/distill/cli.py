"""The command line: a thin layer over the Python API. Errors print as one paragraph, never a traceback."""

from __future__ import annotations

import os
import sys
from functools import wraps
from typing import Any, Callable

import click

from distill.errors import DistillError


def _friendly(command: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DistillError as error:
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.secho("interrupted", fg="yellow", err=True)
            sys.exit(130)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="distill")
def main() -> None:
    """distill: knowledge distillation from one YAML recipe."""


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a recipe field, e.g. --set training.lr=0.01 (repeatable)")
@click.option("--output", "-o", type=click.Path(file_okay=False), help="run directory (default: runs/<recipe name>)")
@click.option("--resume", is_flag=True, help="continue an interrupted run in --output from its last checkpoint")
@click.option("--quiet", is_flag=True, help="no progress bars or table")
@_friendly
def train(recipe: str, overrides: tuple[str, ...], output: str | None, resume: bool, quiet: bool) -> None:
    """Train a student as RECIPE says (a YAML path or a built-in recipe name)."""
    from distill.run import train as run_train

    run_train(recipe, output=output, resume=resume, overrides=list(overrides), show_progress=not quiet)


@main.command()
@click.argument("name", required=False)
@_friendly
def recipes(name: str | None) -> None:
    """List the built-in recipes, or print one (NAME) to start your own from."""
    from distill.config import RECIPES_DIR, describe_builtin_recipes, resolve_recipe_path

    if name:
        click.echo(resolve_recipe_path(name).read_text())
        return
    rows = describe_builtin_recipes()
    width = max(len(row[0]) for row in rows)
    for recipe_name, description in rows:
        click.echo(f"{recipe_name:<{width}}  {description}")
    click.echo(f"\n(files in {RECIPES_DIR}; `distill recipes NAME` prints one)")


@main.command()
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@_friendly
def check(recipe: str, overrides: tuple[str, ...]) -> None:
    """Validate RECIPE and print it resolved with every default, without running anything."""
    from distill.config import load_recipe

    click.echo(load_recipe(recipe, list(overrides)).to_yaml())


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
